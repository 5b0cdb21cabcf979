"""PPO-family RL: rewards → experience → clipped policy (and value) updates.

Per step: n responses per prompt from the policy's rollout engine, scored by the reward role;
optional DAPO dynamic filtering; old / reference log-probs and critic values; the shaped reward
(normalisation, length penalties, cap, group baseline, clip); the KL in the reward or as a
loss; advantages from the ``--algo.advantage.estimator`` registry; then ``--algo.max_epochs``
passes of PPO-clip (or GSPO) and value updates over micro-batches; the KL controller last.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from repulse.config.sections import RLConfig
from repulse.rl.experience import Experience
from repulse.rl.rewards import RewardInput
from repulse.rl.rollout import Samples
from repulse.rl.scoring import select_texts
from repulse.trainers.rl.methods.base import max_new_tokens, prefixed, sample_metrics, sampling
from repulse.trainers.rl.updates import PolicyLoss, ValueLoss


@dataclass
class Rollout:
    items: list[dict]
    samples: Samples
    raw: torch.Tensor  # [B] the reward sources' output
    texts: RewardInput
    metrics: dict[str, float]


def kl_needed(cfg: RLConfig) -> bool:
    return cfg.algo.kl.init_coef > 0


def updates_per_rollout(cfg: RLConfig, local_rows: int, world: int) -> tuple[int, int]:
    """(micro-batches per optimizer step, optimizer steps per rollout) for the PPO family."""
    from repulse.errors import UserError

    micro = cfg.train.micro_batch_size
    if local_rows % micro:
        raise UserError(
            f"--rollout.batch_size x --rollout.n_samples_per_prompt per process ({local_rows}) must be a multiple "
            f"of --train.micro_batch_size ({micro})."
        )
    micro_per_step = local_rows // micro
    accum = max(1, min(micro_per_step, cfg.train.batch_size // (micro * world)))
    if micro_per_step % accum:
        raise UserError(
            "--train.batch_size must divide --rollout.batch_size x --rollout.n_samples_per_prompt."
        )
    return accum, (micro_per_step // accum) * cfg.algo.max_epochs


class PPOFamily:
    """``--repulse.method rl``: the estimator named by ``--algo.advantage.estimator`` alone."""

    def __init__(self, cfg: RLConfig, roles, accum: int, updates: int, sink=None):
        from repulse.losses.kl import AdaptiveKLController, FixedKLController
        from repulse.rl.reward_shaping import RunningMeanStd

        self.cfg, self.roles, self.accum, self.sink = cfg, roles, accum, sink
        kl = cfg.algo.kl
        self.kl_ctl = (
            AdaptiveKLController(kl.init_coef, kl.target, kl.horizon)
            if kl.target
            else FixedKLController(kl.init_coef)
        )
        self.reward_norm = RunningMeanStd() if cfg.reward.normalize_enable else None
        # π_old before the update: for the KL in the reward, or because the rollout feeds several
        # optimizer steps (later ones see moved weights). Otherwise the update takes sg(π) of its
        # own forward - exact, since the weights have not moved since sampling - and the KL of a
        # KL loss is measured in that forward too.
        self.need_old = updates > 1 or (kl_needed(cfg) and not kl.use_loss)

    # ------------------------------------------------------------------ rollout

    def rollout(self, items: list[dict]) -> Rollout:
        cfg, roles = self.cfg, self.roles
        prompts = [it["prompt_ids"] for it in items]
        t0 = time.perf_counter()
        samples = roles.policy.rollout.generate(
            prompts, cfg.rollout.n_samples_per_prompt, sampling(cfg, prompts)
        )
        samples.pack = cfg.engine.packing_samples
        t1 = time.perf_counter()
        raw, texts = roles.rewards.score(samples, items)
        return Rollout(
            items, samples, raw, texts, {"time_generate": t1 - t0, "time_reward": time.perf_counter() - t1}
        )

    # ------------------------------------------------------------------ train

    def train(self, ro: Rollout, step: int) -> dict[str, float]:
        roles = self.roles
        metrics = dict(ro.metrics)
        metrics.update(sample_metrics(roles.comm, ro.raw, ro.samples))
        metrics["samples"] = float(ro.samples.sequences.shape[0])
        out = self.experience(ro, metrics)
        if out is not None:
            exp, texts = out
            if self.sink is not None:  # what the update learns from (after dynamic filtering)
                self.sink.add(texts, exp.raw_rewards)
            self.update(exp, step, metrics)
        return metrics

    def filter_groups(self, raw: torch.Tensor, metrics: dict) -> torch.Tensor | None:
        """Rows kept by dynamic filtering (DAPO): groups whose mean reward is inside the range.

        Every data-parallel shard keeps the same number of groups (the fewest any shard kept, its
        first ones), so sharded engines run the same number of forwards; None when no shard kept
        any. The shards are the processes under ``torchrun``, or the contiguous shards of the step
        that one controller holds (``roles.shards``).
        """
        from repulse.rl.advantages import dynamic_filter_groups

        n = self.cfg.rollout.n_samples_per_prompt
        lo, hi = self.cfg.algo.dynamic_filtering_range
        keep = dynamic_filter_groups(raw.cpu(), n, lo, hi)
        per_shard = keep.view(-1, n)[:, 0].view(self.roles.shards, -1)
        fewest = float(per_shard.sum(-1).min())
        count = self.roles.comm.all_reduce(torch.tensor([fewest], dtype=torch.float64), "min")
        k = int(count.item())
        metrics["kept_fraction"] = float(keep.float().mean())
        metrics["kept_groups"] = k
        if k == 0:
            return None
        width = per_shard.shape[1]
        groups = torch.cat([torch.nonzero(g).flatten()[:k] + j * width for j, g in enumerate(per_shard)])
        return (groups[:, None] * n + torch.arange(n)).flatten()

    def shape_rewards(self, raw: torch.Tensor, samples: Samples, max_new: int) -> torch.Tensor:
        """The sequence reward an estimator sees, from the reward sources' output (OpenRLHF's order):

        running normalisation (statistics over every process's rewards) → length penalties →
        cap → the estimator's group baseline → clip to ``--reward.clip_range``.
        """
        from repulse.rl.advantages import shape_group_rewards
        from repulse.rl.reward_shaping import clip_rewards, overlong_penalty

        rc = self.cfg.reward
        r = raw.clone()
        if self.reward_norm is not None:
            comm = self.roles.comm
            reduce = (lambda t: comm.all_reduce(t, "sum").cpu()) if comm.world_size > 1 else None
            self.reward_norm.update(r, reduce)
            r = self.reward_norm.normalize(r)
        if rc.overlong_buffer_len:
            lengths = samples.response_length.cpu()
            r = r + overlong_penalty(lengths, max_new, rc.overlong_buffer_len, rc.overlong_penalty_factor)
        if rc.stop_properly_penalty_coef is not None:
            c = rc.stop_properly_penalty_coef
            r = torch.where(samples.truncated.cpu(), r * c if c >= 0 else torch.full_like(r, c), r)
        if rc.cap is not None:
            r = r.clamp(max=rc.cap)
        r = shape_group_rewards(self.cfg.algo.advantage.estimator, r, self.cfg.rollout.n_samples_per_prompt)
        return clip_rewards(r, rc.clip_range[0], rc.clip_range[1])

    def experience(self, ro: Rollout, metrics: dict) -> tuple[Experience, RewardInput] | None:
        """The rollout → ``Experience`` and the texts of its rows; None when dynamic filtering left
        nothing to learn from."""
        from repulse.losses.kl import KL_ESTIMATORS
        from repulse.rl.advantages import compute_advantages, token_rewards

        cfg, roles = self.cfg, self.roles
        t1 = time.perf_counter()
        samples, raw, texts = ro.samples, ro.raw, ro.texts
        if cfg.algo.dynamic_filtering_enable:
            rows = self.filter_groups(raw, metrics)
            if rows is None:
                metrics["time_experience"] = time.perf_counter() - t1
                return None
            samples, raw, texts = samples.select(rows), raw[rows], select_texts(texts, rows.tolist())
        device = roles.comm.device
        samples = samples.to(device)
        raw = raw.to(device)
        temp = cfg.rollout.temperature
        old = roles.policy.logprobs(samples, temp) if self.need_old else None
        mask = samples.action_mask.float()
        ref = roles.ref.logprobs(samples, temp) if roles.ref is not None else None
        values = roles.critic.values(samples) if roles.critic is not None else None
        # the overlong penalty is relative to the budget L_max, not to this batch's longest response
        max_new = max_new_tokens(cfg, [it["prompt_ids"] for it in ro.items])
        rewards = self.shape_rewards(raw.cpu(), samples, max_new).to(device)
        kl = (
            KL_ESTIMATORS[cfg.algo.kl.estimator](old, ref) * mask
            if ref is not None and old is not None
            else torch.zeros_like(mask)
        )
        coef = self.kl_ctl.value
        penalty = None if cfg.algo.kl.use_loss else coef * kl
        a = cfg.algo.advantage
        comm = roles.comm
        reduce = (lambda t: comm.all_reduce(t, "sum")) if comm.world_size > 1 else None
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
        if not (old is None and ref is not None):  # else a KL loss measures the KL in its own forward
            # the KL controller's input (as OpenRLHF): per-token mean KL per sample, averaged over
            # every process's samples, and their number
            per_sample = kl.sum(-1) / mask.sum(-1).clamp(min=1)
            moments = torch.stack(
                [per_sample.double().sum(), torch.tensor(float(per_sample.numel()), dtype=torch.float64)]
            )
            kl_total, kl_count = (float(v) for v in comm.all_reduce(moments.to(device), "sum").cpu())
            metrics.update(
                kl=float(kl.sum(-1).mean()), kl_per_token=kl_total / max(kl_count, 1.0), kl_samples=kl_count
            )
        if old is not None and samples.logprobs is not None:
            # the trainer's forward vs the rollout engine's density at the same weights: ~1e-6 for
            # the colocated hf sampler without top-k/top-p; a large value flags an engine out of
            # sync with the policy (or numerics that differ)
            metrics["rollout_logprob_diff"] = float(
                (old - samples.logprobs.to(device)).abs().sum() / mask.sum().clamp(min=1)
            )
        metrics.update(
            shaped_reward=float(rewards.mean()), kl_coef=coef, time_experience=time.perf_counter() - t1
        )
        return Experience(samples, old, ref, values, rewards, raw, kl, adv, ret), texts

    def update(self, exp: Experience, step: int, metrics: dict) -> None:
        cfg, roles = self.cfg, self.roles
        t0 = time.perf_counter()
        eps = cfg.actor.eps_clip_low_high or [cfg.actor.eps_clip, cfg.actor.eps_clip]
        ris = cfg.algo.rollout_is
        policy_loss = PolicyLoss(
            eps[0],
            eps[1],
            cfg.actor.dual_clip,
            cfg.rollout.temperature,
            self.kl_ctl.value if cfg.algo.kl.use_loss else 0.0,
            cfg.algo.kl.estimator,
            cfg.actor.entropy_coef,
            cfg.actor.policy_loss_type,
            (ris.mode, ris.low, ris.high) if ris.mode != "none" else None,
        )
        value_loss = ValueLoss(cfg.critic.value_clip) if roles.critic is not None else None
        train_actor = step >= cfg.critic.freezing_steps
        # each data-parallel shard (a torchrun rank, or a contiguous shard of a step held by one
        # controller) is cut into micro-batches of its own; an optimizer step takes `accum` of
        # them from every shard, shard by shard, in the same order for every shard
        shards = roles.shards
        per_shard = exp.action_mask.shape[0] // shards
        slices = micro_slices(per_shard, cfg.train.micro_batch_size)
        gen = torch.Generator().manual_seed(cfg.train.seed * 7919 + step)
        agg: dict[str, list[float]] = {}

        def add(out: dict[str, float]) -> None:
            for k, v in out.items():
                agg.setdefault(k, []).append(v)

        for epoch in range(cfg.algo.max_epochs):
            order = (
                list(range(len(slices)))
                if epoch == 0
                else torch.randperm(len(slices), generator=gen).tolist()
            )
            for g in range(0, len(order), self.accum):
                mbs = [
                    exp.select([j * per_shard + r for r in slices[i]])
                    for j in range(shards)
                    for i in order[g : g + self.accum]
                ]
                if train_actor:
                    out, optim = roles.policy.train_step(policy_loss, mbs)
                    add({**out, **prefixed("actor_", optim)})
                if value_loss is not None:
                    out, optim = roles.critic.train_step(value_loss, mbs)
                    add({"value_loss": out["value_loss"], **prefixed("critic_", optim)})
        metrics.update({k: sum(v) / len(v) for k, v in agg.items()})
        metrics["time_train"] = time.perf_counter() - t0
        if "kl_samples" not in metrics and "kl_per_token" in metrics:  # measured by the KL loss
            metrics["kl_samples"] = float(exp.action_mask.shape[0] * roles.comm.world_size)
        self.kl_ctl.update(metrics.get("kl_per_token", 0.0), int(metrics.get("kl_samples", 0)))

    def state_dict(self) -> dict[str, Any]:
        return {
            "kl_ctl": self.kl_ctl.state_dict(),
            "reward_norm": self.reward_norm.state_dict() if self.reward_norm is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        if self.reward_norm is not None and state.get("reward_norm"):
            self.reward_norm.load_state_dict(state["reward_norm"])


def micro_slices(rows: int, micro: int) -> list[list[int]]:
    return [list(range(s, min(s + micro, rows))) for s in range(0, rows, micro)]
