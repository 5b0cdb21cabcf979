"""The one training loop.

``fit`` owns epochs, micro-batching and accumulation, the scheduler, logging,
evaluation and checkpoint cadence, and resume. A method only says how to turn a
micro-batch into a loss (``Method.loss``) and how many units (tokens, pairs, ...)
that micro-batch contributes to the step's denominator (``Method.units``).

Why units: the loss of a step is Σ(loss over all units of all micro-batches on all
ranks) / (number of those units). Each micro-batch's backward receives its own sum
divided by that global count, so the gradient is the same for any split into
micro-batches and processes (engines sum gradients; see ``repulse.engine.base``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from repulse.data.collate import MicroBatcher
from repulse.data.loader import step_batches
from repulse.errors import NonFiniteError, UserError
from repulse.run.checkpoints import Checkpoints
from repulse.run.finite import FiniteGuard
from repulse.run.metrics import MetricsLog
from repulse.run.progress import Progress


@dataclass
class MicroResult:
    """What a method returns for one micro-batch.

    ``loss_sum`` carries the gradient and is a *sum* over the micro-batch's units;
    ``stats`` maps a metric name to ``(sum, count)``, averaged globally as Σsum/Σcount.
    """

    loss_sum: torch.Tensor | dict[str, torch.Tensor]
    stats: dict[str, tuple[Any, Any]] = field(default_factory=dict)


class Method(Protocol):
    def units(self, batch: dict) -> float: ...
    def loss(self, batch: dict) -> MicroResult: ...


def batch_tokens(batch: dict) -> int:
    """Non-padding tokens in a (padded or packed) batch; used for tokens/s."""
    for key in ("attention_mask", "chosen_attention_mask"):
        if key in batch and batch[key] is not None and batch[key].dim() == 2:
            return int(batch[key].sum())
    ids = batch.get("input_ids")
    return int(ids.numel()) if ids is not None else 0


def _reduce_stats(engine, sums: dict[str, float], counts: dict[str, float]) -> dict[str, float]:
    keys = sorted(sums)
    if not keys:
        return {}
    packed = torch.tensor([sums[k] for k in keys] + [counts[k] for k in keys], dtype=torch.float64)
    packed = engine.all_reduce(packed.to(engine.device), "sum").cpu()
    n = len(keys)
    return {
        k: (packed[i] / packed[n + i]).item() if packed[n + i] > 0 else float("nan")
        for i, k in enumerate(keys)
    }


def run_micro_batches(
    engine,
    method: Method,
    micro_batches: Sequence[dict],
    train: bool,
    counted: Sequence[bool] | None = None,
    guard: FiniteGuard | None = None,
) -> dict[str, float]:
    """Forward (and backward) every micro-batch of one step; return globally averaged stats.

    Shared by the offline loop and the RL updates, so there is one implementation of
    accumulation and of the loss normalisation. ``engine`` may be a mapping of named
    engines when one forward trains several models (RePULSe's p and q); the method then
    returns one loss per name and each is backpropagated into its own engine.
    ``counted[i]`` False (evaluation only): micro-batch i is run - so that every process
    runs as many forwards as the others - but its loss and stats are dropped.

    Non-finite losses (training): a micro-batch whose loss is NaN or infinite is still
    backpropagated - sharded engines need every process in every backward - but multiplied
    by NaN, so its engine's ``step()`` sees a NaN gradient norm and drops the update (even an
    infinite constant, whose gradient would be finite, cannot slip through). Once the flags of
    all processes are combined, ``guard.check_loss`` raises (``--train.nan_policy stop``; also
    without a guard) or marks the step ``nonfinite_loss`` (``skip``).
    """
    engines = engine if isinstance(engine, dict) else {"": engine}
    first = next(iter(engines.values()))
    counted = list(counted) if counted is not None else [True] * len(micro_batches)
    if train and not all(counted):
        raise ValueError("every training micro-batch counts")
    local_units = float(sum(method.units(mb) for mb, c in zip(micro_batches, counted) if c))
    total = first.all_reduce(torch.tensor([local_units], dtype=torch.float64, device=first.device), "sum")
    total_units = max(float(total.item()), 1e-12)
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}

    def add(key: str, s: float, c: float) -> None:
        sums[key] = sums.get(key, 0.0) + s
        counts[key] = counts.get(key, 0.0) + c

    nonfinite = 0.0
    for mb, keep in zip(micro_batches, counted):
        units = float(method.units(mb))
        with torch.set_grad_enabled(train):
            res = method.loss(mb)
        if not keep:
            continue
        losses = res.loss_sum if isinstance(res.loss_sum, dict) else {"": res.loss_sum}
        for name, loss in losses.items():
            value = float(loss.detach().float())
            if train:
                if not math.isfinite(value):
                    nonfinite, loss = 1.0, loss * math.nan
                engines[name].backward(loss / total_units)
            add(f"loss_{name}" if name else "loss", value, units)
        for k, (s, c) in res.stats.items():
            add(k, float(s), float(c))
    if train:
        add(_NONFINITE_FLAG, nonfinite, 1.0)  # reduced with the stats: no extra collective
    stats = _reduce_stats(first, sums, counts)
    if train and stats.pop(_NONFINITE_FLAG) > 0:
        (guard or FiniteGuard()).check_loss(stats)
    return stats


_NONFINITE_FLAG = "__nonfinite_loss"


def check_batching(batch_size: int, micro: int, world: int, n_samples: int) -> int:
    """Validate the batch flags; return gradient-accumulation steps."""
    if batch_size <= 0 or micro <= 0:
        raise UserError("--train.batch_size and --train.micro_batch_size must be positive.")
    if batch_size % (micro * world):
        raise UserError(
            f"--train.batch_size {batch_size} must be a multiple of --train.micro_batch_size {micro} "
            f"x {world} process(es) = {micro * world}."
        )
    if n_samples < batch_size:
        raise UserError(
            f"the training set has {n_samples} samples, fewer than one global batch "
            f"(--train.batch_size {batch_size}); lower the batch size or add data."
        )
    return batch_size // (micro * world)


@dataclass
class FitSpec:
    """Everything the loop needs besides the method and the engine."""

    train_set: Sequence[Any]
    collate: Callable[[list[Any]], dict]
    batch_size: int
    micro_batch_size: int
    max_epochs: int
    max_steps: int
    seed: int
    output_dir: Path
    ckpt_dir: Path
    save_steps: int
    max_ckpt: int
    resume: bool
    logging_steps: int
    eval_steps: int
    logger_cfg: Any
    run_config: dict
    eval_set: Sequence[Any] | None = None
    progress: bool = True
    name: str = "train"
    num_workers: int = 0  # processes collating the next steps' micro-batches (--data.dataloader_num_workers)
    save_hf: bool = False  # an HF model beside each checkpoint (--ckpt.save_hf)
    tokenizer: Any = None  # saved with those HF models
    nan_policy: str = "stop"
    nan_max_consecutive_skips: int = 10


def total_steps(spec: FitSpec, world: int) -> int:
    steps_per_epoch = len(spec.train_set) // spec.batch_size
    total = steps_per_epoch * spec.max_epochs
    return min(total, spec.max_steps) if spec.max_steps > 0 else total


def evaluate(engine, method: Method, spec: FitSpec) -> dict[str, float]:
    """Average the method's loss and stats over the whole eval set, every item once (sharded by rank).

    Sharded engines (FSDP, ZeRO-3) gather weights in every forward, so every process must run
    the same number of them: a process whose shard is shorter runs a copy of item 0 in its
    place and drops the result.
    """
    assert spec.eval_set is not None
    engine.eval()
    idx = list(range(engine.rank, len(spec.eval_set), engine.world_size))
    per_rank = -(-len(spec.eval_set) // engine.world_size)
    padded = idx + [0] * (per_rank - len(idx))
    mbs, counted = [], []
    for j in range(0, len(padded), spec.micro_batch_size):
        chunk = padded[j : j + spec.micro_batch_size]
        real = [i for k, i in enumerate(chunk) if j + k < len(idx)]
        mbs.append(spec.collate([spec.eval_set[i] for i in (real or chunk)]))
        counted.append(bool(real))
    stats = run_micro_batches(engine, method, mbs, train=False, counted=counted)
    engine.train()
    return stats


def fit(
    engine, method: Method, spec: FitSpec, extra_engines: dict[str, Any] | None = None
) -> dict[str, float]:
    """Train ``engine`` with ``method`` over ``spec``; returns the last logged metrics."""
    rank, world = engine.rank, engine.world_size
    check_batching(spec.batch_size, spec.micro_batch_size, world, len(spec.train_set))
    batcher = MicroBatcher(
        len(spec.train_set), spec.micro_batch_size, spec.batch_size, True, spec.seed, rank, world
    )
    steps_per_epoch = batcher.steps_per_epoch
    n_total = total_steps(spec, world)
    engines = {"model": engine, **(extra_engines or {})}
    ckpts = Checkpoints(spec.ckpt_dir, spec.max_ckpt, rank, spec.save_hf, spec.tokenizer)
    start = 0
    if spec.resume:
        latest = ckpts.latest()
        if latest is not None:
            state = ckpts.load(latest, engines)
            start = int(state["step"])
            if rank == 0:
                print(f"[repulse] resumed from {latest} at step {start}", flush=True)
    log = MetricsLog(spec.output_dir, spec.logger_cfg, spec.run_config, rank == 0, start)
    bar = Progress(n_total, start, spec.progress and rank == 0, spec.name, every=spec.logging_steps)
    eval_every = spec.eval_steps if spec.eval_steps > 0 else steps_per_epoch
    last: dict[str, float] = {}
    guard = FiniteGuard(spec.nan_policy, spec.nan_max_consecutive_skips)
    engine.train()
    if spec.eval_set is not None and start == 0:
        log.log(0, evaluate(engine, method, spec), prefix="eval_")
    step = start
    steps = range(start, n_total)
    batches = step_batches(spec.train_set, spec.collate, batcher, steps, spec.num_workers)
    try:
        for step in steps:
            epoch, in_epoch = divmod(step, steps_per_epoch)
            t0 = time.perf_counter()
            mbs = next(batches)
            tokens = sum(batch_tokens(mb) for mb in mbs)
            stats = run_micro_batches(engine, method, mbs, train=True, guard=guard)
            stats.update(engine.step())
            try:
                guard.after_step(stats, step + 1)
            except NonFiniteError:
                log.log(step + 1, stats)  # the failing step's numbers stay on record
                raise
            tok = engine.all_reduce(
                torch.tensor([float(tokens)], dtype=torch.float64, device=engine.device), "sum"
            )
            elapsed = time.perf_counter() - t0
            done = step + 1
            stats.update(
                epoch=epoch + (in_epoch + 1) / steps_per_epoch, tokens_per_s=float(tok.item()) / elapsed
            )
            last = stats
            if done % spec.logging_steps == 0 or done == n_total:
                log.log(done, stats)
            bar.update(
                done, {"loss": stats["loss"], "lr": stats.get("lr", math.nan), "tok/s": stats["tokens_per_s"]}
            )
            if spec.eval_set is not None and (done % eval_every == 0 or done == n_total):
                log.log(done, evaluate(engine, method, spec), prefix="eval_")
            if spec.save_steps > 0 and done % spec.save_steps == 0 and done < n_total:
                ckpts.save(done, engines, {"epoch": epoch})
    except NonFiniteError as exc:
        raise exc.at_step(step + 1) from None
    finally:
        batches.close()
        bar.close()
        log.close()
    return last
