"""``repulse sft``: supervised fine-tuning (instruction, pretrain mode, multi-turn).

Loss: mean negative log-likelihood over the trained tokens of the whole global batch,
L = −Σ_t m_t log p(x_t | x_<t) / Σ_t m_t (token-level; see ``repulse.losses.sft``).
"""

from __future__ import annotations

from typing import Any

from repulse.config import parse_config
from repulse.config.sections import OfflineConfig
from repulse.errors import UserError
from repulse.run.dirs import releases_output_dirs
from repulse.trainers.fit import MicroResult


def validate(cfg: OfflineConfig) -> None:
    if cfg.data.multiturn and not cfg.data.apply_chat_template:
        raise UserError(
            "--data.multiturn needs --data.apply_chat_template (turns are found with the chat template)."
        )
    if cfg.engine.ring_attn_size != 1 or cfg.engine.tensor_parallel_size != 1:
        raise UserError(
            "--engine.ring_attn_size and --engine.tensor_parallel_size must be 1 in this version."
        )


class SFTMethod:
    """Token-level NLL on the response (or every token in pretrain mode)."""

    def __init__(self, engine: Any, aux: Any = None):
        self.engine = engine
        self.aux = aux  # RouterAuxLoss of an MoE model (--model.aux_loss_coef), or None

    def units(self, batch: dict) -> float:
        return float(batch["loss_mask"][:, 1:].sum())

    def loss(self, batch: dict) -> MicroResult:
        from repulse.losses.sft import sft_loss
        from repulse.models.logprobs import token_logprobs_from_model

        batch = {k: v.to(self.engine.device) if hasattr(v, "to") else v for k, v in batch.items()}
        logp = token_logprobs_from_model(
            self.engine.module, batch["input_ids"], batch.get("attention_mask"), batch.get("position_ids")
        )
        mask = batch["loss_mask"][:, 1:].to(logp.dtype)
        loss_sum, n_tokens, _ = sft_loss(logp, mask)
        stats = {"nll_tokens": (float(n_tokens), 1.0)}
        if self.aux is not None:
            loss_sum, aux_stats = self.aux.add(loss_sum, float(n_tokens))
            stats.update(aux_stats)
        return MicroResult(loss_sum, stats)


def main(argv: list[str]) -> int:
    cfg = parse_config("sft", OfflineConfig, argv, validate)
    if cfg is None:
        return 0
    return run(cfg)


@releases_output_dirs
def run(cfg: OfflineConfig) -> int:

    from repulse.data.sft import SFTDataset
    from repulse.engine import export_model
    from repulse.models.loading import load_causal_lm
    from repulse.models.moe import router_aux_loss
    from repulse.run.start import start_run
    from repulse.trainers.common import (
        build_trained_engine,
        fit_spec,
        load_split,
        require,
        token_collate,
        trained_model_options,
        trained_tokenizer,
    )
    from repulse.trainers.fit import fit

    path = require(cfg.model.model_name_or_path, "--model.model_name_or_path", "the model to fine-tune")
    require(cfg.data.dataset, "--data.dataset", "the training data")
    run_ = start_run(cfg)
    tokenizer = trained_tokenizer(cfg)
    rows = load_split(
        cfg.data.dataset,
        cfg.data.dataset_split,
        cfg.data.max_samples,
        cfg.data.dataset_probs,
        cfg.train.seed,
        "--data.dataset",
    )
    train_set = SFTDataset(rows, tokenizer, cfg.data, pretrain_mode=cfg.model.pretrain_mode_enable)
    eval_set = None
    if cfg.eval.dataset:
        eval_rows = load_split(
            cfg.eval.dataset, cfg.eval.split, cfg.eval.max_samples, None, cfg.train.seed, "--eval.dataset"
        )
        eval_set = SFTDataset(eval_rows, tokenizer, cfg.data, pretrain_mode=cfg.model.pretrain_mode_enable)
    collate = token_collate(cfg, tokenizer.pad_token_id)
    model = load_causal_lm(
        path,
        **trained_model_options(cfg, run_),
    )
    aux = router_aux_loss(model, cfg.model.aux_loss_coef, "--model.aux_loss_coef", path)
    spec = fit_spec(cfg, run_, train_set, eval_set, collate, "sft", tokenizer)
    engine = build_trained_engine(cfg, run_, model, spec)
    fit(engine, SFTMethod(engine, aux), spec)
    export_model(engine, run_.output_dir, tokenizer)
    if run_.rank == 0:
        print(f"[repulse] saved the fine-tuned model to {run_.output_dir}", flush=True)
    return 0
