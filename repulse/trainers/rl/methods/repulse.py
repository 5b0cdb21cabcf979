"""RePULSe and its REINFORCE-family baselines on the RL roles (paper Alg. 1; spec §2.1).

``--repulse.method``:
  reinforce         RLOO-REINFORCE on p's samples (α = 0, no proposal built at all)
  reward_transform  the same with r̃ = transform(r) (``--repulse.reward_transform``)
  p_proposal        + α·L_u on p's own samples, weights for σ ∝ p·exp(−β r) (q := p)
  repulse           + α·L_u on samples of a learned proposal q trained by CTL

Per step and prompt: N samples from p (and N from q); return R = min(f(r), cap) −
λ·Σ_t KL_t(p_old ‖ p₀); then q's CTL step and p's step L_r + α·L_u, q first by default
(``--repulse.p_first`` flips the order). The weights of L_u are computed once per step,
from p's log-probs of the proposal's samples and the density that drew them, and serve both
q's CTL loss and p's L_u.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from repulse.config.sections import RLConfig
from repulse.errors import UserError
from repulse.rl.experience import Experience
from repulse.rl.rewards import RewardInput
from repulse.rl.rollout import Samples
from repulse.trainers.rl.methods.base import prefixed, sample_metrics, sampling
from repulse.trainers.rl.updates import PolicyRepulseLoss, ProposalCTLLoss, RepulseBatch


def repulse_accumulation(cfg: RLConfig, local_prompts: int) -> int:
    """Micro-batches hold whole prompt groups; returns micro-batches per step."""
    n = cfg.rollout.n_samples_per_prompt
    per_micro = max(1, cfg.train.micro_batch_size // n)
    if local_prompts % per_micro:
        raise UserError(
            f"--train.micro_batch_size {cfg.train.micro_batch_size} holds {per_micro} prompt group(s) of "
            f"{n} samples; it must divide the {local_prompts} prompts per process of --rollout.batch_size."
        )
    return local_prompts // per_micro


def transform_rewards(cfg: RLConfig, r: torch.Tensor) -> torch.Tensor:
    """r̃ = min(f(r), cap): f is the baseline's reward transform (identity otherwise)."""
    from repulse.losses.repulse import REWARD_TRANSFORMS

    rp = cfg.repulse
    if rp.method == "reward_transform":
        fn = REWARD_TRANSFORMS[rp.reward_transform]
        second = rp.transform_b if rp.reward_transform == "minus_alpha_exp_beta_r" else rp.transform_eta
        r = fn(r, rp.transform_a, second)
    return cap(cfg, r)


def cap(cfg: RLConfig, r: torch.Tensor) -> torch.Tensor:
    return r.clamp(max=cfg.reward.cap) if cfg.reward.cap is not None else r


@dataclass
class Rollout:
    items: list[dict]
    samples: Samples
    raw: torch.Tensor
    texts: RewardInput
    metrics: dict[str, float]


def _groups(exp: Experience | None, n: int, accum: int) -> list[Experience | None]:
    if exp is None:
        return [None] * accum
    rows = exp.action_mask.shape[0]
    per = rows // accum
    assert per % n == 0, "micro-batches must hold whole prompt groups"
    return [exp.select(list(range(i * per, (i + 1) * per))) for i in range(accum)]


class RepulseFamily:
    def __init__(self, cfg: RLConfig, roles, accum: int, sink=None):
        self.cfg, self.roles, self.accum, self.sink = cfg, roles, accum, sink
        self.n = cfg.rollout.n_samples_per_prompt
        self.method = cfg.repulse.method

    # ------------------------------------------------------------------ samples

    def rollout(self, items: list[dict]) -> Rollout:
        prompts = [it["prompt_ids"] for it in items]
        t0 = time.perf_counter()
        s = self.roles.policy.rollout.generate(prompts, self.n, sampling(self.cfg, prompts))
        s.pack = self.cfg.engine.packing_samples
        t1 = time.perf_counter()
        raw, texts = self.roles.rewards.score(s, items)
        return Rollout(
            items, s, raw, texts, {"time_generate": t1 - t0, "time_reward": time.perf_counter() - t1}
        )

    def p_experience(self, ro: Rollout, metrics: dict) -> Experience:
        from repulse.losses.kl import KL_ESTIMATORS

        cfg, roles = self.cfg, self.roles
        device = roles.comm.device
        s = ro.samples.to(device)
        mask = s.action_mask.float()
        raw = ro.raw.to(device)
        kl_seq = torch.zeros_like(raw)
        ref = old = None  # π_old only serves the KL penalty: p's REINFORCE step uses its own forward
        if roles.ref is not None:
            old = roles.policy.logprobs(s)
            ref = roles.ref.logprobs(s)
            kl_seq = (KL_ESTIMATORS[cfg.algo.kl.estimator](old, ref) * mask).sum(-1)
        returns = transform_rewards(cfg, raw) - cfg.algo.kl.init_coef * kl_seq
        metrics.update(
            sample_metrics(roles.comm, raw, s),
            return_=float(returns.mean()),
            kl=float(kl_seq.mean()),
            p_bad_sampled=float((raw < cfg.repulse.bad_threshold).float().mean()),
        )
        return Experience(s, old, ref, rewards=cap(cfg, raw), raw_rewards=raw, kl=kl_seq, returns=returns)

    def q_experience(self, items: list[dict], metrics: dict) -> tuple[Experience, RewardInput]:
        roles = self.roles
        prompts = [it["prompt_ids"] for it in items]
        s = roles.proposal.rollout.generate(prompts, self.n, sampling(self.cfg, prompts)).to(
            roles.comm.device
        )
        s.pack = self.cfg.engine.packing_samples
        raw, texts = roles.rewards.score(s, items)
        raw = raw.to(roles.comm.device)
        metrics.update(
            q_reward=float(raw.mean()),
            q_bad_sampled=float((raw < self.cfg.repulse.bad_threshold).float().mean()),
        )
        # log q_old of what q drew: the density of the distribution that drew it (the sampler's
        # temperature applied), which the importance weights and the CTL loss need
        return Experience(s, s.logprobs.float(), rewards=cap(self.cfg, raw), raw_rewards=raw), texts

    # ------------------------------------------------------------------ weights and steps

    def u_weights(self, u: Experience, metrics: dict) -> None:
        """w_i = softmax_i(Σ log p(s'_i) − β r_i − Σ log q_sampler(s'_i)) per prompt group, into ``u.info``.

        ``u.old_logprobs`` is the density that drew the samples (the sampler's). p's log-probs of
        them go to ``info["logp_p"]`` for q's CTL loss. The p_proposal ablation at the default
        sampler (T = 1, no truncation) uses the exact cancellation log p − log p_sampler = 0:
        w = softmax(−β r) (spec §1.5)."""
        from repulse.losses.repulse import neg_training_weights, p_proposal_weights

        beta, n = self.cfg.repulse.beta, self.n
        r = self.cfg.rollout
        exact_p = self.method == "p_proposal" and r.temperature == 1.0 and r.top_k == 0 and r.top_p == 1.0
        if exact_p:
            w = p_proposal_weights(u.rewards, beta, n)
        else:
            logp = self.roles.policy.logprobs(u.samples)
            u.info["logp_p"] = logp
            m = u.action_mask.float()
            w = neg_training_weights((logp * m).sum(-1), (u.old_logprobs * m).sum(-1), u.rewards, beta, n)
        u.info["w_u"] = w
        metrics["ess_u"] = float((1.0 / (w.view(-1, n) ** 2).sum(-1)).mean())

    @property
    def micro_batches(self) -> int:
        """Micro-batches of one step here: ``accum`` per data-parallel shard this process holds
        (contiguous groups of rows, so shard j's are the j-th run of ``accum``)."""
        return self.accum * self.roles.shards

    def p_step(self, p_exp: Experience, u: Experience | None, alpha: float, metrics: dict) -> None:
        m = self.micro_batches
        batches = [
            RepulseBatch(p, q, self.n) for p, q in zip(_groups(p_exp, self.n, m), _groups(u, self.n, m))
        ]
        out, optim = self.roles.policy.train_step(PolicyRepulseLoss(alpha), batches)
        out["loss_p"] = out.pop("loss")
        metrics.update(out, **prefixed("p_", optim))

    def q_step(self, q_exp: Experience, metrics: dict) -> None:
        loss = ProposalCTLLoss(self.cfg.repulse.beta, self.cfg.rollout.temperature, self.n)
        out, optim = self.roles.proposal.train_step(loss, _groups(q_exp, self.n, self.micro_batches))
        out["loss_q"] = out.pop("loss")
        metrics.update(out, **prefixed("q_", optim))

    def train(self, ro: Rollout, step: int) -> dict[str, float]:
        rp = self.cfg.repulse
        metrics: dict[str, Any] = dict(ro.metrics)
        drawn = 0
        if self.method == "repulse":
            extra: dict[str, list[float]] = {}
            for _ in range(rp.q_updates_per_step - 1):  # N_q - 1 q-only steps on fresh q samples
                one: dict[str, Any] = {}
                q_exp, _ = self.q_experience(ro.items, one)
                self.u_weights(q_exp, one)
                self.q_step(q_exp, one)
                drawn += q_exp.action_mask.shape[0]
                for k, v in one.items():
                    extra.setdefault(k, []).append(v)
            # logged as q_only_<metric>, the mean over those steps
            metrics.update({f"q_only_{k}": sum(v) / len(v) for k, v in extra.items()})
        p_exp = self.p_experience(ro, metrics)
        drawn += p_exp.action_mask.shape[0]
        if self.sink is not None:
            self.sink.add(ro.texts, p_exp.raw_rewards)
        alpha = rp.alpha if self.method in {"repulse", "p_proposal"} else 0.0
        if self.method == "repulse":
            q_exp, q_texts = self.q_experience(ro.items, metrics)
            drawn += q_exp.action_mask.shape[0]
            if self.sink is not None:
                self.sink.add(q_texts, q_exp.raw_rewards)
            self.u_weights(q_exp, metrics)
            if rp.p_first:  # q then targets the updated p
                self.p_step(p_exp, q_exp, alpha, metrics)
                self.u_weights(q_exp, {})
                self.q_step(q_exp, metrics)
            else:
                self.q_step(q_exp, metrics)
                self.p_step(p_exp, q_exp, alpha, metrics)
        elif self.method == "p_proposal" and alpha > 0:  # L_u on p's own samples, in p's own forward
            u = Experience(p_exp.samples, p_exp.samples.logprobs, rewards=p_exp.rewards)
            self.u_weights(u, metrics)
            p_exp.info["w_u"] = u.info["w_u"]
            self.p_step(p_exp, None, alpha, metrics)
        else:
            self.p_step(p_exp, None, alpha, metrics)
        metrics["samples"] = float(drawn)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
