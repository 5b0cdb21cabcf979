"""The micro-batches of each training step, built inline or ahead of time by worker processes.

The fit loop asks for the steps it will run, in order; each step is this process's list of
collated micro-batches (``MicroBatcher.step_indices`` then the method's collate: padding,
packing, shared-prompt layouts, 4-D masks). With ``--data.dataloader_num_workers`` N > 0 a
``torch.utils.data.DataLoader`` over the step numbers hands whole steps to N worker processes,
which build up to two steps each ahead of the model, so collation overlaps training. A step's
micro-batches do not depend on who builds them (the order comes from the seed and the epoch
alone, and collation is deterministic), so the losses are bit-identical for any N.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from repulse.data.collate import MicroBatcher
from repulse.errors import UserError

PREFETCH_STEPS = 2  # steps each worker builds ahead


class StepBatches:
    """Step number -> this process's collated micro-batches of that step (a map-style dataset)."""

    def __init__(
        self,
        dataset: Sequence[Any],
        collate: Callable[[list[Any]], dict],
        batcher: MicroBatcher,
        steps: range,
    ):
        self.dataset, self.collate, self.batcher, self.steps = dataset, collate, batcher, steps

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, k: int) -> list[dict]:
        epoch, in_epoch = divmod(self.steps[k], self.batcher.steps_per_epoch)
        return [
            self.collate([self.dataset[i] for i in idxs])
            for idxs in self.batcher.step_indices(epoch, in_epoch)
        ]


def _as_is(step: list[dict]) -> list[dict]:
    return step


def step_batches(
    dataset: Sequence[Any],
    collate: Callable[[list[Any]], dict],
    batcher: MicroBatcher,
    steps: range,
    num_workers: int = 0,
) -> Iterator[list[dict]]:
    """The micro-batches of each step of ``steps``, in order (see the module docstring).

    ``num_workers`` 0 builds each step in this process when it is needed. Close the returned
    generator (or exhaust it) to stop the workers early.
    """
    if num_workers < 0:
        raise UserError(f"--data.dataloader_num_workers must be >= 0, got {num_workers}.")
    source = StepBatches(dataset, collate, batcher, steps)
    if num_workers == 0:
        for k in range(len(source)):
            yield source[k]
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(
        source,  # type: ignore[arg-type]
        batch_size=None,  # each item is already a whole step
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_as_is,
        prefetch_factor=PREFETCH_STEPS,
    )
    it = iter(loader)
    try:
        yield from it
    finally:
        del it  # the iterator's finaliser stops the workers (also when the loop stops early)
