"""``repulse dpo``: Direct Preference Optimization and its IPO / cDPO variants (spec §3.3).

Per pair, with response-token log-prob **sums** of the policy π_θ and the frozen reference π_ref,

    h = [log π_θ(y_c) − log π_ref(y_c)] − [log π_θ(y_r) − log π_ref(y_r)]
    DPO / cDPO (ε = ``--model.label_smoothing``):  ℓ = −(1−ε)·log σ(βh) − ε·log σ(−βh)
    IPO (``--model.ipo_enable``):                  ℓ = (h − 1/(2β))²
    + ``--model.nll_loss_coef`` c · (−log π_θ(y_c) / |y_c|)       (length-normalised chosen NLL)

and the step's loss is the mean of ℓ over all pairs of the global batch (units = pairs), so
it does not depend on the split into micro-batches and processes. Chosen and rejected go
through the policy in one forward (rows 0..B−1 chosen, B..2B−1 rejected, or one packed row);
the reference sees the same batch once per micro-batch under ``no_grad``. The reference is
``--ref.model_name_or_path`` (default: the policy's starting weights), a frozen full replica
on every process, kept on CPU between forwards with ``--ref.offload``.

Logged: loss, acc (implicit chosen reward > rejected), margin (mean r_c − r_r), the implicit
rewards r = β(log π_θ − log π_ref) of chosen and rejected, and the policy's chosen / rejected
sequence log-probs.

This module also holds the helpers the other offline preference trainers share
(:func:`sequence_logps`, :func:`load_frozen_lm`, :func:`train_eval_sets`, :func:`to_device`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from repulse.config import parse_config
from repulse.config.sections import OfflineConfig
from repulse.errors import UserError
from repulse.run.dirs import releases_output_dirs
from repulse.trainers.fit import MicroResult

# --------------------------------------------------------------------------- shared helpers


def to_device(batch: dict, device: torch.device) -> dict:
    """Tensors of ``batch`` on ``device``; other values as they are."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def sequence_logps(
    logp: torch.Tensor, mask: torch.Tensor, seq_lens: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sums of token log-probs over the masked tokens, and the token counts.

    ``logp`` [N, T−1] comes from ``token_logprobs_from_model`` (column t scores token t+1)
    and ``mask`` is the batch's ``loss_mask[:, 1:]``. Padded batches: one sequence per row,
    ``Σ_t m_t logp_t`` per row. Packed batches (``seq_lens`` given, one row): column t
    belongs to the sample that holds token t+1; ``pack_collate`` zeroes the mask at each
    sample's first token, so no column crosses a sample boundary. Masked-out columns never
    leak (even when they hold ``nan``). Returns ``(sums [N], counts [N])``.
    """
    keep = mask != 0
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    vals = torch.where(keep, logp, zero)
    if seq_lens is None:
        return vals.sum(dim=1), keep.to(logp.dtype).sum(dim=1)
    lens = seq_lens.to(logp.device)
    seg = torch.repeat_interleave(torch.arange(lens.numel(), device=logp.device), lens)[1:]
    n = lens.numel()
    sums = torch.zeros(n, dtype=logp.dtype, device=logp.device).index_add(0, seg, vals[0])
    counts = torch.zeros(n, dtype=logp.dtype, device=logp.device).index_add(0, seg, keep[0].to(logp.dtype))
    return sums, counts


def shared_prompt_logps(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sums, counts)`` per sequence of a ``shared_prompt_collate`` batch: one forward per pair row,
    each trained token scored from the logits at the (row, column) that predicts it."""
    from repulse.models.logprobs import token_logprobs
    from repulse.models.positions import model_attention_mask

    out = model(
        input_ids=batch["input_ids"],
        attention_mask=model_attention_mask(model, batch["attention_mask"]),
        position_ids=batch["position_ids"],
        use_cache=False,
    )
    logits = out.logits if hasattr(out, "logits") else out[0]
    lp = token_logprobs(
        logits[batch["token_row"], batch["token_col"]], batch["token_label"], ignore_index=None
    )
    seq = batch["token_seq"]
    n = batch["seq_last"].shape[0]
    sums = torch.zeros(n, dtype=lp.dtype, device=lp.device).index_add(0, seq, lp)
    counts = torch.zeros(n, dtype=lp.dtype, device=lp.device).index_add(0, seq, torch.ones_like(lp))
    return sums, counts


def policy_logps(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``sequence_logps`` of ``model`` on a padded, packed or shared-prompt batch."""
    from repulse.models.logprobs import token_logprobs_from_model

    if "token_seq" in batch:
        return shared_prompt_logps(model, batch)

    logp = token_logprobs_from_model(
        model, batch["input_ids"], batch.get("attention_mask"), batch.get("position_ids")
    )
    return sequence_logps(logp, batch["loss_mask"][:, 1:], batch.get("seq_lens"))


def pair_collate(cfg: OfflineConfig, pad_id: int | None) -> Callable[[list], dict]:
    """The pair layout. With ``--engine.shared_prompt_enable`` (the default) and sdpa/eager
    attention: each pair's common prefix once (``shared_prompt_collate``), one pair per row, or
    with ``--engine.packing_samples`` pairs packed into rows as long as the micro-batch's
    longest pair (its padding filled with other pairs). Otherwise (flash attention takes no 4-D mask) chosen and rejected as separate rows,
    padded or all packed into one row (varlen kernels)."""
    from functools import partial

    from repulse.data.collate import preference_collate, shared_prompt_collate

    flash = "flash" in cfg.engine.attn_implementation and torch.cuda.is_available()
    if cfg.engine.shared_prompt_enable and not flash:
        capacity = 0 if cfg.engine.packing_samples else None
        return partial(shared_prompt_collate, pad_id=pad_id, capacity=capacity)
    return partial(preference_collate, pad_id=pad_id, packing=cfg.engine.packing_samples)


def load_frozen_lm(path: str, cfg: OfflineConfig, device: torch.device, offload: bool):
    """A never-trained causal LM (reference, teacher): full replica, eval mode, no grad."""
    from repulse.engine import prepare_frozen
    from repulse.models.loading import load_causal_lm

    model = load_causal_lm(
        path,
        dtype=cfg.engine.param_dtype,
        attn=cfg.engine.attn_implementation,
        device="cpu" if offload else device,
        trainable=False,
    )
    return prepare_frozen(model, device=device, offload=offload)


def train_eval_sets(cfg: OfflineConfig, build: Callable[[list[dict]], Any]) -> tuple[Any, Any]:
    """``build(rows)`` over ``--data.dataset`` and, when set, ``--eval.dataset``."""
    from repulse.trainers.common import load_split

    rows = load_split(
        cfg.data.dataset,
        cfg.data.dataset_split,
        cfg.data.max_samples,
        cfg.data.dataset_probs,
        cfg.train.seed,
        "--data.dataset",
    )
    train_set = build(rows)
    eval_set = None
    if cfg.eval.dataset:
        eval_rows = load_split(
            cfg.eval.dataset, cfg.eval.split, cfg.eval.max_samples, None, cfg.train.seed, "--eval.dataset"
        )
        eval_set = build(eval_rows)
    return train_set, eval_set


def require_model(cfg: OfflineConfig, what: str) -> None:
    if not cfg.model.model_name_or_path:
        raise UserError(f"--model.model_name_or_path is required: {what}.")
    if not cfg.data.dataset:
        raise UserError("--data.dataset is required: the training data.")


def check_beta(cfg: OfflineConfig) -> None:
    if not cfg.model.beta > 0:
        raise UserError(f"--model.beta must be > 0, got {cfg.model.beta}.")


# --------------------------------------------------------------------------- DPO


def validate(cfg: OfflineConfig) -> None:
    require_model(cfg, "the policy to train (and, by default, the reference)")
    check_beta(cfg)
    m = cfg.model
    if not 0.0 <= m.label_smoothing <= 0.5:
        raise UserError(
            f"--model.label_smoothing (cDPO's label-flip probability) must be in [0, 0.5], got {m.label_smoothing}."
        )
    if m.ipo_enable and m.label_smoothing:
        raise UserError(
            "--model.ipo_enable and --model.label_smoothing exclude each other (IPO has no smoothing)."
        )
    if m.nll_loss_coef < 0:
        raise UserError(f"--model.nll_loss_coef must be >= 0, got {m.nll_loss_coef}.")


class DPOMethod:
    """DPO / IPO / cDPO (+ NLL) on a preference-collated micro-batch; units = pairs."""

    def __init__(
        self,
        engine: Any,
        ref: Any,
        beta: float,
        label_smoothing: float,
        ipo: bool,
        nll_coef: float,
        aux: Any = None,
    ):
        self.engine = engine
        self.aux = aux  # RouterAuxLoss of an MoE policy (--model.aux_loss_coef), or None
        self.ref = ref
        self.beta = beta
        self.label_smoothing = label_smoothing
        self.ipo = ipo
        self.nll_coef = nll_coef

    def units(self, batch: dict) -> float:
        return float(batch["margin"].numel())

    def loss(self, batch: dict) -> MicroResult:
        from repulse.losses.preference import dpo_loss, nll_term

        batch = to_device(batch, self.engine.device)
        b = batch["margin"].numel()
        logps, lens = policy_logps(self.engine.module, batch)
        with torch.no_grad(), self.ref.on_device() as ref:
            ref_logps, _ = policy_logps(ref, batch)
        ref_logps = ref_logps.to(logps.dtype)
        per_pair, r_c, r_r = dpo_loss(
            logps[:b], logps[b:], ref_logps[:b], ref_logps[b:], self.beta, self.label_smoothing, self.ipo
        )[:3]
        stats: dict[str, tuple[float, float]] = {}
        if self.nll_coef:
            nll = nll_term(logps[:b], lens[:b])
            per_pair = per_pair + self.nll_coef * nll
            stats["nll"] = (float(nll.detach().sum()), b)
        stats.update(
            acc=(float((r_c > r_r).sum()), b),
            margin=(float((r_c - r_r).sum()), b),
            chosen_reward=(float(r_c.sum()), b),
            rejected_reward=(float(r_r.sum()), b),
            chosen_logp=(float(logps[:b].detach().sum()), b),
            rejected_logp=(float(logps[b:].detach().sum()), b),
        )
        loss_sum = per_pair.sum()
        if self.aux is not None:  # the policy's forward above (the frozen reference has no hooks)
            loss_sum, aux_stats = self.aux.add(loss_sum, b)
            stats.update(aux_stats)
        return MicroResult(loss_sum, stats)


def main(argv: list[str]) -> int:
    cfg = parse_config("dpo", OfflineConfig, argv, validate)
    if cfg is None:
        return 0
    return run(cfg)


@releases_output_dirs
def run(cfg: OfflineConfig) -> int:

    from repulse.data.preference import PreferenceDataset
    from repulse.engine import export_model
    from repulse.models.loading import load_causal_lm
    from repulse.models.moe import router_aux_loss
    from repulse.run.start import start_run
    from repulse.trainers.common import (
        build_trained_engine,
        fit_spec,
        trained_model_options,
        trained_tokenizer,
    )
    from repulse.trainers.fit import fit

    validate(cfg)
    path = cfg.model.model_name_or_path
    run_ = start_run(cfg)
    tokenizer = trained_tokenizer(cfg)
    train_set, eval_set = train_eval_sets(cfg, lambda rows: PreferenceDataset(rows, tokenizer, cfg.data))
    collate = pair_collate(cfg, tokenizer.pad_token_id)
    model = load_causal_lm(
        path,
        **trained_model_options(cfg, run_),
    )
    aux = router_aux_loss(model, cfg.model.aux_loss_coef, "--model.aux_loss_coef", path)
    ref = load_frozen_lm(cfg.ref.model_name_or_path or path, cfg, run_.device, cfg.ref.offload)
    spec = fit_spec(cfg, run_, train_set, eval_set, collate, "dpo", tokenizer)
    engine = build_trained_engine(cfg, run_, model, spec)
    m = cfg.model
    method = DPOMethod(engine, ref, m.beta, m.label_smoothing, m.ipo_enable, m.nll_loss_coef, aux)
    fit(engine, method, spec)
    export_model(engine, run_.output_dir, tokenizer)
    if run_.rank == 0:
        print(f"[repulse] saved the DPO policy to {run_.output_dir}", flush=True)
    return 0
