"""The per-micro-batch losses of the RL updates (plug into ``run_micro_batches``).

Each class turns a slice of ``Experience`` into a loss sum and its units; the loop in
``repulse.trainers.fit`` does accumulation and normalisation, so token-level
aggregation is the same for any micro-batch size and number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from repulse.rl.experience import Experience, action_logprobs
from repulse.trainers.fit import MicroResult


def _sum(x: torch.Tensor, mask: torch.Tensor) -> float:
    return float((x * mask).sum())


@dataclass
class PolicyUpdate:
    """PPO-clip surrogate (+ KL loss, − entropy bonus), aggregated per token."""

    engine: Any
    eps_low: float
    eps_high: float
    dual_clip: float | None
    temperature: float
    kl_loss_coef: float  # 0 unless --algo.kl.use_loss
    kl_estimator: str
    entropy_coef: float | None

    def units(self, exp: Experience) -> float:
        return float(exp.action_mask.sum())

    def loss(self, exp: Experience) -> MicroResult:
        from repulse.losses.kl import KL_ESTIMATORS
        from repulse.losses.policy import ppo_policy_loss

        mask = exp.action_mask.to(torch.float32)
        bonus = bool(self.entropy_coef)
        logp, ent = action_logprobs(
            self.engine.module, exp.samples, self.temperature, with_entropy=True, entropy_grad=bonus
        )
        logp = logp.float()
        old = exp.old_logprobs if exp.old_logprobs is not None else logp.detach()
        per_tok, m = ppo_policy_loss(
            logp, old, exp.advantages, mask, self.eps_low, self.eps_high, self.dual_clip
        )
        n = float(mask.sum())
        log_ratio = logp.detach() - old
        stats = {
            "policy_loss": (_sum(per_tok.detach(), mask), n),
            "clip_frac": (float(m["clip_frac"]) * n, n),
            "ratio": (_sum(torch.exp(log_ratio), mask), n),
            "policy_kl": (_sum(-log_ratio, mask), n),
            # mean |log π − log π_old| per action token: exactly 0.0 iff every ratio is exactly 1
            # (on the first update of a fresh rollout), where signed means could cancel
            "policy_abs_log_ratio": (_sum(log_ratio.abs(), mask), n),
        }
        if self.kl_loss_coef > 0 and exp.ref_logprobs is not None:
            kl = KL_ESTIMATORS[self.kl_estimator](logp, exp.ref_logprobs)
            per_tok = per_tok + self.kl_loss_coef * kl
            stats["kl_loss"] = (_sum(kl.detach(), mask), n)
        stats["entropy"] = (_sum(ent.detach().float(), mask), n)
        if bonus:
            per_tok = per_tok - self.entropy_coef * ent.float()
        return MicroResult((per_tok * mask).sum(), stats)


@dataclass
class ValueUpdate:
    """Clipped value regression of the critic on the returns, aggregated per token."""

    engine: Any
    value_clip: float | None

    def units(self, exp: Experience) -> float:
        return float(exp.action_mask.sum())

    def loss(self, exp: Experience) -> MicroResult:
        from repulse.losses.policy import value_loss
        from repulse.rl.experience import position_ids_from_mask
        from repulse.trainers.rm import tied_token_values

        s = exp.samples
        mask = exp.action_mask.to(torch.float32)
        # tied: the backward must pass through the root module's output, or FSDP2 (2+ processes)
        # finds the resharded value head's weight freed (see ``tied_token_values``)
        v = tied_token_values(
            self.engine.module, s.sequences, s.attention_mask, position_ids_from_mask(s.attention_mask)
        )
        v = v[:, s.prompt_len - 1 : -1].float()
        per_tok = value_loss(v, exp.values, exp.returns, mask, self.value_clip)
        n = float(mask.sum())
        return MicroResult((per_tok * mask).sum(), {"value_loss": (_sum(per_tok.detach(), mask), n)})


@dataclass
class RepulseBatch:
    """A group-aligned micro-batch: p samples (for L_r) and proposal samples (for L_u and CTL)."""

    p: Experience | None
    q: Experience | None
    group_size: int


@dataclass
class RepulseUpdate:
    """One joint step of RePULSe and its REINFORCE-family baselines (see ``repulse.losses.repulse``).

    Losses per micro-batch (units: sequences of one side; both sides hold N per prompt):
      p:  Σ_i (R_i − b_i)·(−ℓ_θ(s_i))  +  α · Σ_i w_i · ℓ_θ(s'_i)      (``--repulse.alpha`` = α)
      q:  Σ_i (1/|s'_i|) Σ_t m (w^π_{i,t} − w^σ_i)·(log q_t − sg log p_t)   (CTL)
    One forward of p over the proposal samples serves L_u and (detached) the CTL target;
    because L_q sees p only through detached values and L_p sees q only through the stored
    log q_old, one backward of each gives exactly the "q first, then p" update.
    """

    p_engine: Any  # p's engine: trained when train_p, else only used for the CTL target
    q_engine: Any | None  # None: no proposal update
    train_p: bool
    alpha: float
    beta: float
    weights: str  # "importance" (learned q) | "p_proposal" (q := p) | "none"

    def units(self, b: RepulseBatch) -> float:
        side = b.p if b.p is not None else b.q
        return float(side.action_mask.shape[0])

    def loss(self, b: RepulseBatch) -> MicroResult:
        from repulse.losses.repulse import (
            ctl_loss,
            neg_training_loss,
            neg_training_weights,
            p_proposal_weights,
            rloo_reinforce_loss,
        )

        n = b.group_size
        rows = self.units(b)
        losses: dict[str, torch.Tensor] = {}
        stats: dict[str, tuple[float, float]] = {}
        p_model = self.p_engine.module
        if self.train_p and b.p is not None:
            pm = b.p.action_mask.to(torch.float32)
            logp = action_logprobs(p_model, b.p.samples)[0].float()
            l_r, _ = rloo_reinforce_loss(logp, pm, b.p.returns, n)
            losses["p"] = l_r * rows
            stats["loss_r"] = (float(l_r.detach()) * rows, rows)
            if self.weights == "p_proposal" and self.alpha > 0:
                w = p_proposal_weights(b.p.rewards, self.beta, n)
                l_u = neg_training_loss(logp, pm, w)
                losses["p"] = losses["p"] + self.alpha * l_u * rows
                stats["loss_u"] = (float(l_u.detach()) * rows, rows)
        q_needs_p = b.q is not None and (self.q_engine is not None or (self.train_p and self.alpha > 0))
        if q_needs_p:
            qm = b.q.action_mask.to(torch.float32)
            grad_p = self.train_p and self.alpha > 0 and self.weights == "importance"
            with torch.set_grad_enabled(grad_p):
                logp_q = action_logprobs(p_model, b.q.samples)[0].float()
            if grad_p:
                w = neg_training_weights(
                    (logp_q.detach() * qm).sum(-1),
                    (b.q.old_logprobs * qm).sum(-1),
                    b.q.rewards,
                    self.beta,
                    n,
                    qm,
                )
                l_u = neg_training_loss(logp_q, qm, w)
                losses["p"] = losses.get("p", torch.zeros((), device=l_u.device)) + self.alpha * l_u * rows
                stats["loss_u"] = (float(l_u.detach()) * rows, rows)
                ess = 1.0 / (w.detach().view(-1, n) ** 2).sum(-1)
                stats["ess_u"] = (float(ess.sum()), float(ess.numel()))
            if self.q_engine is not None:
                logq = action_logprobs(self.q_engine.module, b.q.samples)[0].float()
                l_q, _ = ctl_loss(logq, logp_q.detach(), b.q.old_logprobs, b.q.rewards, qm, self.beta, n)
                losses["q"] = l_q * rows
                stats["loss_ctl"] = (float(l_q.detach()) * rows, rows)
        return MicroResult(losses, stats)
