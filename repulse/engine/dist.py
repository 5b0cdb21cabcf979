"""Process-group helpers: one place that knows whether we run on one process or many.

Launchers (``torchrun``, the ``deepspeed`` launcher, Ray actors) describe the job in
the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR/PORT``).
:func:`init_distributed` reads it once; every other helper here degrades to a no-op
when there is a single process and no process group, so code calls them
unconditionally.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

_STATE: dict[str, Any] = {}

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def backend_for(device: torch.device) -> str:
    """nccl for CUDA tensors, gloo for CPU (the only two we support)."""
    return "nccl" if device.type == "cuda" else "gloo"


def default_device(local_rank: int = 0) -> torch.device:
    """The accelerator of this process: ``cuda:<local_rank>`` when CUDA exists, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(timeout_s: float = 1800.0) -> tuple[int, int, int, torch.device]:
    """Join the job's process group if the launcher started several processes.

    Returns ``(rank, world_size, local_rank, device)``. Idempotent: a second call
    returns the same values. With ``WORLD_SIZE`` unset or 1 nothing is initialised
    (single process); the fsdp/deepspeed engines then create a private one-process
    group themselves (:func:`ensure_process_group`).
    """
    if "init" in _STATE:
        return _STATE["init"]
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = default_device(local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        kwargs: dict[str, Any] = {"timeout": datetime.timedelta(seconds=timeout_s)}
        if device.type == "cuda":
            kwargs["device_id"] = device
        dist.init_process_group(backend_for(device), **kwargs)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    _STATE["init"] = (rank, world, local_rank, device)
    return _STATE["init"]


def ensure_process_group(device: torch.device) -> None:
    """Make sure a process group exists, creating a one-process group if needed.

    FSDP2 and DeepSpeed need a process group even on one process; an in-memory
    ``HashStore`` avoids picking a TCP port.
    """
    if dist.is_initialized():
        return
    if _env_int("WORLD_SIZE", 1) > 1:
        init_distributed()
        return
    dist.init_process_group(backend_for(device), store=dist.HashStore(), rank=0, world_size=1)
    _STATE["own_group"] = True


def get_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """True on global rank 0 (and on a single process): the rank that writes shared files."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every process (no-op on one process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl" and torch.cuda.is_available():
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce of ``tensor`` over all processes; returns it.

    ``op`` is ``"sum" | "mean" | "max" | "min"``. ``mean`` is a sum divided by the world
    size because gloo has no AVG.
    """
    if op not in (*_OPS, "mean"):
        raise ValueError(f"unknown reduce op {op!r}; use sum, mean, max or min")
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    dist.all_reduce(tensor, op=_OPS["sum" if op == "mean" else op])
    if op == "mean":
        tensor.div_(dist.get_world_size())
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled; for small things like paths and dicts)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def destroy() -> None:
    """Tear down the process group (at the end of a run; safe to call when there is none)."""
    if dist.is_initialized():
        dist.destroy_process_group()
    _STATE.clear()
