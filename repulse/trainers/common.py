"""Set-up shared by the offline trainers: tokenizer and model loading, batch layout, data splits,
the fit spec, the engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from repulse.config.schema import to_dict
from repulse.errors import UserError
from repulse.run.start import Run
from repulse.trainers.fit import FitSpec, check_batching, total_steps


def trained_tokenizer(cfg: Any) -> Any:
    """The tokenizer of ``--model.model_name_or_path`` as every offline trainer loads it: the
    ``--data.tokenizer_chat_template`` override, ``--data.disable_fast_tokenizer``, right padding."""
    from repulse.models.loading import load_tokenizer

    return load_tokenizer(
        cfg.model.model_name_or_path,
        chat_template=cfg.data.tokenizer_chat_template,
        use_fast=not cfg.data.disable_fast_tokenizer,
        padding_side="right",
    )


def trained_model_options(cfg: Any, run: Run) -> dict[str, Any]:
    """How an offline trainer loads the model it trains (``load_causal_lm`` / ``load_scalar_model``
    keywords): ``--engine.param_dtype`` and ``attn_implementation``, gradient checkpointing, LoRA
    and 4-bit from ``--model.*``, on the run's device."""
    return dict(
        dtype=cfg.engine.param_dtype,
        attn=cfg.engine.attn_implementation,
        gradient_checkpointing=cfg.model.gradient_checkpointing_enable,
        reentrant=cfg.model.gradient_checkpointing_reentrant,
        lora=cfg.model.lora,
        load_in_4bit=cfg.model.load_in_4bit,
        device=run.device,
    )


def token_collate(cfg: Any, pad_id: int | None):
    """The batch layout of the per-token losses (sft, kd, prm): padded rows, or with
    ``--engine.packing_samples`` packed rows - one row per micro-batch for flash attention
    (varlen kernels), else rows as long as the micro-batch's longest sample, its padding
    filled with other samples: sdpa/eager materialise the block-diagonal mask, so a row's
    attention costs its length squared (see ``pack_collate``)."""
    from functools import partial

    from repulse.data.collate import pack_collate, pad_collate

    if not cfg.engine.packing_samples:
        return partial(pad_collate, pad_id=pad_id)
    one_row = "flash" in cfg.engine.attn_implementation and torch.cuda.is_available()
    return partial(pack_collate, pad_id=pad_id, capacity=None if one_row else 0)


def require(value: Any, flag: str, what: str) -> Any:
    if value in (None, ""):
        raise UserError(f"{flag} is required: {what}.")
    return value


def load_split(
    spec: str, split: str, max_samples: int, probs: str | None, seed: int, flag: str
) -> list[dict]:
    from repulse.data.sources import load_mixture

    return load_mixture(spec, probs, split=split, max_samples=max_samples, seed=seed, flag=flag)


def fit_spec(cfg: Any, run: Run, train_set, eval_set, collate, name: str, tokenizer: Any = None) -> FitSpec:
    """The loop's settings from ``cfg``; ``tokenizer`` goes into the HF models of ``--ckpt.save_hf``."""
    return FitSpec(
        train_set=train_set,
        collate=collate,
        batch_size=cfg.train.batch_size,
        micro_batch_size=cfg.train.micro_batch_size,
        max_epochs=cfg.train.max_epochs,
        max_steps=cfg.train.max_steps,
        seed=cfg.train.seed,
        output_dir=run.output_dir,
        ckpt_dir=Path(cfg.ckpt.path or run.output_dir / "checkpoints"),
        save_steps=cfg.ckpt.save_steps,
        max_ckpt=cfg.ckpt.max_num,
        resume=cfg.ckpt.load_enable,
        logging_steps=max(1, cfg.logger.logging_steps),
        eval_steps=cfg.eval.steps,
        logger_cfg=cfg.logger,
        run_config=to_dict(cfg),
        eval_set=eval_set,
        progress=cfg.logger.progress_bar,
        name=name,
        num_workers=cfg.data.dataloader_num_workers,
        save_hf=cfg.ckpt.save_hf,
        tokenizer=tokenizer,
        nan_policy=cfg.train.nan_policy,
        nan_max_consecutive_skips=cfg.train.nan_max_consecutive_skips,
    )


def build_trained_engine(cfg: Any, run: Run, model: torch.nn.Module, spec: FitSpec):
    """Wrap the trained model in the configured engine with its optimizer and scheduler."""
    from repulse.engine import build_engine
    from repulse.engine.spec import optim_spec_from

    accum = check_batching(spec.batch_size, spec.micro_batch_size, run.world_size, len(spec.train_set))
    ospec = optim_spec_from(cfg.adam, cfg.muon, cfg.optim, max(1, total_steps(spec, run.world_size)))
    return build_engine(
        model, ospec, cfg.engine, accumulation_steps=accum, micro_batch_size=spec.micro_batch_size
    )
