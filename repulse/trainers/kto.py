"""``repulse kto``: Kahneman–Tversky Optimization on unpaired data (Ethayarajh et al. 2024).

Each sample is (prompt x, response y, desirable?) from ``--data.input_key`` /
``--data.output_key`` / ``--data.label_key`` (label: true/false or 1/0). With sequence
log-prob sums of the policy π_θ and the frozen reference π_ref,

    r(x, y) = log π_θ(y|x) − log π_ref(y|x)
    z0      = max(0, mean over mismatched pairs (x_i, y_{i+1}) of [log π_θ(y'|x) − log π_ref(y'|x)])
    ℓ       = λ_D · (1 − σ(β (r − z0)))   desirable     (λ_D = --model.desirable_weight)
              λ_U · (1 − σ(β (z0 − r)))   undesirable   (λ_U = --model.undesirable_weight)

z0 is KTO's reference point, an estimate of KL(π_θ ‖ π_ref) from responses that do not
answer their prompt (the collate pairs prompt i with the completion of sample i+1 of the
micro-batch). It carries no gradient, so its forwards run under ``no_grad``; with several
processes its mean is all-reduced over the ranks (as OpenRLHF does) before the clamp at 0.
The step's loss is the mean of ℓ over all samples of the global batch (units = samples).

Logged: loss, kl (z0), chosen_reward / rejected_reward (mean β·r over desirable /
undesirable samples) and chosen_logp / rejected_logp (mean log π_θ(y|x) of desirable /
undesirable responses: their gap is what KTO widens).
"""

from __future__ import annotations

from typing import Any

import torch

from repulse.config import parse_config
from repulse.config.sections import OfflineConfig
from repulse.errors import UserError, warn_once
from repulse.run.dirs import releases_output_dirs
from repulse.trainers.dpo import (
    check_beta,
    load_frozen_lm,
    policy_logps,
    require_model,
    to_device,
    train_eval_sets,
)
from repulse.trainers.fit import MicroResult


def validate(cfg: OfflineConfig) -> None:
    require_model(cfg, "the policy to train (and, by default, the reference)")
    check_beta(cfg)
    m = cfg.model
    if m.desirable_weight < 0 or m.undesirable_weight < 0 or m.desirable_weight + m.undesirable_weight == 0:
        raise UserError(
            "--model.desirable_weight and --model.undesirable_weight must be >= 0 and not both 0, got "
            f"{m.desirable_weight} and {m.undesirable_weight}."
        )
    if cfg.data.output_key is None and not cfg.data.apply_chat_template:
        raise UserError(
            "--data.output_key is not set: name the response field, e.g. --data.output_key response "
            "(or use --data.apply_chat_template with conversations whose last message is the response)."
        )
    if cfg.train.micro_batch_size < 2:
        warn_once(
            "kto:micro1",
            "--train.micro_batch_size 1: KTO's KL reference point pairs each prompt with another sample's "
            "response in the micro-batch; with one sample it pairs the sample with itself.",
        )


class KTOMethod:
    """KTO on a ``kto_collate`` micro-batch (main keys + ``kl_*`` keys); units = samples."""

    def __init__(
        self,
        engine: Any,
        ref: Any,
        beta: float,
        desirable_weight: float,
        undesirable_weight: float,
        aux: Any = None,
    ):
        self.engine = engine
        self.aux = aux  # RouterAuxLoss of an MoE policy (--model.aux_loss_coef), or None
        self.ref = ref
        self.beta = beta
        self.weights = (desirable_weight, undesirable_weight)

    def units(self, batch: dict) -> float:
        return float(batch["label"].numel())

    def _kl_point(self, batch: dict) -> torch.Tensor:
        """Unclamped mean of log π_θ − log π_ref over the mismatched pairs, over all ranks."""
        kl_batch = {k[3:]: v for k, v in batch.items() if k.startswith("kl_")}
        with torch.no_grad():
            pol, _ = policy_logps(self.engine.module, kl_batch)
            with self.ref.on_device() as ref:
                ref_lp, _ = policy_logps(ref, kl_batch)
        total = torch.stack(
            [(pol - ref_lp.to(pol.dtype)).sum(), torch.tensor(float(pol.numel()), device=pol.device)]
        )
        if self.engine.world_size > 1:
            total = self.engine.all_reduce(total.double(), "sum").to(pol.dtype)
        return total[0] / total[1].clamp(min=1)

    def loss(self, batch: dict) -> MicroResult:
        from repulse.losses.preference import kto_loss

        batch = to_device(batch, self.engine.device)
        z0 = self._kl_point(batch)
        logps, _ = policy_logps(self.engine.module, batch)
        with torch.no_grad(), self.ref.on_device() as ref:
            ref_logps, _ = policy_logps(ref, batch)
        ref_logps = ref_logps.to(logps.dtype)
        labels = batch["label"]
        empty = logps.new_zeros(0)
        per_sample, _ = kto_loss(
            logps, ref_logps, labels, empty, empty, self.beta, self.weights[0], self.weights[1], z0=z0
        )
        good, bad = labels.bool(), ~labels.bool()
        rewards = self.beta * (logps.detach() - ref_logps)
        n_good, n_bad = float(good.sum()), float(bad.sum())
        stats = {
            "kl": (float(z0.clamp(min=0)), 1.0),
            "chosen_reward": (float(rewards[good].sum()), n_good),
            "rejected_reward": (float(rewards[bad].sum()), n_bad),
            "chosen_logp": (float(logps.detach()[good].sum()), n_good),
            "rejected_logp": (float(logps.detach()[bad].sum()), n_bad),
        }
        loss_sum = per_sample.sum()
        if self.aux is not None:  # the latest policy forward: the trained one (after the KL point's)
            loss_sum, aux_stats = self.aux.add(loss_sum, float(labels.numel()))
            stats.update(aux_stats)
        return MicroResult(loss_sum, stats)


def main(argv: list[str]) -> int:
    cfg = parse_config("kto", OfflineConfig, argv, validate)
    if cfg is None:
        return 0
    return run(cfg)


@releases_output_dirs
def run(cfg: OfflineConfig) -> int:
    from functools import partial

    from repulse.data.collate import kto_collate
    from repulse.data.unpaired import UnpairedDataset
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
    train_set, eval_set = train_eval_sets(cfg, lambda rows: UnpairedDataset(rows, tokenizer, cfg.data))
    collate = partial(
        kto_collate,
        pad_id=tokenizer.pad_token_id,
        packing=cfg.engine.packing_samples,
        max_len=cfg.data.max_len,
    )
    model = load_causal_lm(
        path,
        **trained_model_options(cfg, run_),
    )
    aux = router_aux_loss(model, cfg.model.aux_loss_coef, "--model.aux_loss_coef", path)
    ref = load_frozen_lm(cfg.ref.model_name_or_path or path, cfg, run_.device, cfg.ref.offload)
    spec = fit_spec(cfg, run_, train_set, eval_set, collate, "kto", tokenizer)
    engine = build_trained_engine(cfg, run_, model, spec)
    m = cfg.model
    fit(engine, KTOMethod(engine, ref, m.beta, m.desirable_weight, m.undesirable_weight, aux), spec)
    export_model(engine, run_.output_dir, tokenizer)
    if run_.rank == 0:
        print(f"[repulse] saved the KTO policy to {run_.output_dir}", flush=True)
    return 0
