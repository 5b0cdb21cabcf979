"""The per-micro-batch losses of the RL updates: hyper-parameters in, ``loss(model, batch)`` out.

Each class turns a slice of ``Experience`` into a loss *sum* and its units; the micro-batch loop
(``repulse.trainers.fit.run_micro_batches``) divides by the global count of units, so the gradient
does not depend on the split into micro-batches and processes. The model is passed in, not held:
a role (in this process, or on a Ray actor) binds the loss to its own model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from repulse.rl.experience import Experience, action_logprobs
from repulse.trainers.fit import MicroResult


def _sum(x: torch.Tensor, mask: torch.Tensor) -> float:
    return float((x * mask).sum())


@dataclass
class PolicyLoss:
    """PPO-clip (or GSPO) surrogate, + KL loss, − entropy bonus, × the rollout IS weights.

    Per token ℓ_t = ω_t·ℓ^pg_t + λ·k(log π_t, log π_ref,t) − c·H_t, where ℓ^pg is
    ``ppo_policy_loss`` (``gspo_policy_loss`` for ``loss_type`` gspo), ω_t the rollout
    importance-sampling weight (``rollout_is_weights``; 1 when off) and k the KL estimator.
    Aggregation: Σ_t m ℓ_t over action tokens (units: tokens); GSPO aggregates per sequence,
    Σ_i (Σ_t m ℓ_{i,t} / Σ_t m) (units: sequences).
    """

    eps_low: float
    eps_high: float
    dual_clip: float | None
    temperature: float
    kl_loss_coef: float  # 0 unless --algo.kl.use_loss
    kl_estimator: str
    entropy_coef: float | None
    loss_type: str = "ppo"  # ppo | gspo
    rollout_is: tuple[str, float, float] | None = None  # (mode, low, high)

    def units(self, exp: Experience) -> float:
        if self.loss_type == "gspo":
            return float((exp.action_mask.sum(-1) > 0).sum())
        return float(exp.action_mask.sum())

    def loss(self, model: torch.nn.Module, exp: Experience) -> MicroResult:
        from repulse.losses.kl import KL_ESTIMATORS
        from repulse.losses.policy import gspo_policy_loss, ppo_policy_loss, rollout_is_weights

        mask = exp.action_mask.to(torch.float32)
        bonus = bool(self.entropy_coef)
        logp, ent = action_logprobs(
            model, exp.samples, self.temperature, with_entropy=True, entropy_grad=bonus
        )
        logp = logp.float()
        old = exp.old_logprobs if exp.old_logprobs is not None else logp.detach()
        if self.loss_type == "gspo":
            per_tok, m = gspo_policy_loss(logp, old, exp.advantages, mask, self.eps_low, self.eps_high)
        else:
            per_tok, m = ppo_policy_loss(
                logp, old, exp.advantages, mask, self.eps_low, self.eps_high, self.dual_clip
            )
        n = float(mask.sum())
        log_ratio = logp.detach() - old
        stats: dict[str, tuple[float, float]] = {
            "policy_loss": (_sum(per_tok.detach(), mask), n),
            "clip_frac": (float(m["clip_frac"]) * n, n),
            "ratio": (_sum(torch.exp(log_ratio), mask), n),
            "policy_kl": (_sum(-log_ratio, mask), n),
            # mean |log π − log π_old| per action token: exactly 0.0 iff every ratio is exactly 1
            # (on the first update of a fresh rollout), where signed means could cancel
            "policy_abs_log_ratio": (_sum(log_ratio.abs(), mask), n),
        }
        if self.rollout_is is not None and exp.samples.logprobs is not None:
            mode, low, high = self.rollout_is
            omega, im = rollout_is_weights(old, exp.samples.logprobs.float(), mask, mode, low, high)
            per_tok = per_tok * omega
            stats["rollout_kl"] = (float(im["rollout_kl"]) * n, n)
            stats["rollout_is_dropped"] = (float(im["rollout_is_dropped"]) * n, n)
        if self.kl_loss_coef > 0 and exp.ref_logprobs is not None:
            kl = KL_ESTIMATORS[self.kl_estimator](logp, exp.ref_logprobs)
            per_tok = per_tok + self.kl_loss_coef * kl
            kd = kl.detach() * mask
            rows = mask.sum(-1)
            stats["kl_loss"] = (float(kd.sum()), n)
            # as the experience logs them when it measures the KL: the sum over a sample's tokens
            # (``kl``) and the KL controller's input, its per-token mean (``kl_per_token``), per sample
            stats["kl"] = (float(kd.sum()), float(rows.numel()))
            stats["kl_per_token"] = (float((kd.sum(-1) / rows.clamp(min=1)).sum()), float(rows.numel()))
        stats["entropy"] = (_sum(ent.detach().float(), mask), n)
        if bonus:
            per_tok = per_tok - self.entropy_coef * ent.float()
        if self.loss_type == "gspo":
            per_seq = (per_tok * mask).sum(-1) / mask.sum(-1).clamp(min=1)
            return MicroResult(per_seq.sum(), stats)
        return MicroResult((per_tok * mask).sum(), stats)


@dataclass
class ValueLoss:
    """Clipped value regression of the critic on the returns, aggregated per token."""

    value_clip: float | None

    def units(self, exp: Experience) -> float:
        return float(exp.action_mask.sum())

    def loss(self, model: torch.nn.Module, exp: Experience) -> MicroResult:
        from repulse.losses.policy import value_loss
        from repulse.rl.experience import sample_values
        from repulse.trainers.rm import tied_token_values

        s = exp.samples
        mask = exp.action_mask.to(torch.float32)
        # tied: the backward must pass through the root module's output, or FSDP2 (2+ processes)
        # finds the resharded value head's weight freed (see ``tied_token_values``)
        v = sample_values(model, s, tied_token_values)[:, s.prompt_len - 1 : -1].float()
        per_tok = value_loss(v, exp.values, exp.returns, mask, self.value_clip)
        n = float(mask.sum())
        return MicroResult((per_tok * mask).sum(), {"value_loss": (_sum(per_tok.detach(), mask), n)})


@dataclass
class RepulseBatch:
    """A group-aligned micro-batch: p's samples (for L_r) and the proposal's samples (for L_u).

    ``u`` carries ``info["w_u"]``, the weights of the negative-training term (computed once per
    step by the method); for the p_proposal ablation ``u`` is None and the weights ride in
    ``p.info`` (L_u on p's own samples, from the same forward as L_r).
    """

    p: Experience | None
    u: Experience | None
    group_size: int


@dataclass
class PolicyRepulseLoss:
    """p's loss in RePULSe and its REINFORCE-family baselines (``repulse.losses.repulse``):

        L_p = L_r + α·L_u,   L_r = mean_j mean_i (R_i − b_i)·(−ℓ_θ(s_i)),   L_u = mean_j mean_i w_i·ℓ_θ(s'_i)

    s ~ p (RLOO baseline b), s' the proposal's samples (q's, or p's own for p_proposal), w the
    self-normalised importance weights for σ ∝ p·exp(−β r). Units: sequences of one side.
    """

    alpha: float

    def units(self, b: RepulseBatch) -> float:
        side = b.p if b.p is not None else b.u
        return float(side.action_mask.shape[0])

    def loss(self, model: torch.nn.Module, b: RepulseBatch) -> MicroResult:
        from repulse.losses.repulse import neg_training_loss, rloo_reinforce_loss

        rows = self.units(b)
        total = None
        stats: dict[str, tuple[float, float]] = {}
        logp_p = None
        if b.p is not None:
            pm = b.p.action_mask.to(torch.float32)
            logp_p = action_logprobs(model, b.p.samples)[0].float()
            l_r, _ = rloo_reinforce_loss(logp_p, pm, b.p.returns, b.group_size)
            total = l_r * rows
            stats["loss_r"] = (float(l_r.detach()) * rows, rows)
        # the proposal's samples, or (p_proposal) p's own, whose weights ride in p's info
        u = b.u if b.u is not None else (b.p if b.p is not None and "w_u" in b.p.info else None)
        if u is not None and self.alpha > 0:
            um = u.action_mask.to(torch.float32)
            logp_u = logp_p if u is b.p else action_logprobs(model, u.samples)[0].float()
            l_u = neg_training_loss(logp_u, um, u.info["w_u"])
            total = self.alpha * l_u * rows if total is None else total + self.alpha * l_u * rows
            stats["loss_u"] = (float(l_u.detach()) * rows, rows)
        assert total is not None, "a RePULSe p step needs p samples or proposal samples"
        return MicroResult(total, stats)


@dataclass
class ProposalCTLLoss:
    """q's CTL loss (``repulse.losses.ctl_loss``) on its own samples, towards σ ∝ p·exp(−β r):

        L_q = mean_j mean_i (1/|s_i|) Σ_t m_{i,t} (w^π_{i,t} − w^σ_i)·(log q_T(s_{i,t}) − sg log p(s_{i,t}))

    log q_T is q's log-prob at the sampling temperature T (the density that drew the samples, whose
    log q_old the sampler recorded); p's per-token log-probs on q's samples come in
    ``info["logp_p"]``. Units: sequences.
    """

    beta: float
    temperature: float
    group_size: int

    def units(self, exp: Experience) -> float:
        return float(exp.action_mask.shape[0])

    def loss(self, model: torch.nn.Module, exp: Experience) -> MicroResult:
        from repulse.losses.repulse import ctl_loss

        qm = exp.action_mask.to(torch.float32)
        rows = float(qm.shape[0])
        n = self.group_size
        logq = action_logprobs(model, exp.samples, self.temperature)[0].float()
        l_q, m = ctl_loss(logq, exp.info["logp_p"], exp.old_logprobs, exp.rewards, qm, self.beta, n)
        return MicroResult(
            l_q * rows,
            {
                "loss_ctl": (float(l_q.detach()) * rows, rows),
                "ess_sigma": (float(m["ess_sigma"]) * rows, rows),
            },
        )
