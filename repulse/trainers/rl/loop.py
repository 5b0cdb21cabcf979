"""The RL controller loop: it only loops.

Per step: the step's prompts → ``method.rollout`` → ``method.train`` → the rollout engines get
the new weights (``weight_version`` = the step) → metrics, evaluation, checkpoints. What a step
does is the method's (``repulse.trainers.rl.methods``); what a model does is its role's
(``repulse.trainers.rl.local_roles``). Under ``torchrun`` every rank runs this loop on its slice
of each step's prompts; on Ray (``repulse.launch``) one controller runs it on the whole step and
the roles are actor groups - the ``backend`` argument builds them. Where the rollouts come from
(drawn when the step starts, or ahead of it) is ``repulse.trainers.rl.pipeline``'s.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from repulse.config.sections import RLConfig
from repulse.data.collate import MicroBatcher
from repulse.errors import NonFiniteError, UserError, warn_once
from repulse.run.checkpoints import Checkpoints
from repulse.run.dirs import releases_output_dirs
from repulse.run.finite import FiniteGuard
from repulse.run.metrics import MetricsLog
from repulse.run.progress import Progress
from repulse.run.start import start_run
from repulse.trainers.rl.local_roles import LocalBackend, RoleBackend, Roles
from repulse.trainers.rl.methods import METHODS
from repulse.trainers.rl.methods.base import sampling
from repulse.trainers.rl.pipeline import AsyncRollouts, SyncRollouts, staleness
from repulse.trainers.rl.toy_eval import exact_eval, negdata_sink


@torch.no_grad()
def evaluate(cfg: RLConfig, roles: Roles, eval_prompts: Any) -> dict[str, float]:
    """Mean reward of ``--eval.n_samples_per_prompt`` samples per held-out prompt at ``--eval.temperature``
    (0: greedy), this process's shares of ``--eval.dataset``; averaged over ranks by the caller.

    Shard j of the D data-parallel shards takes prompts j, j + D, ...; a process holding several
    shards (Ray) asks for shard 0's chunk, then shard 1's, ... in one call, which the roles split
    back into the shards."""
    rank, world, shards = roles.comm.rank, roles.comm.world_size, roles.shards
    width = world * shards
    usable = len(eval_prompts) // width * width  # equal shares: sharded engines need equal forward counts
    mine = [list(range(rank * shards + j, usable, width)) for j in range(shards)]
    rewards = []
    n = cfg.eval.n_samples_per_prompt if cfg.eval.temperature > 0 else 1
    per = max(1, cfg.rollout.micro_batch_size // n)
    for s in range(0, len(mine[0]), per):
        items = [eval_prompts[i] for part in mine for i in part[s : s + per]]
        prompts = [it["prompt_ids"] for it in items]
        samples = roles.policy.rollout.generate(prompts, n, sampling(cfg, prompts, cfg.eval.temperature))
        r, _ = roles.rewards.score(samples, items)
        rewards.append(r)
    r = torch.cat(rewards) if rewards else torch.zeros(0)
    bad = (r < cfg.repulse.bad_threshold).float()
    return {
        "eval_reward": float(r.mean()) if r.numel() else math.nan,
        "eval_p_bad": float(bad.mean()) if r.numel() else math.nan,
    }


def mean_over_ranks(comm, metrics: dict[str, Any]) -> dict[str, Any]:
    """Average scalar metrics over processes (rank-local reward means, KL, ...)."""
    if comm.world_size == 1:
        return metrics
    keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    t = comm.all_reduce(t, "sum").cpu() / comm.world_size
    return {**metrics, **{k: float(v) for k, v in zip(keys, t)}}


def warn_threshold_outside(cfg: RLConfig, seen: tuple[float, float]) -> None:
    """η (``--repulse.bad_threshold``) outside every reward seen: the P(bad) metrics said nothing."""
    lo, hi = seen
    eta = cfg.repulse.bad_threshold
    if lo <= hi and not lo < eta <= hi:
        warn_once(
            "rl.bad_threshold",
            f"--repulse.bad_threshold {eta:g} is outside the range of rewards seen in training "
            f"[{lo:g}, {hi:g}]: the sampled P(bad) metrics were {'0' if eta <= lo else '1'} throughout; "
            "check the threshold against the reward model's scale.",
        )


@releases_output_dirs
def run(cfg: RLConfig, backend: RoleBackend | None = None) -> int:
    """The RL run. ``backend`` builds the roles: in this process (default) or as Ray actor groups."""
    from repulse.data.prompts import PromptDataset
    from repulse.models.loading import load_tokenizer
    from repulse.trainers.common import load_split

    if backend is None:
        if cfg.launch.backend != "local":
            raise UserError(
                f"--launch.backend {cfg.launch.backend}: start the run with the `repulse rl` command, "
                "which places the roles on the cluster."
            )
        backend = LocalBackend()
    run_ = start_run(cfg)
    world = run_.world_size
    # the data-parallel width of the trained roles: the torchrun world, or the Ray groups' width
    shards_total = backend.data_parallel(cfg, world)
    r = cfg.rollout
    if r.batch_size % shards_total:
        raise UserError(
            f"--rollout.batch_size {r.batch_size} must be a multiple of the number of data-parallel "
            f"processes ({shards_total})."
        )
    local_prompts = r.batch_size // world
    spec = METHODS[cfg.repulse.method]
    accum, updates_per_step = spec.geometry(cfg, r.batch_size // shards_total, shards_total)
    tok = load_tokenizer(
        cfg.actor.model_name_or_path, chat_template=cfg.data.tokenizer_chat_template, padding_side="left"
    )
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
    roles = backend.build(cfg, spec.roles(cfg), run_.device, total * updates_per_step, accum, tok)
    roles.shards = shards_total // world
    if world > 1:
        # Models (and fresh value heads) were initialised from the shared seed; sampling must
        # not be: with one random stream per rank, ranks would draw identical samples.
        torch.manual_seed(cfg.train.seed + 1_000_003 * run_.rank)
    sink = negdata_sink(cfg, run_.rank)
    method = spec.build(cfg, roles, accum, updates_per_step, sink)
    guard = FiniteGuard.from_config(cfg.train)
    for role in roles.trained().values():
        role.guard = guard
    actors = [a for a in (roles.policy, roles.proposal) if a is not None]
    out_dir = Path(cfg.ckpt.output_dir)
    ckpts = Checkpoints(
        Path(cfg.ckpt.path or out_dir / "checkpoints"),
        cfg.ckpt.max_num,
        run_.rank,
        save_hf=cfg.ckpt.save_hf,
        tokenizer=roles.tokenizer,
        export=lambda role, directory, tokenizer: role.export_hf(directory, tokenizer),
    )
    start = 0
    if cfg.ckpt.load_enable and (latest := ckpts.latest()) is not None:
        state = ckpts.load(latest, roles.trained())
        start = int(state["step"])
        method.load_state_dict(state["method"])
        if run_.rank == 0:
            print(f"[repulse] resumed from {latest} at step {start}", flush=True)
    for actor in actors:
        actor.sync_rollout(start)

    def draw(step: int) -> Any:
        """The rollout of ``step``: its prompts (this process's share), sampled and scored."""
        episode, k = divmod(step, steps_per_episode)
        return method.rollout([prompts[i] for i in batcher.step_indices(episode, k)[0]])

    ahead = cfg.train.async_queue_size if cfg.train.async_enable else 0
    rollouts = AsyncRollouts(draw, ahead) if ahead > 0 else SyncRollouts(draw)
    from repulse.config.schema import to_dict

    log = MetricsLog(out_dir, cfg.logger, to_dict(cfg), run_.rank == 0, start)
    name = cfg.repulse.method if cfg.repulse.method != "rl" else cfg.algo.advantage.estimator
    bar = Progress(
        total, start, cfg.logger.progress_bar and run_.rank == 0, name, every=cfg.logger.logging_steps
    )
    toy_prompt = prompts[0]["prompt_ids"] if cfg.repulse.analytic_bad_word_calc else None
    seen = (math.inf, -math.inf)  # the range of the policy's sampled rewards, for the η check
    # as the offline loop: evaluate before the first step and every --eval.steps (<= 0: every episode)
    eval_every = cfg.eval.steps if cfg.eval.steps > 0 else steps_per_episode
    if start == 0:
        before: dict[str, Any] = {}
        if toy_prompt is not None:
            before.update(exact_eval(cfg, roles, toy_prompt))
        if eval_prompts is not None:
            before.update(mean_over_ranks(roles.comm, evaluate(cfg, roles, eval_prompts)))
        if before:
            log.log(0, before)
    try:
        rollouts.start(start, total)
        for step in range(start, total):
            t0 = time.perf_counter()
            rollout = rollouts.get(step)
            t_wait = time.perf_counter() - t0
            metrics = method.train(rollout, step)
            if ahead > 0:
                metrics.update(check_staleness(step, rollout, ahead), time_rollout_wait=t_wait)
            done = step + 1
            rollouts.before_sync()
            t_sync = time.perf_counter()
            for actor in actors:
                actor.sync_rollout(done)
            metrics["time_sync"] = time.perf_counter() - t_sync
            rollouts.after_sync(done)
            dt = time.perf_counter() - t0
            metrics["samples_per_s"] = metrics.pop("samples") * world / dt
            metrics["time_step"] = dt
            # reward-model inputs cut to fit so far; the mean over ranks below makes it their sum
            metrics["reward_truncated"] = world * getattr(roles.rewards, "truncated_count", 0)
            metrics = guard.after_step(mean_over_ranks(roles.comm, metrics), done)
            if "reward_min" in metrics:
                seen = (min(seen[0], metrics["reward_min"]), max(seen[1], metrics["reward_max"]))
            boundary = toy_prompt is not None and (done % per_fit == 0 or done == total)
            if boundary:
                metrics.update(exact_eval(cfg, roles, toy_prompt))
            evaluated = eval_prompts is not None and (done % eval_every == 0 or done == total)
            if evaluated:
                metrics.update(mean_over_ranks(roles.comm, evaluate(cfg, roles, eval_prompts)))
            if boundary or evaluated or done % max(1, cfg.logger.logging_steps) == 0 or done == total:
                log.log(done, metrics)
            bar.update(done, {"reward": metrics.get("reward", math.nan)})
            if cfg.ckpt.save_steps > 0 and done % cfg.ckpt.save_steps == 0 and done < total:
                ckpts.save(done, roles.trained(), {"method": method.state_dict()})
    except NonFiniteError as exc:
        raise exc.at_step(step + 1) from None
    finally:
        rollouts.close()
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


def check_staleness(step: int, rollout: Any, bound: int) -> dict[str, float]:
    """The weight versions that drew ``rollout``, checked against the asynchronous bound k:
    0 <= step - version <= k for every sample (the pipeline guarantees it; a violation is a bug)."""
    lag = staleness(step, rollout)
    if lag is None:
        raise RuntimeError(
            "asynchronous training needs the weight version of every sample (Samples.versions)"
        )
    if int(lag.min()) < 0 or int(lag.max()) > bound:
        raise RuntimeError(
            f"step {step} trains on samples drawn by weight versions {sorted(set((step - lag).tolist()))}: "
            f"staleness must stay within 0..{bound} (--train.async_queue_size)"
        )
    return {"staleness_max": float(lag.max()), "staleness_mean": float(lag.float().mean())}
