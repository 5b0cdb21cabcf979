"""Where each step's rollout comes from: drawn when the step starts, or drawn ahead (asynchronous).

The loop asks ``rollouts.get(step)`` for the rollout step ``step`` trains on, and around every
weight sync calls ``before_sync()`` and ``after_sync(version)``. Two modes, one interface:

* ``SyncRollouts`` (k = 0): the rollout of step t is drawn when step t starts, with the weights
  of version t (every sample is on-policy).
* ``AsyncRollouts`` (k ≥ 1): rollouts are drawn by one background thread, in step order, while
  the loop trains. The rollout of step s is started only after the sync that brought the rollout
  engines to version max(start, s − k) has finished, and every sync waits until the rollouts
  started before it have finished drawing. So the rollout of step s is drawn with exactly
  version max(start, s − k): a sample trained at step s is at most k updates old, and which
  version drew which rollout does not depend on timing. The rollout engines must hold weights of
  their own (Ray actors), since training runs while they sample.

``staleness`` checks the recorded weight version of every sample against the bound.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch


def staleness(step: int, rollout: Any) -> torch.Tensor | None:
    """Per sample: the optimizer step that trains on it minus the weight version that drew it."""
    versions = getattr(getattr(rollout, "samples", None), "versions", None)
    if versions is None:
        return None
    return step - versions.long()


class SyncRollouts:
    """k = 0: draw the rollout of a step when the step starts."""

    queue_size = 0

    def __init__(self, draw: Callable[[int], Any]):
        self.draw = draw

    def start(self, first: int, total: int) -> None:
        pass

    def get(self, step: int) -> Any:
        return self.draw(step)

    def before_sync(self) -> None:
        pass

    def after_sync(self, version: int) -> None:
        pass

    def close(self) -> None:
        pass


class AsyncRollouts:
    """k ≥ 1: the rollouts of steps t+1..t+k are drawn while step t trains (see the module doc)."""

    def __init__(self, draw: Callable[[int], Any], queue_size: int):
        if queue_size < 1:
            raise ValueError("AsyncRollouts needs queue_size >= 1; use SyncRollouts for 0")
        self.draw, self.queue_size = draw, queue_size
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollouts")
        self._pending: dict[int, Future] = {}
        self._next = 0
        self._total = 0

    def _submit_through(self, last: int) -> None:
        while self._next <= min(last, self._total - 1):
            self._pending[self._next] = self._pool.submit(self.draw, self._next)
            self._next += 1

    def start(self, first: int, total: int) -> None:
        """After the first sync (version ``first``): draw steps first..first+k with it."""
        self._next, self._total = first, total
        self._submit_through(first + self.queue_size)

    def get(self, step: int) -> Any:
        if step not in self._pending:
            raise RuntimeError(f"the rollout of step {step} was never started (next: {self._next})")
        return self._pending.pop(step).result()

    def before_sync(self) -> None:
        """Let every rollout already started finish drawing, so none of them sees the new weights."""
        for future in list(self._pending.values()):
            future.exception()  # waits; an error surfaces when the loop reaches that step

    def after_sync(self, version: int) -> None:
        """Weights of ``version`` are in the engines: start the step that may use them (version + k)."""
        self._submit_through(version + self.queue_size)

    def close(self) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
