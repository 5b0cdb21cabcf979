"""The RL controller loop: roles, one step per prompt batch, checkpoints, exports.

Roles (policy, critic, reference, proposal, reward sources) live in one process by
default, each trained role on the configured engine (local / fsdp / deepspeed), so the
same loop runs under ``torchrun`` with several processes: every rank samples its slice
of the prompt batch, and gradients are summed by the engines.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from repulse.config.sections import RLConfig
from repulse.data.collate import MicroBatcher
from repulse.errors import UserError
from repulse.rl.experience import batched_logprobs
from repulse.rl.rewards import RewardInput, build_reward_sources, combine
from repulse.rl.rollout import Samples, hf_generate
from repulse.run.checkpoints import Checkpoints
from repulse.run.metrics import MetricsLog
from repulse.run.progress import Progress


@dataclass
class Roles:
    tokenizer: Any
    policy: Any  # engine
    ref: Any | None  # FrozenModel
    critic: Any | None  # engine
    proposal: Any | None  # engine (RePULSe's q)
    rewards: list
    kl_ctl: Any
    reward_norm: Any | None


def kl_needed(cfg: RLConfig) -> bool:
    return cfg.algo.kl.init_coef > 0


def _engine_for(model, adam, muon, optim, cfg: RLConfig, total_steps: int, accum: int, micro: int):
    from repulse.engine import build_engine
    from repulse.engine.spec import optim_spec_from

    spec = optim_spec_from(adam, muon, optim, max(1, total_steps))
    return build_engine(model, spec, cfg.engine, accumulation_steps=accum, micro_batch_size=micro)


def build_roles(cfg: RLConfig, device: torch.device, world: int, total_updates: int, accum: int) -> Roles:
    from repulse.losses.kl import AdaptiveKLController, FixedKLController
    from repulse.models.loading import disable_dropout, load_causal_lm, load_scalar_model, load_tokenizer
    from repulse.rl.reward_shaping import RunningMeanStd

    path = cfg.actor.model_name_or_path
    tokenizer = load_tokenizer(path, chat_template=cfg.data.tokenizer_chat_template, padding_side="left")

    # every RL model runs with dropout off, in training forwards too (see ``disable_dropout``)
    def lm(p: str, trainable: bool, on: torch.device):
        return disable_dropout(
            load_causal_lm(
                p,
                dtype=cfg.engine.param_dtype,
                attn=cfg.engine.attn_implementation,
                gradient_checkpointing=trainable and cfg.actor.gradient_checkpointing_enable,
                reentrant=cfg.actor.gradient_checkpointing_reentrant,
                device=on,
                trainable=trainable,
            )
        )

    micro = cfg.train.micro_batch_size
    policy = _engine_for(
        lm(path, True, device),
        cfg.actor.adam,
        cfg.actor.muon,
        cfg.actor.optim,
        cfg,
        total_updates,
        accum,
        micro,
    )
    ref = None
    if kl_needed(cfg):
        from repulse.engine import prepare_frozen

        frozen = lm(cfg.ref.model_name_or_path or path, False, device)
        ref = prepare_frozen(frozen, device=device, offload=cfg.ref.offload)
    critic = None
    if cfg.repulse.method == "rl" and cfg.algo.advantage.estimator == "gae":
        model = disable_dropout(
            load_scalar_model(
                cfg.critic.model_name_or_path or path,
                value_head_prefix="score",
                pad_token_id=tokenizer.pad_token_id,
                dtype=cfg.engine.param_dtype,
                attn=cfg.engine.attn_implementation,
                device=device,
            )
        )
        critic = _engine_for(
            model, cfg.critic.adam, cfg.critic.muon, cfg.critic.optim, cfg, total_updates, accum, micro
        )
    proposal = None
    if cfg.repulse.method == "repulse":
        q_adam = copy.deepcopy(cfg.actor.adam)
        q_adam.lr = cfg.repulse.proposal_lr
        q_total = total_updates * max(1, cfg.repulse.q_updates_per_step)
        proposal = _engine_for(
            lm(path, True, device), q_adam, cfg.actor.muon, cfg.actor.optim, cfg, q_total, accum, micro
        )
    rewards = build_reward_sources(cfg.reward, device, cfg.rollout.micro_batch_size)
    kl = cfg.algo.kl
    kl_ctl = (
        AdaptiveKLController(kl.init_coef, kl.target, kl.horizon)
        if kl.target
        else FixedKLController(kl.init_coef)
    )
    norm = RunningMeanStd() if cfg.reward.normalize_enable else None
    return Roles(tokenizer, policy, ref, critic, proposal, rewards, kl_ctl, norm)


# ----------------------------------------------------------------------------- sampling and rewards


def max_new_tokens(cfg: RLConfig, prompt_ids: list[list[int]]) -> int:
    """The response budget L_max: ``--rollout.max_new_tokens``, else what ``--data.max_len`` leaves."""
    return cfg.rollout.max_new_tokens or max(1, cfg.data.max_len - max(len(p) for p in prompt_ids))


def sample(
    engine, roles: Roles, cfg: RLConfig, prompt_ids: list[list[int]], n: int, temperature: float
) -> Samples:
    r = cfg.rollout
    return hf_generate(
        engine.unwrapped() if hasattr(engine, "unwrapped") else engine,
        prompt_ids,
        n_samples=n,
        max_new_tokens=max_new_tokens(cfg, prompt_ids),
        temperature=temperature,
        top_p=r.top_p,
        top_k=r.top_k,
        eos_id=roles.tokenizer.eos_token_id,
        pad_id=roles.tokenizer.pad_token_id,
        micro_batch_size=r.micro_batch_size,
        device=engine.device if hasattr(engine, "device") else next(engine.parameters()).device,
    )


def reward_input(roles: Roles, samples: Samples, items: list[dict]) -> RewardInput:
    tok = roles.tokenizer
    responses = [
        tok.decode(row[m.bool()].tolist(), skip_special_tokens=True)
        for row, m in zip(samples.response.cpu(), samples.action_mask.cpu())
    ]
    prompts = [items[int(i)]["prompt"] for i in samples.prompt_index]
    labels = [items[int(i)].get("label") for i in samples.prompt_index]
    questions = [items[int(i)].get("question", items[int(i)]["prompt"]) for i in samples.prompt_index]
    return RewardInput([p + r for p, r in zip(prompts, responses)], prompts, responses, labels, questions)


def score(
    roles: Roles, samples: Samples, items: list[dict], reduction: str
) -> tuple[torch.Tensor, RewardInput]:
    batch = reward_input(roles, samples, items)
    values = [src(batch).float() for src in roles.rewards]
    return combine(values, reduction), batch


def ref_logprobs(roles: Roles, samples: Samples, micro: int, temperature: float = 1.0) -> torch.Tensor | None:
    """The frozen reference's log-probs of the response tokens (None when no KL term is on)."""
    if roles.ref is None:
        return None
    with roles.ref.on_device() as model:
        return batched_logprobs(model, samples, micro, temperature)


@torch.no_grad()
def evaluate(cfg: RLConfig, roles: Roles, eval_prompts: Any) -> dict[str, float]:
    """Mean reward of ``--eval.n_samples_per_prompt`` samples per held-out prompt at ``--eval.temperature``
    (0: greedy), this rank's share of ``--eval.dataset``; averaged over ranks by the caller."""
    rank, world = roles.policy.rank, roles.policy.world_size
    usable = len(eval_prompts) // world * world  # equal shares: sharded engines need equal forward counts
    mine = list(range(rank, usable, world))
    rewards = []
    n = cfg.eval.n_samples_per_prompt if cfg.eval.temperature > 0 else 1
    per = max(1, cfg.rollout.micro_batch_size // n)
    for s in range(0, len(mine), per):
        items = [eval_prompts[i] for i in mine[s : s + per]]
        samples = sample(
            roles.policy, roles, cfg, [it["prompt_ids"] for it in items], n, cfg.eval.temperature
        )
        r, _ = score(roles, samples, items, cfg.reward.reduction)
        rewards.append(r)
    r = torch.cat(rewards) if rewards else torch.zeros(0)
    bad = (r < cfg.repulse.bad_threshold).float()
    return {
        "eval_reward": float(r.mean()) if r.numel() else math.nan,
        "eval_p_bad": float(bad.mean()) if r.numel() else math.nan,
    }


# ----------------------------------------------------------------------------- driver


def run(cfg: RLConfig) -> int:
    from repulse.data.prompts import PromptDataset
    from repulse.run.start import start_run
    from repulse.trainers.common import load_split

    run_ = start_run(cfg)
    world = run_.world_size
    r = cfg.rollout
    if r.batch_size % world:
        raise UserError(
            f"--rollout.batch_size {r.batch_size} must be a multiple of the number of processes ({world})."
        )
    local_prompts = r.batch_size // world
    local_rows = local_prompts * r.n_samples_per_prompt
    if cfg.repulse.method == "rl":
        if local_rows % cfg.train.micro_batch_size:
            raise UserError(
                f"--rollout.batch_size x --rollout.n_samples_per_prompt per process ({local_rows}) must be a multiple "
                f"of --train.micro_batch_size ({cfg.train.micro_batch_size})."
            )
        micro_per_step = local_rows // cfg.train.micro_batch_size
        accum = max(1, min(micro_per_step, cfg.train.batch_size // (cfg.train.micro_batch_size * world)))
        if micro_per_step % accum:
            raise UserError(
                "--train.batch_size must divide --rollout.batch_size x --rollout.n_samples_per_prompt."
            )
        updates_per_step = (micro_per_step // accum) * cfg.algo.max_epochs
    else:
        from repulse.trainers.rl_methods import repulse_accumulation

        accum = repulse_accumulation(cfg, local_prompts)
        updates_per_step = 1
    tokenizer_path = cfg.actor.model_name_or_path
    from repulse.models.loading import load_tokenizer

    tok = load_tokenizer(tokenizer_path, chat_template=cfg.data.tokenizer_chat_template, padding_side="left")
    rows = load_split(
        cfg.data.prompt_dataset,
        cfg.data.prompt_split,
        cfg.data.max_samples,
        cfg.data.prompt_probs,
        cfg.train.seed,
        "--data.prompt_dataset",
    )
    prompts = PromptDataset(rows, tok, cfg.data)
    batcher = MicroBatcher(len(prompts), local_prompts, r.batch_size, True, cfg.train.seed, run_.rank, world)
    steps_per_episode = batcher.steps_per_epoch
    if steps_per_episode == 0:
        raise UserError(
            f"--data.prompt_dataset has {len(prompts)} prompts, fewer than --rollout.batch_size {r.batch_size}."
        )
    eval_prompts = None
    if cfg.eval.dataset:
        eval_rows = load_split(
            cfg.eval.dataset, cfg.eval.split, cfg.eval.max_samples, None, cfg.train.seed, "--eval.dataset"
        )
        eval_prompts = PromptDataset(eval_rows, tok, cfg.data)
    fit_steps = max(1, cfg.repulse.fit_steps)
    per_fit = steps_per_episode * cfg.train.num_episodes
    total = per_fit * fit_steps
    if cfg.train.max_steps > 0:
        total = min(total, cfg.train.max_steps)
    roles = build_roles(cfg, run_.device, world, total * updates_per_step, accum)
    from repulse.trainers.rl_ppo import make_experience, old_logprobs_needed, ppo_update

    need_old = old_logprobs_needed(cfg, updates_per_step)
    if world > 1:
        # Models (and fresh value heads) were initialised from the shared seed; sampling must
        # not be: with one random stream per rank, ranks would draw identical samples.
        torch.manual_seed(cfg.train.seed + 1_000_003 * run_.rank)
    engines = {"actor": roles.policy}
    if roles.critic is not None:
        engines["critic"] = roles.critic
    if roles.proposal is not None:
        engines["proposal"] = roles.proposal
    out_dir, ckpt_dir = (
        Path(cfg.ckpt.output_dir),
        Path(cfg.ckpt.path or Path(cfg.ckpt.output_dir) / "checkpoints"),
    )
    ckpts = Checkpoints(ckpt_dir, cfg.ckpt.max_num, run_.rank)
    start = 0
    if cfg.ckpt.load_enable and (latest := ckpts.latest()) is not None:
        state = ckpts.load(latest, engines)
        start = int(state["step"])
        roles.kl_ctl.load_state_dict(state["kl_ctl"])
        if roles.reward_norm is not None and state.get("reward_norm"):
            roles.reward_norm.load_state_dict(state["reward_norm"])
        if run_.rank == 0:
            print(f"[repulse] resumed from {latest} at step {start}", flush=True)
    from repulse.config.schema import to_dict

    log = MetricsLog(out_dir, cfg.logger, to_dict(cfg), run_.rank == 0, start)
    bar = Progress(
        total,
        start,
        cfg.logger.progress_bar and run_.rank == 0,
        cfg.repulse.method if cfg.repulse.method != "rl" else cfg.algo.advantage.estimator,
    )
    from repulse.trainers.rl_methods import exact_eval, negdata_sink, repulse_step

    sink = negdata_sink(cfg, run_.rank)
    seen = (math.inf, -math.inf)  # the range of the policy's sampled rewards, for the η check
    # as the offline loop: evaluate before the first step and every --eval.steps (<= 0: every episode)
    eval_every = cfg.eval.steps if cfg.eval.steps > 0 else steps_per_episode
    if start == 0:
        before: dict[str, Any] = {}
        if cfg.repulse.analytic_bad_word_calc:
            before.update(exact_eval(cfg, roles))
        if eval_prompts is not None:
            before.update(_mean_over_ranks(roles.policy, evaluate(cfg, roles, eval_prompts)))
        if before:
            log.log(0, before)
    try:
        for step in range(start, total):
            t0 = time.perf_counter()
            episode, k = divmod(step, steps_per_episode)
            mine = batcher.step_indices(episode, k)[0]
            items = [prompts[i] for i in mine]
            metrics: dict[str, Any] = {}
            if cfg.repulse.method == "rl":
                exp = make_experience(cfg, roles, items, metrics, need_old)
                n_samples = len(items) * cfg.rollout.n_samples_per_prompt
                if exp is not None:
                    if sink is not None:
                        sink.add(roles, exp.samples, items, exp.raw_rewards)
                    ppo_update(cfg, roles, exp, step, accum, metrics)
            else:
                n_samples = repulse_step(cfg, roles, items, step, accum, metrics, sink)
            done = step + 1
            dt = time.perf_counter() - t0
            metrics["samples_per_s"] = n_samples * world / dt
            metrics["time_step"] = dt
            metrics = _mean_over_ranks(roles.policy, metrics)
            if "reward_min" in metrics:
                seen = (min(seen[0], metrics["reward_min"]), max(seen[1], metrics["reward_max"]))
            boundary = cfg.repulse.analytic_bad_word_calc and (done % per_fit == 0 or done == total)
            if boundary:
                metrics.update(exact_eval(cfg, roles))
            evaluated = eval_prompts is not None and (done % eval_every == 0 or done == total)
            if evaluated:
                metrics.update(_mean_over_ranks(roles.policy, evaluate(cfg, roles, eval_prompts)))
            if boundary or evaluated or done % max(1, cfg.logger.logging_steps) == 0 or done == total:
                log.log(done, metrics)
            bar.update(done, {"reward": metrics.get("reward", math.nan)})
            if cfg.ckpt.save_steps > 0 and done % cfg.ckpt.save_steps == 0 and done < total:
                state = {
                    "kl_ctl": roles.kl_ctl.state_dict(),
                    "reward_norm": roles.reward_norm.state_dict() if roles.reward_norm else None,
                }
                ckpts.save(done, engines, state)
    finally:
        bar.close()
        log.close()
        if sink is not None:
            sink.close()
    if run_.rank == 0 and (cfg.repulse.method != "rl" or eval_prompts is not None):
        warn_threshold_outside(cfg, seen)
    roles.policy.export_hf(out_dir, roles.tokenizer)
    if roles.critic is not None and cfg.critic.save_value_network:
        roles.critic.export_hf(out_dir / "critic", roles.tokenizer)
    if roles.proposal is not None:
        roles.proposal.export_hf(out_dir / "proposal", roles.tokenizer)
    if run_.rank == 0:
        print(f"[repulse] saved the policy to {out_dir}", flush=True)
    return 0


def sample_metrics(engine, raw: torch.Tensor, samples: Samples) -> dict[str, float]:
    """The policy's sampled rewards over every process (mean, std, min, max) and response length."""
    lo, hi = global_range(engine, raw)
    return {
        "reward": float(raw.mean()),
        "reward_std": global_std(engine, raw),
        "reward_min": lo,
        "reward_max": hi,
        "response_length": float(samples.response_length.float().mean()),
    }


def global_range(engine, x: torch.Tensor) -> tuple[float, float]:
    """(min, max) of ``x`` over every process's values."""
    xd = x.detach().double().flatten()
    t = torch.stack([-xd.min(), xd.max()]) if xd.numel() else torch.full((2,), -math.inf, dtype=torch.float64)
    if engine.world_size > 1:
        t = engine.all_reduce(t.to(engine.device), "max").cpu()
    return -float(t[0]), float(t[1])


def warn_threshold_outside(cfg: RLConfig, seen: tuple[float, float]) -> None:
    """η (``--repulse.bad_threshold``) outside every reward seen: the P(bad) metrics said nothing."""
    from repulse.errors import warn_once

    lo, hi = seen
    eta = cfg.repulse.bad_threshold
    if lo <= hi and not lo < eta <= hi:
        warn_once(
            "rl.bad_threshold",
            f"--repulse.bad_threshold {eta:g} is outside the range of rewards seen in training "
            f"[{lo:g}, {hi:g}]: the sampled P(bad) metrics were {'0' if eta <= lo else '1'} throughout; "
            "check the threshold against the reward model's scale.",
        )


def global_std(engine, x: torch.Tensor) -> float:
    """Unbiased std of ``x`` over every process's values (the mean of rank-local stds is not it)."""
    xd = x.detach().double().flatten()
    t = torch.stack([xd.sum(), (xd * xd).sum(), torch.tensor(float(xd.numel()), dtype=torch.float64)])
    if engine.world_size > 1:
        t = engine.all_reduce(t.to(engine.device), "sum").cpu()
    total, squares, n = (float(v) for v in t)
    if n < 2:
        return 0.0
    return math.sqrt(max(squares - total * total / n, 0.0) / (n - 1))


def _mean_over_ranks(engine, metrics: dict[str, Any]) -> dict[str, Any]:
    """Average scalar metrics over processes (rank-local reward means, KL, ...)."""
    if engine.world_size == 1:
        return metrics
    keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=engine.device)
    t = engine.all_reduce(t, "sum") / engine.world_size
    return {**metrics, **{k: float(v) for k, v in zip(keys, t.cpu())}}
