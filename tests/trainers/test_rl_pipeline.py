"""Rollouts drawn ahead of training (``repulse.trainers.rl.pipeline``): which weight version draws
which step's rollout, in a real background thread, with the loop's order of calls."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
import torch

from repulse.trainers.rl.loop import check_staleness
from repulse.trainers.rl.pipeline import AsyncRollouts, SyncRollouts


@dataclass
class _Samples:
    versions: torch.Tensor


@dataclass
class _Rollout:
    samples: _Samples


def drive(rollouts, start: int, total: int, engine: dict, seen: dict) -> list[dict]:
    """The loop's calls: get, train (a short sleep), before_sync, the sync, after_sync."""
    out = []
    rollouts.start(start, total)
    for step in range(start, total):
        ro = rollouts.get(step)
        out.append(check_staleness(step, ro, getattr(rollouts, "queue_size", 0)))
        time.sleep(0.004)  # training; meanwhile the thread draws ahead
        rollouts.before_sync()
        engine["version"] = step + 1  # the sync
        rollouts.after_sync(step + 1)
    rollouts.close()
    return out


def drawer(engine: dict, seen: dict):
    def draw(step: int) -> _Rollout:
        time.sleep(0.003 * (step % 3))  # uneven rollouts
        seen[step] = engine["version"]  # the version the engine holds while it samples
        return _Rollout(_Samples(torch.full((4,), engine["version"])))

    return draw


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("start", [0, 5])
def test_step_s_is_drawn_with_version_s_minus_k_exactly(k, start):
    """The rollout of step s is drawn with weight version max(start, s - k) - no earlier (it waits
    for that sync) and no later (a sync waits for the rollouts started before it) - so the
    staleness the loop reads from the samples is min(s - start, k)."""
    engine = {"version": start}
    seen: dict[int, int] = {}
    stats = drive(AsyncRollouts(drawer(engine, seen), k), start, 12, engine, seen)
    assert seen == {s: max(start, s - k) for s in range(start, 12)}
    assert [m["staleness_max"] for m in stats] == [float(min(s - start, k)) for s in range(start, 12)]


def test_k0_draws_each_rollout_when_its_step_starts():
    engine = {"version": 0}
    seen: dict[int, int] = {}
    drive(SyncRollouts(drawer(engine, seen)), 0, 6, engine, seen)
    assert seen == {s: s for s in range(6)}


def test_a_failed_rollout_surfaces_at_its_step_and_staleness_beyond_k_is_refused():
    def draw(step: int) -> _Rollout:
        if step == 2:
            raise ValueError("engine gone")
        return _Rollout(_Samples(torch.zeros(2)))

    rollouts = AsyncRollouts(draw, 1)
    rollouts.start(0, 5)
    rollouts.get(0)
    rollouts.after_sync(1)
    rollouts.get(1)
    rollouts.before_sync()  # does not raise: the failure belongs to step 2
    rollouts.after_sync(2)
    with pytest.raises(ValueError, match="engine gone"):
        rollouts.get(2)
    rollouts.close()
    with pytest.raises(
        RuntimeError, match=r"drawn by weight versions \[0\]: staleness must stay within 0..1"
    ):
        check_staleness(2, _Rollout(_Samples(torch.zeros(3))), 1)
