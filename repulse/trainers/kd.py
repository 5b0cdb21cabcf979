"""``repulse kd``: knowledge distillation from a teacher LM (OpenRLHF ``train_kd``, after MiniLLM).

On SFT data (prompt + response, as ``repulse sft`` builds it), per response token t,

    nll_t = −log p_S(x_t | x_<t)
    kd_t  = −Σ_v p_T(v | x_<t) · log p_S(v | x_<t)          (teacher → student cross-entropy)
    L     = Σ_t [(1 − c)·nll_t + c·kd_t] / (number of response tokens in the global batch)

with c = ``--model.kd_coef``. kd_t = KL(p_T ‖ p_S) + H(p_T), and H(p_T) does not depend on
the student, so its gradient is the forward-KL gradient. Token-level units make L the
global per-token mean whatever the split into micro-batches and processes. The teacher
(``--model.teacher_model``, same tokenizer / vocabulary as the student) is a frozen full
replica run under ``no_grad``, kept on CPU between forwards with ``--model.teacher_offload``.

Logged: loss, nll and kd (per-token means of the two terms).
"""

from __future__ import annotations

from typing import Any

import torch

from repulse.config import parse_config
from repulse.config.sections import OfflineConfig
from repulse.errors import UserError
from repulse.run.dirs import releases_output_dirs
from repulse.trainers.dpo import load_frozen_lm, require_model, to_device, train_eval_sets
from repulse.trainers.fit import MicroResult


def validate(cfg: OfflineConfig) -> None:
    require_model(cfg, "the student model")
    if not cfg.model.teacher_model:
        raise UserError("--model.teacher_model is required for distillation: the teacher model directory.")
    if not 0.0 <= cfg.model.kd_coef <= 1.0:
        raise UserError(f"--model.kd_coef must be in [0, 1], got {cfg.model.kd_coef}.")


def lm_logits(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Next-token logits ``[N, T, V]`` of a padded (attention mask) or packed (position ids) batch."""
    from repulse.models.positions import positions_from_mask

    pos = batch.get("position_ids")
    attn = batch.get("attention_mask")
    if pos is None and attn is not None:
        pos = positions_from_mask(attn)
    out = model(input_ids=batch["input_ids"], attention_mask=attn, position_ids=pos, use_cache=False)
    return out.logits if hasattr(out, "logits") else out[0]


class KDMethod:
    """(1 − c)·NLL + c·(teacher → student cross-entropy) over response tokens; units = tokens."""

    def __init__(self, engine: Any, teacher: Any, kd_coef: float, aux: Any = None):
        self.engine = engine
        self.aux = aux  # RouterAuxLoss of an MoE student (--model.aux_loss_coef), or None
        self.teacher = teacher
        self.kd_coef = kd_coef

    def units(self, batch: dict) -> float:
        return float(batch["loss_mask"][:, 1:].sum())

    def loss(self, batch: dict) -> MicroResult:
        from repulse.losses.distill import kd_loss
        from repulse.models.logprobs import token_logprobs

        batch = to_device(batch, self.engine.device)
        mask = batch["loss_mask"][:, 1:]
        logits = lm_logits(self.engine.module, batch)
        with torch.no_grad(), self.teacher.on_device() as teacher:
            t_logits = lm_logits(teacher, batch)
        if t_logits.shape[-1] != logits.shape[-1]:
            raise UserError(
                f"--model.teacher_model has a vocabulary of {t_logits.shape[-1]} tokens but the student has "
                f"{logits.shape[-1]}: distillation needs the same tokenizer for both."
            )
        # score the whole (contiguous) logits against the inputs shifted left, then drop the last column
        labels = torch.roll(batch["input_ids"], shifts=-1, dims=1)
        logp = token_logprobs(logits, labels, ignore_index=None)[:, :-1]
        keep = mask != 0
        nll_sum = torch.where(keep, -logp, torch.zeros_like(logp)).sum()
        kd_sum, n = kd_loss(logits[:, :-1], t_logits[:, :-1], mask)
        loss_sum = (1.0 - self.kd_coef) * nll_sum + self.kd_coef * kd_sum
        count = float(n)
        stats = {"nll": (float(nll_sum.detach()), count), "kd": (float(kd_sum.detach()), count)}
        if self.aux is not None:  # the student's forward (the frozen teacher has no hooks)
            loss_sum, aux_stats = self.aux.add(loss_sum, count)
            stats.update(aux_stats)
        return MicroResult(loss_sum, stats)


def main(argv: list[str]) -> int:
    cfg = parse_config("kd", OfflineConfig, argv, validate)
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
        token_collate,
        trained_model_options,
        trained_tokenizer,
    )
    from repulse.trainers.fit import fit

    validate(cfg)
    path = cfg.model.model_name_or_path
    run_ = start_run(cfg)
    tokenizer = trained_tokenizer(cfg)
    train_set, eval_set = train_eval_sets(cfg, lambda rows: SFTDataset(rows, tokenizer, cfg.data))
    collate = token_collate(cfg, tokenizer.pad_token_id)
    model = load_causal_lm(
        path,
        **trained_model_options(cfg, run_),
    )
    aux = router_aux_loss(model, cfg.model.aux_loss_coef, "--model.aux_loss_coef", path)
    teacher = load_frozen_lm(cfg.model.teacher_model, cfg, run_.device, cfg.model.teacher_offload)
    spec = fit_spec(cfg, run_, train_set, eval_set, collate, "kd", tokenizer)
    engine = build_trained_engine(cfg, run_, model, spec)
    fit(engine, KDMethod(engine, teacher, cfg.model.kd_coef, aux), spec)
    export_model(engine, run_.output_dir, tokenizer)
    if run_.rank == 0:
        print(f"[repulse] saved the distilled student to {run_.output_dir}", flush=True)
    return 0
