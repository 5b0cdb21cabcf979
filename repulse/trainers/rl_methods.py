"""RePULSe and its REINFORCE-family baselines on the RL roles (paper Alg. 1; spec §2.1).

``--repulse.method``:
  reinforce         RLOO-REINFORCE on p's samples (α = 0, no proposal built at all)
  reward_transform  the same with r̃ = transform(r) (``--repulse.reward_transform``)
  p_proposal        + α·L_u on p's own samples, weights softmax_i(−β r_i) (q := p)
  repulse           + α·L_u on samples of a learned proposal q trained by CTL

Per step and prompt: N samples from p (and N from q); return R = min(f(r), cap) −
λ·Σ_t KL_t(p_old ‖ p₀); then q's CTL update and p's update L_r + α·L_u, q first by
default (``--repulse.p_first`` flips the order).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from repulse.config.sections import RLConfig
from repulse.errors import UserError
from repulse.rl.experience import Experience, batched_logprobs
from repulse.trainers.fit import run_micro_batches
from repulse.trainers.rl_loop import Roles, ref_logprobs, sample, sample_metrics, score
from repulse.trainers.rl_updates import RepulseBatch, RepulseUpdate


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


def p_experience(cfg: RLConfig, roles: Roles, items: list[dict], metrics: dict) -> Experience:
    from repulse.losses.kl import KL_ESTIMATORS

    n = cfg.rollout.n_samples_per_prompt
    micro = cfg.train.micro_batch_size
    device = roles.policy.device
    s = sample(roles.policy, roles, cfg, [it["prompt_ids"] for it in items], n, cfg.rollout.temperature).to(
        device
    )
    mask = s.action_mask.float()
    raw, _ = score(roles, s, items, cfg.reward.reduction)
    raw = raw.to(device)
    kl_seq = torch.zeros_like(raw)
    ref = old = None  # π_old only serves the KL penalty: p's REINFORCE step uses its own forward
    if roles.ref is not None:
        old = batched_logprobs(roles.policy.module, s, micro)
        ref = ref_logprobs(roles, s, micro)
        kl_seq = (KL_ESTIMATORS[cfg.algo.kl.estimator](old, ref) * mask).sum(-1)
    lam = cfg.algo.kl.init_coef
    returns = transform_rewards(cfg, raw) - lam * kl_seq
    metrics.update(
        sample_metrics(roles.policy, raw, s),
        return_=float(returns.mean()),
        kl=float(kl_seq.mean()),
        p_bad_sampled=float((raw < cfg.repulse.bad_threshold).float().mean()),
    )
    return Experience(s, old, ref, rewards=cap(cfg, raw), raw_rewards=raw, kl=kl_seq, returns=returns)


def q_experience(cfg: RLConfig, roles: Roles, items: list[dict], metrics: dict) -> Experience:
    n = cfg.rollout.n_samples_per_prompt
    device = roles.proposal.device
    s = sample(roles.proposal, roles, cfg, [it["prompt_ids"] for it in items], n, cfg.rollout.temperature).to(
        device
    )
    r = cfg.rollout
    if r.temperature == 1.0 and r.top_k == 0 and r.top_p == 1.0 and s.logprobs is not None:
        # the sampler's own log-probs are log q_old of what it drew (same weights, dropout off;
        # equal to a full forward's up to float rounding, ~1e-6): no second forward of q
        old = s.logprobs.float()
    else:  # a tempered or truncated sampler: the weights need log q at temperature 1
        old = batched_logprobs(roles.proposal.module, s, cfg.train.micro_batch_size)
    raw, _ = score(roles, s, items, cfg.reward.reduction)
    raw = raw.to(device)
    metrics.update(
        q_reward=float(raw.mean()), q_bad_sampled=float((raw < cfg.repulse.bad_threshold).float().mean())
    )
    return Experience(s, old, rewards=cap(cfg, raw), raw_rewards=raw)


def _groups(exp: Experience | None, n: int, accum: int) -> list[Experience | None]:
    if exp is None:
        return [None] * accum
    rows = exp.action_mask.shape[0]
    per = rows // accum
    assert per % n == 0, "micro-batches must hold whole prompt groups"
    return [exp.select(list(range(i * per, (i + 1) * per))) for i in range(accum)]


def _update(cfg, roles, p_exp, q_exp, accum, train_p: bool, train_q: bool, metrics: dict, tag: str) -> None:
    rp = cfg.repulse
    n = cfg.rollout.n_samples_per_prompt
    weights = {"repulse": "importance", "p_proposal": "p_proposal"}.get(rp.method, "none")
    method = RepulseUpdate(
        p_engine=roles.policy,
        q_engine=roles.proposal if train_q else None,
        train_p=train_p,
        alpha=rp.alpha if rp.method in {"repulse", "p_proposal"} else 0.0,
        beta=rp.beta,
        weights=weights,
    )
    engines = {}
    if train_p:
        engines["p"] = roles.policy
    if train_q:
        engines["q"] = roles.proposal
    batches = [RepulseBatch(p, q, n) for p, q in zip(_groups(p_exp, n, accum), _groups(q_exp, n, accum))]
    out = run_micro_batches(engines, method, batches, train=True)
    if train_p:
        out.update({f"p_{k}": v for k, v in roles.policy.step().items()})
    if train_q:
        out.update({f"q_{k}": v for k, v in roles.proposal.step().items()})
    metrics.update({f"{tag}{k}": v for k, v in out.items()})


def repulse_step(
    cfg: RLConfig, roles: Roles, items: list[dict], step: int, accum: int, metrics: dict, sink
) -> int:
    """One joint step; returns the number of samples drawn on this rank."""
    rp = cfg.repulse
    drawn = 0
    if rp.method == "repulse":
        extra: dict[str, list[float]] = {}
        for _ in range(rp.q_updates_per_step - 1):  # N_q - 1 q-only steps on fresh q samples
            one: dict[str, Any] = {}
            q_exp = q_experience(cfg, roles, items, one)
            _update(cfg, roles, None, q_exp, accum, train_p=False, train_q=True, metrics=one, tag="")
            drawn += q_exp.action_mask.shape[0]
            for k, v in one.items():
                extra.setdefault(k, []).append(v)
        # logged as q_only_<metric>, the mean over those steps
        metrics.update({f"q_only_{k}": sum(v) / len(v) for k, v in extra.items()})
    p_exp = p_experience(cfg, roles, items, metrics)
    drawn += p_exp.action_mask.shape[0]
    if sink is not None:
        sink.add(roles, p_exp.samples, items, p_exp.raw_rewards)
    q_exp = None
    if rp.method == "repulse":
        q_exp = q_experience(cfg, roles, items, metrics)
        drawn += q_exp.action_mask.shape[0]
        if sink is not None:
            sink.add(roles, q_exp.samples, items, q_exp.raw_rewards)
    if rp.method == "repulse" and rp.p_first:
        _update(cfg, roles, p_exp, q_exp, accum, train_p=True, train_q=False, metrics=metrics, tag="")
        _update(cfg, roles, None, q_exp, accum, train_p=False, train_q=True, metrics=metrics, tag="")
    else:
        _update(
            cfg,
            roles,
            p_exp,
            q_exp,
            accum,
            train_p=True,
            train_q=rp.method == "repulse",
            metrics=metrics,
            tag="",
        )
    return drawn


# ----------------------------------------------------------------------------- toy evaluation, negative data


@torch.no_grad()
def exact_eval(cfg: RLConfig, roles: Roles) -> dict[str, float]:
    """Exact P(a bad word appears in the response) of p for the first prompt (toy; spec §3.3)."""
    from repulse.evaluation.exact import bad_token_ids_from_words, exact_prob_bad

    words = cfg.repulse.bad_words
    if not words:
        from repulse.toy import BAD_WORDS

        words = list(BAD_WORDS)
    ids = bad_token_ids_from_words(roles.tokenizer, words)
    if not ids:
        raise UserError(f"--repulse.bad_words {words}: none of them is a token of the policy's tokenizer.")
    from repulse.data.prompts import PromptDataset
    from repulse.trainers.common import load_split

    rows = load_split(
        cfg.data.prompt_dataset, cfg.data.prompt_split, 1, None, cfg.train.seed, "--data.prompt_dataset"
    )
    prompt = PromptDataset(rows, roles.tokenizer, cfg.data)[0]["prompt_ids"]
    model = roles.policy.unwrapped()
    log_p = float(exact_prob_bad(model, roles.tokenizer, prompt, ids, cfg.repulse.exact_max_tokens, log=True))
    return {"p_bad_exact": math.exp(log_p), "log_p_bad_exact": log_p}


class NegDataSink:
    """Collects every sample with reward below a threshold, deduplicated, written once at the end."""

    def __init__(self, path: str, threshold: float, rank: int):
        self.path, self.threshold, self.rank = Path(path), threshold, rank
        self.seen: dict[tuple[str, str], float] = {}

    def add(self, roles: Roles, samples, items: list[dict], rewards: torch.Tensor) -> None:
        from repulse.trainers.rl_loop import reward_input

        batch = reward_input(roles, samples, items)
        for p, r, v in zip(batch.prompts, batch.responses, rewards.tolist()):
            if v < self.threshold:
                self.seen.setdefault((p, r), v)

    def close(self) -> None:
        rows = [{"prompt": p, "response": r, "reward": v} for (p, r), v in self.seen.items()]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        if self.rank != 0:
            return
        unique = {(row["prompt"], row["response"]): row for row in rows}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in unique.values()))
        tmp.replace(self.path)


def negdata_sink(cfg: RLConfig, rank: int) -> NegDataSink | None:
    if not cfg.repulse.save_negdata:
        return None
    return NegDataSink(cfg.repulse.save_negdata, cfg.repulse.negdata_threshold, rank)
