"""The policy's weights into rollout engines in other actors: one torch.distributed group per
trained role, its rank 0 the role's rank 0, ranks 1..E the engines.

The group is a ``ProcessGroupGloo`` (CPU tensors; ``ProcessGroupNCCL`` for CUDA tensors with
``--vllm.sync_backend nccl``) of its own, built from a ``TCPStore`` at the sender's address, so
it does not disturb the role's or the engines' own worlds. An update is a header (version,
number of tensors), then buckets: a manifest (name, dtype, shape of each tensor, as JSON bytes)
and one flat byte buffer per bucket of at most ``bucket_mb``, so what arrives is bitwise what
was sent. Every collective waits at most ``timeout_s``; a peer that died raises
``WeightSyncError`` naming the group instead of hanging.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist

from repulse.rl.rollout import RolloutEngine

_DTYPES = {
    str(d): d
    for d in (
        torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
        torch.int16, torch.int8, torch.uint8, torch.bool,
    )
}  # fmt: skip


class WeightSyncError(RuntimeError):
    """A weight update did not reach every engine: a peer died or did not answer in time."""


def _open(address: str, rank: int, size: int, backend: str, timeout_s: float, name: str) -> Any:
    host, _, port = address.rpartition(":")
    limit = datetime.timedelta(seconds=timeout_s)
    try:
        store = dist.TCPStore(host, int(port), size, rank == 0, timeout=limit, wait_for_workers=False)
        store = dist.PrefixStore(name, store)
        if backend == "nccl":
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = limit
            return dist.ProcessGroupNCCL(store, rank, size, opts)
        return dist.ProcessGroupGloo(store, rank, size, limit)
    except RuntimeError as exc:
        raise WeightSyncError(
            f"weight sync group '{name}' at {address}: rank {rank} of {size} could not join within "
            f"{timeout_s:g} s ({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
        ) from exc


class _Channel:
    def __init__(self, pg: Any, name: str, size: int, device: torch.device, timeout_s: float):
        self.pg, self.name, self.size, self.device = pg, name, size, device
        self.limit = datetime.timedelta(seconds=timeout_s)

    def broadcast(self, tensor: torch.Tensor, what: str) -> None:
        started = time.monotonic()
        try:
            opts = dist.BroadcastOptions()
            opts.rootRank, opts.rootTensor, opts.timeout = 0, 0, self.limit
            self.pg.broadcast([tensor], opts).wait(self.limit)
        except RuntimeError as exc:
            raise WeightSyncError(
                f"weight sync group '{self.name}' ({self.size} members): {what} failed after "
                f"{time.monotonic() - started:.1f} s - a member exited or did not answer within "
                f"{self.limit.total_seconds():g} s"
            ) from exc


def _buckets(
    named: Iterable[tuple[str, torch.Tensor]], limit: int
) -> Iterable[list[tuple[str, torch.Tensor]]]:
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, t in named:
        nbytes = t.numel() * t.element_size()
        if bucket and size + nbytes > limit:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, t.detach()))
        size += nbytes
    if bucket:
        yield bucket


def _device(backend: str) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


class WeightSender:
    """The trained role's rank 0: pushes its full weights to every engine of the group."""

    def __init__(
        self, address: str, size: int, backend: str, timeout_s: float, name: str, bucket_mb: float = 64
    ):
        backend = backend if backend == "nccl" and torch.cuda.is_available() else "gloo"
        self.device = _device(backend)
        self.channel = _Channel(
            _open(address, 0, size, backend, timeout_s, name), name, size, self.device, timeout_s
        )
        self.bucket_bytes = max(1, int(bucket_mb * (1 << 20)))

    def push(self, named: dict[str, torch.Tensor], version: int) -> int:
        """Send one update; returns the bytes sent."""
        sent = 0
        header = torch.tensor([version, len(named)], dtype=torch.int64, device=self.device)
        self.channel.broadcast(header, f"the start of update {version}")
        for bucket in _buckets(named.items(), self.bucket_bytes):
            manifest = json.dumps([[n, str(t.dtype), list(t.shape)] for n, t in bucket]).encode()
            data = torch.cat([t.contiguous().reshape(-1).view(torch.uint8) for _, t in bucket]).to(
                self.device
            )
            meta = torch.frombuffer(bytearray(manifest), dtype=torch.uint8).to(self.device)
            sizes = torch.tensor([meta.numel(), data.numel()], dtype=torch.int64, device=self.device)
            self.channel.broadcast(sizes, f"a bucket header of update {version}")
            self.channel.broadcast(meta, f"a bucket manifest of update {version}")
            self.channel.broadcast(data, f"a bucket of update {version}")
            sent += data.numel()
        return sent


class WeightReceiver:
    """A rollout engine's end: loads every update into ``engine`` (``begin_update``/``load``/``end_update``)."""

    def __init__(
        self,
        engine: RolloutEngine,
        address: str,
        rank: int,
        size: int,
        backend: str,
        timeout_s: float,
        name: str,
    ):
        backend = backend if backend == "nccl" and torch.cuda.is_available() else "gloo"
        self.engine, self.device = engine, _device(backend)
        self.channel = _Channel(
            _open(address, rank, size, backend, timeout_s, name), name, size, self.device, timeout_s
        )

    def receive(self) -> int:
        """Load one update; returns its version."""
        header = torch.zeros(2, dtype=torch.int64, device=self.device)
        self.channel.broadcast(header, "waiting for an update")
        version, count = (int(v) for v in header.tolist())
        self.engine.begin_update()
        got = 0
        while got < count:
            sizes = torch.zeros(2, dtype=torch.int64, device=self.device)
            self.channel.broadcast(sizes, f"a bucket header of update {version}")
            meta = torch.empty(int(sizes[0]), dtype=torch.uint8, device=self.device)
            data = torch.empty(int(sizes[1]), dtype=torch.uint8, device=self.device)
            self.channel.broadcast(meta, f"a bucket manifest of update {version}")
            self.channel.broadcast(data, f"a bucket of update {version}")
            offset, tensors = 0, []
            for name, dtype_name, shape in json.loads(meta.cpu().numpy().tobytes().decode()):
                dtype = _DTYPES[dtype_name]
                numel = 1
                for s in shape:
                    numel *= s
                nbytes = numel * torch.empty(0, dtype=dtype).element_size()
                tensors.append((name, data[offset : offset + nbytes].clone().view(dtype).reshape(shape)))
                offset += nbytes
            self.engine.load(tensors)
            got += len(tensors)
        self.engine.end_update(version)
        return version
