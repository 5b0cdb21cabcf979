"""Finding weights that are not finite numbers, on one process or agreed by all of them.

Engines call these before every export (and ``repulse.run.checkpoints`` before every
checkpoint), so that no NaN or infinity is ever written to disk: a sharded engine checks
its own shards and the processes agree on the first offending name, so every process
takes the same decision (none is left waiting in a collective).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from repulse.engine import dist as rdist


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This process's part of ``t``: a DTensor's local shard, a ZeRO-3 partition, else ``t``."""
    if hasattr(t, "to_local"):
        return t.to_local()
    partition = getattr(t, "ds_tensor", None)
    return partition if partition is not None else t


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """``"<name> holds k NaN/infinite values (of n)"`` for the first floating tensor that is not
    all finite, or None. Integer tensors are always finite."""
    for name, t in named:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            continue
        local = local_tensor(t).detach()
        if local.numel() == 0:
            continue
        finite = torch.isfinite(local)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            return f"{name} holds {bad} NaN/infinite value(s) (of {local.numel()})"
    return None


def agreed(local: str | None) -> str | None:
    """The first non-None of every process's ``local`` (rank order); collective under a launcher."""
    if rdist.get_world_size() == 1:
        return local
    import torch.distributed as dist

    found: list[str | None] = [None] * rdist.get_world_size()
    dist.all_gather_object(found, local)
    return next((f for f in found if f is not None), None)


def module_nonfinite(module: torch.nn.Module) -> str | None:
    """The first non-finite parameter or buffer of ``module``, agreed by every process (collective)."""
    named = list(module.named_parameters()) + list(module.named_buffers())
    return agreed(first_nonfinite(named))


def export_nonfinite(state: dict[str, torch.Tensor] | None) -> str | None:
    """The first non-finite tensor of a gathered state dict (held by rank 0), told to every process."""
    local = first_nonfinite(state.items()) if rdist.is_main() and state else None
    return rdist.broadcast_object(local)
