"""PPO-family RL on the shared roles: rewards → experience → clipped policy and value updates.

Per step: sample n responses per prompt from the policy, score them, optional DAPO dynamic
filtering, old/reference log-probs and critic values, the shaped reward (normalisation,
length penalties, cap, group baseline, clip), KL in the reward or as a loss, advantages from the
``--algo.advantage.estimator`` registry, then ``--algo.max_epochs`` passes of PPO-clip (and
value) updates over micro-batches; the KL controller updates last. The RePULSe methods use the
same roles in ``repulse.trainers.rl_methods``.
"""

from __future__ import annotations

import time

import torch

from repulse.config.sections import RLConfig
from repulse.rl.experience import Experience, batched_logprobs, batched_values
from repulse.rl.rollout import Samples
from repulse.trainers.fit import run_micro_batches
from repulse.trainers.rl_loop import (
    Roles,
    kl_needed,
    max_new_tokens,
    ref_logprobs,
    sample,
    sample_metrics,
    score,
)


def _sum_over_ranks(engine):
    """A function summing a tensor over processes (None in one process)."""
    if engine.world_size == 1:
        return None
    return lambda t: engine.all_reduce(t.to(engine.device), "sum").cpu()


def shape_rewards(
    cfg: RLConfig, roles: Roles, raw: torch.Tensor, samples: Samples, max_new: int
) -> torch.Tensor:
    """The sequence reward an estimator sees, from the reward sources' output (OpenRLHF's order):

    running normalisation (statistics over every process's rewards) → length penalties →
    cap → the estimator's group baseline → clip to ``--reward.clip_range``.
    """
    from repulse.rl.advantages import shape_group_rewards
    from repulse.rl.reward_shaping import clip_rewards, overlong_penalty

    rc = cfg.reward
    r = raw.clone()
    if roles.reward_norm is not None:
        roles.reward_norm.update(r, _sum_over_ranks(roles.policy))
        r = roles.reward_norm.normalize(r)
    if rc.overlong_buffer_len:
        lengths = samples.response_length.cpu()
        r = r + overlong_penalty(lengths, max_new, rc.overlong_buffer_len, rc.overlong_penalty_factor)
    if rc.stop_properly_penalty_coef is not None:
        c = rc.stop_properly_penalty_coef
        r = torch.where(samples.truncated.cpu(), r * c if c >= 0 else torch.full_like(r, c), r)
    if rc.cap is not None:
        r = r.clamp(max=rc.cap)
    r = shape_group_rewards(cfg.algo.advantage.estimator, r, cfg.rollout.n_samples_per_prompt)
    return clip_rewards(r, rc.clip_range[0], rc.clip_range[1])


def filter_groups(cfg: RLConfig, roles: Roles, raw: torch.Tensor, metrics: dict) -> torch.Tensor | None:
    """Rows kept by dynamic filtering (DAPO): groups whose mean reward is inside the range.

    Every process keeps the same number of groups (the fewest any process kept, its first
    ones), so sharded engines run the same number of forwards; None when no process kept any.
    """
    from repulse.rl.advantages import dynamic_filter_groups

    n = cfg.rollout.n_samples_per_prompt
    lo, hi = cfg.algo.dynamic_filtering_range
    keep = dynamic_filter_groups(raw.cpu(), n, lo, hi)
    groups = torch.nonzero(keep.view(-1, n)[:, 0]).flatten()
    count = torch.tensor([float(groups.numel())], dtype=torch.float64)
    if roles.policy.world_size > 1:
        count = roles.policy.all_reduce(count.to(roles.policy.device), "min").cpu()
    k = int(count.item())
    metrics["kept_fraction"] = float(keep.float().mean())
    metrics["kept_groups"] = k
    if k == 0:
        return None
    return (groups[:k, None] * n + torch.arange(n)).flatten()


def old_logprobs_needed(cfg: RLConfig, updates_per_step: int) -> bool:
    """Whether the experience needs π_old before the update: for the KL to the reference (in the
    reward, and logged and fed to the KL controller in KL-loss mode too), or because the rollout
    feeds several optimizer steps (later ones see moved weights)."""
    return updates_per_step > 1 or kl_needed(cfg)


def make_experience(
    cfg: RLConfig, roles: Roles, items: list[dict], metrics: dict, need_old: bool = True
) -> Experience | None:
    """One rollout batch → ``Experience``; None when dynamic filtering left nothing to learn from.

    ``need_old`` False (see ``old_logprobs_needed``): π_old is left to the update, which takes
    sg(π) of its own forward - exact, since the weights have not moved since sampling.
    """
    from repulse.losses.kl import KL_ESTIMATORS
    from repulse.rl.advantages import compute_advantages, token_rewards

    t0 = time.perf_counter()
    n = cfg.rollout.n_samples_per_prompt
    samples = sample(roles.policy, roles, cfg, [it["prompt_ids"] for it in items], n, cfg.rollout.temperature)
    t1 = time.perf_counter()
    device = roles.policy.device
    raw, _ = score(roles, samples, items, cfg.reward.reduction)
    metrics.update(sample_metrics(roles.policy, raw, samples), time_generate=t1 - t0)
    if cfg.algo.dynamic_filtering_enable:
        rows = filter_groups(cfg, roles, raw, metrics)
        if rows is None:
            metrics["time_experience"] = time.perf_counter() - t1
            return None
        samples, raw = samples.select(rows), raw[rows]
    samples = samples.to(device)
    raw = raw.to(device)
    micro = cfg.train.micro_batch_size
    old = batched_logprobs(roles.policy.module, samples, micro, cfg.rollout.temperature) if need_old else None
    mask = samples.action_mask.float()
    ref = ref_logprobs(roles, samples, micro, cfg.rollout.temperature)
    values = batched_values(roles.critic.module, samples, micro) if roles.critic is not None else None
    # the overlong penalty is relative to the budget L_max, not to this batch's longest response
    max_new = max_new_tokens(cfg, [it["prompt_ids"] for it in items])
    rewards = shape_rewards(cfg, roles, raw.cpu(), samples, max_new).to(device)
    kl = (
        KL_ESTIMATORS[cfg.algo.kl.estimator](old, ref) * mask
        if ref is not None and old is not None
        else torch.zeros_like(mask)
    )
    coef = roles.kl_ctl.value
    penalty = None if cfg.algo.kl.use_loss else coef * kl
    a = cfg.algo.advantage
    reduce = (lambda t: roles.policy.all_reduce(t, "sum")) if roles.policy.world_size > 1 else None
    adv, ret = compute_advantages(
        a.estimator,
        token_rewards=token_rewards(rewards, penalty, mask),
        mask=mask,
        values=values,
        gamma=a.gamma,
        lambd=a.lambd,
        no_std_norm=a.no_std_norm,
        reduce=reduce,
    )
    # the KL controller's input (as OpenRLHF): per-token mean KL per sample, averaged over every
    # process's samples, and their number
    per_sample = kl.sum(-1) / mask.sum(-1).clamp(min=1)
    moments = torch.stack(
        [per_sample.double().sum(), torch.tensor(float(per_sample.numel()), dtype=torch.float64)]
    )
    if reduce is not None:
        moments = reduce(moments.to(device)).cpu()
    kl_total, kl_count = (float(v) for v in moments)
    if old is not None and samples.logprobs is not None:
        # sampler vs training forward at the same weights: ~1e-6 here; a large value flags a
        # rollout engine that is out of sync with the policy (or numerics that differ)
        metrics["rollout_logprob_diff"] = float(
            (old - samples.logprobs).abs().sum() / mask.sum().clamp(min=1)
        )
    metrics.update(
        shaped_reward=float(rewards.mean()),
        kl=float((kl.sum(-1)).mean()),
        kl_per_token=kl_total / max(kl_count, 1.0),
        kl_samples=kl_count,
        kl_coef=coef,
        time_experience=time.perf_counter() - t1,
    )
    return Experience(samples, old, ref, values, rewards, raw, kl, adv, ret)


def micro_slices(rows: int, micro: int) -> list[list[int]]:
    return [list(range(s, min(s + micro, rows))) for s in range(0, rows, micro)]


def ppo_update(cfg: RLConfig, roles: Roles, exp: Experience, step: int, accum: int, metrics: dict) -> None:
    from repulse.trainers.rl_updates import PolicyUpdate, ValueUpdate

    t0 = time.perf_counter()
    eps = cfg.actor.eps_clip_low_high or [cfg.actor.eps_clip, cfg.actor.eps_clip]
    kl_loss = roles.kl_ctl.value if cfg.algo.kl.use_loss else 0.0
    policy = PolicyUpdate(
        roles.policy,
        eps[0],
        eps[1],
        cfg.actor.dual_clip,
        cfg.rollout.temperature,
        kl_loss,
        cfg.algo.kl.estimator,
        cfg.actor.entropy_coef,
    )
    value = ValueUpdate(roles.critic, cfg.critic.value_clip) if roles.critic is not None else None
    train_actor = step >= cfg.critic.freezing_steps
    slices = micro_slices(exp.action_mask.shape[0], cfg.train.micro_batch_size)
    gen = torch.Generator().manual_seed(cfg.train.seed * 7919 + step)
    agg: dict[str, list[float]] = {}
    for epoch in range(cfg.algo.max_epochs):
        order = (
            list(range(len(slices))) if epoch == 0 else torch.randperm(len(slices), generator=gen).tolist()
        )
        for g in range(0, len(order), accum):
            mbs = [exp.select(slices[i]) for i in order[g : g + accum]]
            if train_actor:
                out = run_micro_batches(roles.policy, policy, mbs, train=True)
                out.update({f"actor_{k}": v for k, v in roles.policy.step().items()})
                for k, v in out.items():
                    agg.setdefault(k, []).append(v)
            if value is not None:
                out = run_micro_batches(roles.critic, value, mbs, train=True)
                out = {("value_loss" if k == "loss" else k): v for k, v in out.items()}
                out.update({f"critic_{k}": v for k, v in roles.critic.step().items()})
                for k, v in out.items():
                    agg.setdefault(k, []).append(v)
    metrics.update({k: sum(v) / len(v) for k, v in agg.items()})
    metrics["time_train"] = time.perf_counter() - t0
    roles.kl_ctl.update(metrics["kl_per_token"], int(metrics["kl_samples"]))
