"""Batches: padding, packing, pair/KTO layouts, and deterministic sharded sampling.

Padded batch (``pad_collate``), right padding:
    ``input_ids [B, L]`` (pad_id), ``attention_mask [B, L]`` (1 = token), ``loss_mask [B, L]``
    (0 on padding), scalars of the items as ``[B]`` tensors (``label`` bool, ``margin`` float),
    other values (strings, None) as Python lists.
Packed batch (``pack_collate``), all samples in one row, no padding:
    ``input_ids [1, T]``, ``position_ids [1, T]`` restarting at 0 for every sample,
    ``loss_mask [1, T]`` with the first token of every sample forced to 0 (so nothing is
    trained to be predicted across a sample boundary), ``seq_lens [B]``; **no**
    ``attention_mask``. Scalars as in the padded batch.
PRM items (``step_positions``/``step_labels``) become dense per-token tensors in both layouts:
    ``step_mask [.., L] bool`` (True at placeholders) and ``step_labels [.., L]`` - long class
    indices (-100 elsewhere) when every label in the batch is hard, else float probabilities
    of the positive token (0.0 elsewhere; hard labels converted: class 0 -> 1.0, 1 -> 0.0).

Packing and attention (checked in ``tests/data/test_collate.py`` against transformers
5.23): with ``attention_mask=None`` and restarting ``position_ids``, transformers' mask
builder derives the block-diagonal causal mask itself (``find_packed_sequence_indices``) for
sdpa and eager, and flash-attention-2 derives ``cu_seqlens`` from the same position ids -
**but only when no KV cache is in play**: the forward must get ``use_cache=False`` (with
the default ``config.use_cache=True`` a Llama forward builds a ``DynamicCache`` even in
train mode and the packed samples silently attend to each other). Where a caller cannot
guarantee that, :func:`packed_attention_mask` gives an explicit 4-D additive block-diagonal
mask (eager/sdpa only; not for flash-attention-2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from repulse.errors import UserError

_STEP_KEYS = ("step_positions", "step_labels")


def _is_per_token(key: str) -> bool:
    return key == "loss_mask" or key.endswith("_mask")


def _scalar_tensor(values: list[Any]) -> torch.Tensor | list[Any]:
    if all(isinstance(v, bool) for v in values):
        return torch.tensor(values, dtype=torch.bool)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return torch.tensor(values, dtype=torch.long)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return torch.tensor(values, dtype=torch.float32)
    return list(values)


def _step_dense(
    items: Sequence[dict], lengths: list[int]
) -> tuple[list[list[bool]], list[list[float | int]], bool]:
    soft = any(isinstance(v, float) for it in items for v in it["step_labels"])
    fill: float | int = 0.0 if soft else -100
    masks, labels = [], []
    for it, n in zip(items, lengths):
        m = [False] * n
        lab: list[float | int] = [fill] * n
        for pos, v in zip(it["step_positions"], it["step_labels"]):
            m[pos] = True
            lab[pos] = (float(v) if isinstance(v, float) else 1.0 - float(v)) if soft else int(v)
        masks.append(m)
        labels.append(lab)
    return masks, labels, soft


def _other_keys(items: Sequence[dict], keys: Sequence[str] | None) -> list[str]:
    names = list(keys) if keys is not None else list(items[0].keys())
    return [k for k in names if k != "input_ids" and k not in _STEP_KEYS]


def pad_collate(
    items: Sequence[dict], pad_id: int | None = 0, keys: Sequence[str] | None = None
) -> dict[str, Any]:
    """Right-padded batch of items that have ``input_ids`` (see the module docstring)."""
    if not items:
        raise ValueError("pad_collate needs at least one item")
    pad = 0 if pad_id is None else int(pad_id)
    lengths = [len(it["input_ids"]) for it in items]
    width = max(lengths)
    b = len(items)
    ids = torch.full((b, width), pad, dtype=torch.long)
    attn = torch.zeros((b, width), dtype=torch.long)
    for i, it in enumerate(items):
        ids[i, : lengths[i]] = torch.as_tensor(it["input_ids"], dtype=torch.long)
        attn[i, : lengths[i]] = 1
    out: dict[str, Any] = {"input_ids": ids, "attention_mask": attn}
    for key in _other_keys(items, keys):
        values = [it[key] for it in items]
        if _is_per_token(key) and isinstance(values[0], list):
            t = torch.zeros((b, width), dtype=torch.long)
            for i, v in enumerate(values):
                t[i, : len(v)] = torch.as_tensor(v, dtype=torch.long)
            out[key] = t
        else:
            out[key] = _scalar_tensor(values)
    if "step_positions" in items[0] and (keys is None or "step_positions" in keys):
        masks, labels, soft = _step_dense(items, [width] * b)
        out["step_mask"] = torch.tensor(masks, dtype=torch.bool)
        out["step_labels"] = torch.tensor(labels, dtype=torch.float32 if soft else torch.long)
    return out


def pack_collate(
    items: Sequence[dict], pad_id: int | None = 0, keys: Sequence[str] | None = None
) -> dict[str, Any]:
    """All items in one row with restarting ``position_ids`` (see the module docstring).

    ``pad_id`` is accepted so that pad and pack collates are interchangeable; nothing is padded.
    """
    if not items:
        raise ValueError("pack_collate needs at least one item")
    lengths = [len(it["input_ids"]) for it in items]
    ids = torch.tensor([t for it in items for t in it["input_ids"]], dtype=torch.long)[None]
    pos = torch.cat([torch.arange(n, dtype=torch.long) for n in lengths])[None]
    out: dict[str, Any] = {
        "input_ids": ids,
        "position_ids": pos,
        "seq_lens": torch.tensor(lengths, dtype=torch.long),
    }
    starts = [0]
    for n in lengths[:-1]:
        starts.append(starts[-1] + n)
    for key in _other_keys(items, keys):
        values = [it[key] for it in items]
        if _is_per_token(key) and isinstance(values[0], list):
            t = torch.tensor([x for v in values for x in v], dtype=torch.long)[None]
            if key == "loss_mask":
                t[0, starts] = 0
            out[key] = t
        else:
            out[key] = _scalar_tensor(values)
    if "step_positions" in items[0] and (keys is None or "step_positions" in keys):
        masks, labels, soft = _step_dense(items, lengths)
        out["step_mask"] = torch.tensor([x for m in masks for x in m], dtype=torch.bool)[None]
        out["step_labels"] = torch.tensor(
            [x for lab in labels for x in lab], dtype=torch.float32 if soft else torch.long
        )[None]
    return out


def packed_attention_mask(
    seq_lens: torch.Tensor | Sequence[int], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A ``[1, 1, T, T]`` additive block-diagonal causal mask for a packed row (0 = attend).

    Pass it as ``attention_mask`` to eager/sdpa models when the forward cannot be run with
    ``use_cache=False``; give ``dtype`` = the model's compute dtype. O(T^2) memory.
    """
    lens = [int(n) for n in seq_lens]
    seg = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))
    t = int(sum(lens))
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    allowed = causal & (seg[:, None] == seg[None, :])
    mask = torch.zeros(t, t, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


# --------------------------------------------------------------------------- method layouts


def _collate(seqs: list[dict], pad_id: int | None, packing: bool) -> dict[str, Any]:
    return pack_collate(seqs, pad_id) if packing else pad_collate(seqs, pad_id)


def preference_collate(
    items: Sequence[dict], pad_id: int | None = 0, packing: bool = False
) -> dict[str, Any]:
    """One forward for a pair batch: rows 0..B-1 are chosen, rows B..2B-1 rejected.

    Returns the padded (``[2B, L]``) or packed (``[1, T]``, ``seq_lens [2B]``) batch of
    ``input_ids``/``loss_mask`` (+ ``attention_mask`` or ``position_ids``) and ``margin [B]``.
    """
    seqs = [{"input_ids": it["chosen_ids"], "loss_mask": it["chosen_mask"]} for it in items]
    seqs += [{"input_ids": it["rejected_ids"], "loss_mask": it["rejected_mask"]} for it in items]
    out = _collate(seqs, pad_id, packing)
    out["margin"] = torch.tensor([float(it.get("margin", 0.0)) for it in items], dtype=torch.float32)
    return out


def kto_collate(
    items: Sequence[dict], pad_id: int | None = 0, packing: bool = False, max_len: int | None = None
) -> dict[str, Any]:
    """KTO batch: the samples, plus a KL batch of mismatched pairs (keys prefixed ``kl_``).

    The KL batch pairs prompt i with the completion of sample (i+1) mod B, as KTO does to
    estimate the reference point from responses that do not answer their prompt. With B = 1
    the "mismatched" pair is the sample itself. ``max_len`` (optional) cuts the KL sequences.
    Main keys: ``input_ids``, ``loss_mask``, ``label [B] bool`` (+ ``attention_mask`` or
    ``position_ids``/``seq_lens``); KL keys: ``kl_input_ids``, ``kl_loss_mask``, ...
    """
    out = _collate(
        [{"input_ids": it["input_ids"], "loss_mask": it["loss_mask"]} for it in items], pad_id, packing
    )
    out["label"] = torch.tensor([bool(it["label"]) for it in items], dtype=torch.bool)
    b = len(items)
    prompt_lens = [it["loss_mask"].index(1) if 1 in it["loss_mask"] else len(it["loss_mask"]) for it in items]
    kl = []
    for i in range(b):
        j = (i + 1) % b
        prompt = list(items[i]["input_ids"][: prompt_lens[i]])
        completion = list(items[j]["input_ids"][prompt_lens[j] :])
        ids = prompt + completion
        mask = [0] * len(prompt) + [1] * len(completion)
        if max_len is not None:
            ids, mask = ids[:max_len], mask[:max_len]
        if mask:
            mask[0] = 0
        kl.append({"input_ids": ids, "loss_mask": mask})
    for key, value in _collate(kl, pad_id, packing).items():
        out[f"kl_{key}"] = value
    return out


def prompt_collate(items: Sequence[dict], pad_id: int | None = 0) -> dict[str, Any]:
    """Left-padded prompt batch for generation: ``input_ids``, ``attention_mask``, ``prompts``, ``labels``."""
    pad = 0 if pad_id is None else int(pad_id)
    lengths = [len(it["prompt_ids"]) for it in items]
    width = max(lengths)
    ids = torch.full((len(items), width), pad, dtype=torch.long)
    attn = torch.zeros((len(items), width), dtype=torch.long)
    for i, it in enumerate(items):
        ids[i, width - lengths[i] :] = torch.as_tensor(it["prompt_ids"], dtype=torch.long)
        attn[i, width - lengths[i] :] = 1
    return {
        "input_ids": ids,
        "attention_mask": attn,
        "prompts": [it["prompt"] for it in items],
        "labels": [it.get("label") for it in items],
    }


# --------------------------------------------------------------------------- sampling


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The sample order of an epoch: a pure function of (n, seed, epoch), so a resume replays it.

    Same generator as ``repulse.trainers.fit.epoch_order``.
    """
    if not shuffle:
        return list(range(n))
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=gen).tolist()


class MicroBatcher:
    """Deterministic, rank-sharded, resumable micro-batches of sample indices.

    Each epoch is cut into global batches of ``batch_size`` samples (default
    ``micro_batch_size * world_size``). Rank r takes the r-th contiguous slice of every global
    batch (``batch_size / world_size`` samples) and splits it into micro-batches of
    ``micro_batch_size``. The last incomplete global batch of an epoch is **dropped**, so every
    rank takes the same number of equal-sized steps (an epoch with a different shuffle sees
    the dropped samples next time). Resuming: ``start_index`` is the number of samples of the
    epoch's order already consumed by all ranks together (a multiple of ``batch_size``); the
    batches after it are exactly those an uninterrupted run would produce.
    """

    def __init__(
        self,
        n: int,
        micro_batch_size: int,
        batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if micro_batch_size <= 0 or world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(
                f"bad batcher arguments: micro={micro_batch_size} rank={rank} world={world_size}"
            )
        self.batch_size = batch_size if batch_size is not None else micro_batch_size * world_size
        if self.batch_size % (micro_batch_size * world_size):
            raise UserError(
                f"--train.batch_size {self.batch_size} must be a multiple of --train.micro_batch_size "
                f"{micro_batch_size} x {world_size} process(es) = {micro_batch_size * world_size}."
            )
        self.n = n
        self.micro = micro_batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world = world_size

    @property
    def steps_per_epoch(self) -> int:
        """Global batches per epoch (the incomplete tail is dropped)."""
        return self.n // self.batch_size

    def order(self, epoch: int) -> list[int]:
        return epoch_order(self.n, self.seed, epoch, self.shuffle)

    def step_indices(self, epoch: int, step: int, order: list[int] | None = None) -> list[list[int]]:
        """This rank's micro-batches of global batch ``step`` of ``epoch``."""
        order = self.order(epoch) if order is None else order
        per_rank = self.batch_size // self.world
        start = step * self.batch_size + self.rank * per_rank
        mine = order[start : start + per_rank]
        return [mine[i : i + self.micro] for i in range(0, len(mine), self.micro)]

    def iter_epoch(self, epoch: int, start_index: int = 0) -> Iterator[list[int]]:
        """This rank's micro-batches of ``epoch`` from global sample position ``start_index``."""
        if start_index % self.batch_size:
            raise ValueError(
                f"start_index {start_index} is not a multiple of the global batch {self.batch_size}"
            )
        order = self.order(epoch)
        for step in range(start_index // self.batch_size, self.steps_per_epoch):
            yield from self.step_indices(epoch, step, order)


def batches(
    dataset: Sequence[Any],
    micro_batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int | None = None,
    start_index: int = 0,
    collate: Callable[[list[Any]], Any] | None = None,
) -> Iterator[Any]:
    """This rank's micro-batches of one epoch (lists of items, or ``collate(list)`` when given).

    See :class:`MicroBatcher` for the sharding, the dropped tail and ``start_index``.
    """
    batcher = MicroBatcher(len(dataset), micro_batch_size, batch_size, shuffle, seed, rank, world_size)
    for idx in batcher.iter_epoch(epoch, start_index):
        group = [dataset[i] for i in idx]
        yield collate(group) if collate is not None else group
