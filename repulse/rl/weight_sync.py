"""Weight sync: the trained policy's weights into rollout engines, in buckets, with timeouts.

One module, two transports, chosen by where the engines live (``make_weight_sync``):

- ``local`` — the engine is in this process (colocated; every rank under torchrun holds one).
  Buckets go straight to ``engine.load``. When only rank 0 holds the full weights (FSDP2 and
  ZeRO-3 gather them there), rank 0 broadcasts the buckets over the trainer's own group and
  every rank loads them into its engine.
- ``group`` — the engines are in other processes (e.g. Ray actors): a torch.distributed group
  of its own (a ``TCPStore`` at ``host:port``; gloo for CPU tensors, NCCL for CUDA ones) with
  the sender at rank 0 and one ``GroupWeightReceiver`` per engine process.

Every update is ``engine.begin_update()``, one ``engine.load(bucket)`` per bucket of at most
``bucket_mb`` (a larger tensor travels alone), ``engine.end_update(version)``; afterwards
``engine.weight_version == version`` (the policy's step). A name-mapping hook renames (or drops,
returning None) each trainer name on the way: HF checkpoint names are what both backends load,
so the default strips only wrapper prefixes (``module.``, ``_orig_mod.``, FSDP's). LoRA is merged
before sending: pass ``engine.state_for_rollout()`` (adapters folded into the base weights,
under the base model's names).

On the wire a bucket is one flat byte buffer (each tensor's bytes, any dtype) after a JSON
manifest, so what arrives is bitwise what was sent. Every collective has a timeout; after the
last bucket the receivers report whether their engine loaded the update. A peer that dies or
stops answering raises ``WeightSyncError`` naming the group, the step of the protocol and the
peers, within ``timeout_s`` — never a hang.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from repulse.rl.rollout.base import RolloutEngine

NamedTensors = Iterable[tuple[str, torch.Tensor]]
NameMap = Callable[[str], "str | None"]

_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")
_BEGIN, _BUCKET, _END, _STOP = 1, 2, 3, 4
_DTYPES = {
    str(d): d
    for d in (
        torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
        torch.int16, torch.int8, torch.uint8, torch.bool,
    )
}  # fmt: skip


class WeightSyncError(RuntimeError):
    """A weight update did not reach every engine: a peer died, timed out, or failed to load."""


def hf_name(name: str) -> str:
    """The default name map: a trainer parameter name → the HF checkpoint name engines load.

    Drops wrapper prefixes anywhere in the name (``module.`` of DDP, ``_orig_mod.`` of
    ``torch.compile``, FSDP/activation-checkpoint wrappers); the rest is the HF name already.
    """
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace("." + prefix, ".")
        while name.startswith(prefix):
            name = name[len(prefix) :]
    return name


@dataclass(frozen=True)
class SyncOptions:
    """``bucket_mb``: most bytes per bucket; ``timeout_s``: the limit on every collective;
    ``name_map``: trainer name → engine name (None drops the tensor)."""

    bucket_mb: float = 64.0
    timeout_s: float = 600.0
    name_map: NameMap = hf_name

    @property
    def bucket_bytes(self) -> int:
        return max(1, int(self.bucket_mb * (1 << 20)))


@dataclass
class SyncStats:
    """What one update moved: for logs and benchmarks."""

    version: int
    tensors: int = 0
    buckets: int = 0
    bytes: int = 0
    seconds: float = 0.0


def _items(named: NamedTensors | Mapping[str, torch.Tensor] | None) -> NamedTensors:
    if named is None:
        return ()
    return named.items() if isinstance(named, Mapping) else named


def bucketed(named: NamedTensors, bucket_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Consecutive (name, tensor) pairs in lists of at most ``bucket_bytes`` bytes each (a tensor
    larger than that alone), order kept (vLLM reloads a layer once all its tensors arrived)."""
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in named:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


def _mapped(named: NamedTensors, name_map: NameMap | None) -> NamedTensors:
    for name, tensor in named:
        new = name_map(name) if name_map is not None else name
        if new is not None:
            yield new, tensor.detach()


# ---------------------------------------------------------------------------- the channel


class _Channel:
    """Collectives with a timeout over one process group, errors naming the group and peers.

    ``pg`` None means the trainer's default group (``torch.distributed`` calls); otherwise a
    standalone ``ProcessGroupGloo``/``ProcessGroupNCCL`` whose methods are called directly.
    """

    def __init__(self, pg: Any, rank: int, size: int, device: torch.device, describe: str, timeout_s: float):
        self.pg, self.rank, self.size, self.device = pg, rank, size, device
        self.describe, self.timeout_s = describe, timeout_s

    def _timeout(self, timeout_s: float | None) -> datetime.timedelta:
        return datetime.timedelta(seconds=self.timeout_s if timeout_s is None else timeout_s)

    def _fail(
        self, what: str, started: float, limit: datetime.timedelta, exc: BaseException
    ) -> WeightSyncError:
        peers = [r for r in range(self.size) if r != self.rank]
        return WeightSyncError(
            f"weight sync: {what} failed on rank {self.rank} of {self.describe} after "
            f"{time.monotonic() - started:.1f} s: a peer (rank {', '.join(map(str, peers))}) exited or did not "
            f"answer within the {limit.total_seconds():g} s timeout. The update did not complete: an engine "
            "that began it keeps its weight_version and refuses to sample until a later update completes. "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r})"
        )

    def broadcast(self, tensor: torch.Tensor, src: int, what: str, timeout_s: float | None = None) -> None:
        limit, started = self._timeout(timeout_s), time.monotonic()
        try:
            if self.pg is None:
                work = dist.broadcast(tensor, src, async_op=True)
            else:
                opts = dist.BroadcastOptions()
                opts.rootRank, opts.rootTensor, opts.timeout = src, 0, limit
                work = self.pg.broadcast([tensor], opts)
            work.wait(limit)
        except RuntimeError as exc:  # gloo/NCCL errors (DistBackendError is one): a peer, not our code
            raise self._fail(what, started, limit, exc) from exc

    def all_gather_int(self, value: int, what: str) -> list[int]:
        """Every rank's ``value`` (an all-reduce of one-hot rows: only public options needed)."""
        limit, started = self._timeout(None), time.monotonic()
        row = torch.zeros(self.size, dtype=torch.int64, device=self.device)
        row[self.rank] = value
        try:
            if self.pg is None:
                work = dist.all_reduce(row, async_op=True)
            else:
                opts = dist.AllreduceOptions()
                opts.reduceOp, opts.timeout = dist.ReduceOp.SUM, limit
                work = self.pg.allreduce([row], opts)
            work.wait(limit)
        except RuntimeError as exc:
            raise self._fail(what, started, limit, exc) from exc
        return [int(v) for v in row.tolist()]


def _header(
    channel: _Channel, src: int, values: tuple[int, int, int] = (0, 0, 0), op: int = 0, **kw
) -> list[int]:
    t = torch.tensor([op, *values], dtype=torch.int64, device=channel.device)
    channel.broadcast(t, src, kw.pop("what", "header"), **kw)
    return [int(v) for v in t.tolist()]


def _pack(bucket: list[tuple[str, torch.Tensor]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(manifest bytes, data bytes) of one bucket; the data is each tensor's raw bytes in order."""
    manifest = [[name, str(t.dtype), list(t.shape)] for name, t in bucket]
    meta = torch.frombuffer(bytearray(json.dumps(manifest).encode()), dtype=torch.uint8).to(device)
    parts = [t.contiguous().reshape(-1).view(torch.uint8).to(device) for _, t in bucket]
    data = torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8, device=device)
    return meta, data


def _unpack(meta: torch.Tensor, data: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    out, offset = [], 0
    for name, dtype_name, shape in json.loads(meta.cpu().numpy().tobytes().decode()):
        dtype = _DTYPES[dtype_name]
        numel = 1
        for s in shape:
            numel *= s
        nbytes = numel * torch.empty(0, dtype=dtype).element_size()
        out.append((name, data[offset : offset + nbytes].view(dtype).reshape(shape)))
        offset += nbytes
    return out


def _send(
    channel: _Channel, named: NamedTensors, version: int, options: SyncOptions, local: RolloutEngine | None
) -> SyncStats:
    """Rank 0's side of one update: stream buckets to the receivers (and load ``local`` too)."""
    stats, started = SyncStats(version), time.monotonic()
    _header(channel, 0, op=_BEGIN, what="the start of an update")
    if local is not None:
        local.begin_update()
    for bucket in bucketed(_mapped(named, options.name_map), options.bucket_bytes):
        meta, data = _pack(bucket, channel.device)
        what = f"bucket {stats.buckets + 1}"
        _header(channel, 0, (meta.numel(), data.numel(), 0), op=_BUCKET, what=what + " (header)")
        channel.broadcast(meta, 0, what + " (manifest)")
        channel.broadcast(data, 0, what + f" ({data.numel()} bytes)")
        if local is not None:
            local.load(bucket)
        stats.buckets += 1
        stats.tensors += len(bucket)
        stats.bytes += data.numel()
    _header(channel, 0, (version, 0, 0), op=_END, what="the end of the update")
    error: BaseException | None = None
    if local is not None:
        try:
            local.end_update(version)
        except Exception as exc:  # still collect the others' answers, then raise
            error = exc
    status = channel.all_gather_int(0 if error else 1, "the receivers' acknowledgement")
    if error is not None:
        raise error
    failed = [r for r, ok in enumerate(status) if r != 0 and not ok]
    if failed:
        raise WeightSyncError(
            f"weight sync: the rollout engine(s) at rank {', '.join(map(str, failed))} of {channel.describe} "
            f"failed to load update {version} (their own error is in their log); the engines now hold "
            "different weights."
        )
    stats.seconds = time.monotonic() - started
    return stats


def _receive(channel: _Channel, engine: RolloutEngine, wait_s: float | None) -> SyncStats | None:
    """A receiver's side of one update; None when the sender said stop."""
    op = _header(channel, 0, what="waiting for the next update", timeout_s=wait_s)[0]
    if op == _STOP:
        return None
    if op != _BEGIN:
        raise WeightSyncError(
            f"weight sync: expected the start of an update on {channel.describe}, got op {op}"
        )
    stats, started = SyncStats(-1), time.monotonic()
    error: BaseException | None = None
    try:
        engine.begin_update()
    except Exception as exc:
        error = exc
    while True:
        op, a, b, _ = _header(channel, 0, what="the next bucket (header)")
        if op == _END:
            stats.version = a
            break
        meta = torch.empty(a, dtype=torch.uint8, device=channel.device)
        data = torch.empty(b, dtype=torch.uint8, device=channel.device)
        channel.broadcast(meta, 0, "a bucket (manifest)")
        channel.broadcast(data, 0, f"a bucket ({b} bytes)")
        bucket = _unpack(meta, data)
        stats.buckets += 1
        stats.tensors += len(bucket)
        stats.bytes += b
        if error is None:
            try:
                engine.load(bucket)
            except Exception as exc:  # keep receiving so the sender is not left waiting
                error = exc
    if error is None:
        try:
            engine.end_update(stats.version)
        except Exception as exc:
            error = exc
    channel.all_gather_int(0 if error else 1, "the receivers' acknowledgement")
    if error is not None:
        raise error
    stats.seconds = time.monotonic() - started
    return stats


# ---------------------------------------------------------------------------- transports


class LocalWeightSync:
    """The colocated transport: the engine lives in this process (one per rank under torchrun).

    ``push`` is collective under torchrun (every rank calls it with its own engine). If every rank
    holds the full weights (one process, DDP) each loads its own; if only rank 0 does (FSDP2,
    ZeRO-3: the others pass None or an empty mapping), rank 0 broadcasts the buckets over the
    trainer's group, with ``timeout_s`` on each collective.
    """

    transport = "local"

    def __init__(self, engine: RolloutEngine, options: SyncOptions | None = None):
        self.engine, self.options = engine, options or SyncOptions()

    def push(self, named: NamedTensors | Mapping[str, torch.Tensor] | None, version: int) -> SyncStats:
        items = list(_items(named))
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if world > 1:
            rank = dist.get_rank()
            device = (
                torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
            )
            channel = _Channel(
                None, rank, world, device or torch.device("cpu"),
                f"the trainer's process group ({dist.get_backend()}, {world} ranks)", self.options.timeout_s,
            )  # fmt: skip
            have = channel.all_gather_int(1 if items else 0, "checking which ranks hold the weights")
            if not all(have):
                if not have[0]:
                    raise WeightSyncError(
                        "weight sync: rank 0 holds no weights to send (the training engine's "
                        "state_for_rollout() returned nothing on rank 0)."
                    )
                if rank == 0:
                    return _send(channel, items, version, self.options, self.engine)
                got = _receive(channel, self.engine, None)
                if got is None or got.version != version:
                    raise WeightSyncError(
                        f"weight sync: rank {rank} expected update {version} from rank 0, "
                        f"got {got.version if got else 'a stop message'}: the ranks called push() out of step."
                    )
                return got
        stats, started = SyncStats(version), time.monotonic()
        self.engine.begin_update()
        for bucket in bucketed(_mapped(items, self.options.name_map), self.options.bucket_bytes):
            self.engine.load(bucket)
            stats.buckets += 1
            stats.tensors += len(bucket)
            stats.bytes += sum(t.numel() * t.element_size() for _, t in bucket)
        self.engine.end_update(version)
        stats.seconds = time.monotonic() - started
        return stats


def _backend_for(backend: str | None, device: torch.device) -> str:
    """NCCL moves CUDA tensors, gloo CPU ones: a CPU run uses gloo whatever was asked."""
    if device.type != "cuda":
        return "gloo"
    return backend or "nccl"


def _group(address: str, rank: int, size: int, backend: str, timeout_s: float, name: str) -> tuple[Any, str]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"weight sync address must be host:port, got {address!r}")
    limit = datetime.timedelta(seconds=timeout_s)
    describe = f"weight-sync group '{name}' ({backend} at {address}, {size} members)"
    started = time.monotonic()
    try:
        store = dist.TCPStore(host, int(port), size, rank == 0, timeout=limit, wait_for_workers=False)
        store = dist.PrefixStore(name, store)
        if backend == "nccl":
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = limit
            pg = dist.ProcessGroupNCCL(store, rank, size, opts)
        else:
            pg = dist.ProcessGroupGloo(store, rank, size, limit)
    except RuntimeError as exc:  # includes DistStoreError (store timeouts)
        raise WeightSyncError(
            f"weight sync: rank {rank} could not join {describe} within {timeout_s:g} s "
            f"({time.monotonic() - started:.1f} s): the other members did not all arrive "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r})"
        ) from exc
    return pg, describe


class GroupWeightSender:
    """The trainer's end of the ``group`` transport: rank 0 of a group of 1 + receivers.

    Building it blocks until every receiver joined (at most ``timeout_s``). ``push`` streams one
    update; ``close`` tells the receivers to stop serving.
    """

    transport = "group"

    def __init__(
        self,
        address: str,
        world_size: int,
        options: SyncOptions | None = None,
        device: torch.device | str = "cpu",
        backend: str | None = None,
        name: str = "repulse-weights",
    ):
        self.options = options or SyncOptions()
        device = torch.device(device)
        pg, describe = _group(
            address, 0, world_size, _backend_for(backend, device), self.options.timeout_s, name
        )
        self.channel = _Channel(pg, 0, world_size, device, describe, self.options.timeout_s)

    def push(self, named: NamedTensors | Mapping[str, torch.Tensor] | None, version: int) -> SyncStats:
        return _send(self.channel, _items(named), version, self.options, None)

    def close(self) -> None:
        _header(self.channel, 0, op=_STOP, what="the stop message")


class GroupWeightReceiver:
    """An engine process's end of the ``group`` transport (rank ``rank`` ≥ 1)."""

    def __init__(
        self,
        engine: RolloutEngine,
        address: str,
        rank: int,
        world_size: int,
        options: SyncOptions | None = None,
        device: torch.device | str = "cpu",
        backend: str | None = None,
        name: str = "repulse-weights",
    ):
        self.engine, self.options = engine, options or SyncOptions()
        device = torch.device(device)
        pg, describe = _group(
            address, rank, world_size, _backend_for(backend, device), self.options.timeout_s, name
        )
        self.channel = _Channel(pg, rank, world_size, device, describe, self.options.timeout_s)

    def receive(self, wait_s: float | None = None) -> int | None:
        """Load one update into the engine and return its version (None: the sender closed).
        ``wait_s`` bounds the wait for the update to start (default ``timeout_s``)."""
        stats = _receive(self.channel, self.engine, wait_s)
        return stats.version if stats is not None else None

    def serve(self, wait_s: float | None = None) -> int:
        """Receive updates until the sender closes; returns how many arrived."""
        count = 0
        while self.receive(wait_s) is not None:
            count += 1
        return count


def make_weight_sync(
    transport: str,
    *,
    engine: RolloutEngine | None = None,
    address: str | None = None,
    world_size: int | None = None,
    options: SyncOptions | None = None,
    device: torch.device | str = "cpu",
    backend: str | None = None,
) -> LocalWeightSync | GroupWeightSender:
    """The trainer's sync for ``transport``: ``local`` (an engine in this process) or ``group``
    (engines in other processes joining at ``address`` with ``world_size`` members in all)."""
    if transport == "local":
        if engine is None:
            raise ValueError("the local weight-sync transport needs the engine")
        return LocalWeightSync(engine, options)
    if transport == "group":
        if address is None or world_size is None:
            raise ValueError("the group weight-sync transport needs address and world_size")
        return GroupWeightSender(address, world_size, options, device, backend)
    raise ValueError(f"unknown weight-sync transport {transport!r}: local | group")
