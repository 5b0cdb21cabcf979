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


def pack_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: item indices grouped into rows of at most ``capacity`` tokens
    (an item longer than ``capacity`` gets a row of its own)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def pack_collate(
    items: Sequence[dict],
    pad_id: int | None = 0,
    keys: Sequence[str] | None = None,
    capacity: int | None = None,
) -> dict[str, Any]:
    """Items packed into rows with restarting ``position_ids`` (see the module docstring).

    ``capacity`` None: all items in one row (``seq_lens`` gives the samples' lengths) - the
    layout for flash attention's varlen kernels. ``capacity`` C: rows of at most
    max(C, the longest item) tokens (``pack_bins``; C = 0: the longest item's length, i.e. the
    padded batch's width with its padding filled by other items), right padded to the longest row (pads continue the last sample's
    positions and train nothing; causal attention keeps them out of every real token's view).
    Attention that materialises the block-diagonal mask (sdpa, eager) then costs
    rows × C² instead of (Σ lengths)². Bins reorder the samples and carry no ``seq_lens``:
    for per-token losses only. ``pad_id`` pads only bins.
    """
    if not items:
        raise ValueError("pack_collate needs at least one item")
    if capacity is not None:
        return _pack_rows(items, pad_id, keys, max(capacity, max(len(it["input_ids"]) for it in items)))
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


def _pack_rows(items: Sequence[dict], pad_id: int | None, keys: Sequence[str] | None, capacity: int) -> dict:
    rows = [pack_collate([items[i] for i in row], pad_id, keys) for row in pack_bins(
        [len(it["input_ids"]) for it in items], capacity)]  # fmt: skip
    width = max(r["input_ids"].shape[1] for r in rows)
    fill = {"input_ids": 0 if pad_id is None else int(pad_id), "step_mask": False, "step_labels": None}
    out: dict[str, Any] = {}
    for key in rows[0]:
        if key == "seq_lens":
            continue
        parts = []
        for r in rows:
            t = r[key]
            if not (isinstance(t, torch.Tensor) and t.dim() == 2):
                parts = None
                break
            extra = width - t.shape[1]
            if key == "position_ids":
                tail = t[:, -1:] + torch.arange(1, extra + 1, dtype=t.dtype)[None]
            elif key == "step_labels":
                tail = torch.full((1, extra), -100 if t.dtype == torch.long else 0.0, dtype=t.dtype)
            else:
                tail = torch.full((1, extra), fill.get(key, 0), dtype=t.dtype)
            parts.append(torch.cat([t, tail], dim=1))
        if parts is not None:
            out[key] = torch.cat(parts, dim=0)
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


def shared_prompt_collate(
    items: Sequence[dict], pad_id: int | None = 0, capacity: int | None = None
) -> dict[str, Any]:
    """A pair batch with each pair's common prefix run once.

    A pair's segment = [shared k tokens | chosen tail | rejected tail], k = the longest common
    token prefix of chosen and rejected (at most the shorter length − 1, so each keeps a token
    of its own). ``position_ids`` run 0..k−1, then k.. for each tail; the boolean
    ``attention_mask [R, 1, L, L]`` is causal within a segment with the rejected tail blind to
    the chosen tail, so every token sees exactly what it would see in its own sequence (pads see
    themselves). The prompt - and any response tokens the two share - costs one forward instead
    of two. One segment per row, right padded; with ``capacity`` C, segments are packed into
    rows of at most max(C, the longest segment) tokens (``pack_bins``; the packed layout for
    sdpa/eager).

    Keys, with sequences numbered 0..B−1 chosen and B..2B−1 rejected as in ``preference_collate``:
    ``seq_last [2B, 2]`` (row, column) of each sequence's last token (a reward model's score);
    ``token_seq / token_row / token_col / token_label [N]`` for each trained token (mask 1):
    its sequence, the (row, column) of the logits that predict it, and its id;
    ``margin [B]``.
    """
    pad = 0 if pad_id is None else int(pad_id)
    b = len(items)
    segs = []  # per pair: tokens, positions, part (0 shared, 1 chosen, 2 rejected), and the
    for it in items:  # column (within the segment) that predicts each trained token
        c, r = list(it["chosen_ids"]), list(it["rejected_ids"])
        k = 0
        limit = min(len(c), len(r)) - 1
        while k < limit and c[k] == r[k]:
            k += 1

        def col_r(j: int, c_len: int = len(c), shared: int = k) -> int:
            return j if j < shared else c_len + j - shared

        trained = []
        for side, ids, mask, col in (
            (0, c, it["chosen_mask"], lambda j: j),
            (1, r, it["rejected_mask"], col_r),
        ):
            trained += [(side, col(j - 1), ids[j]) for j in range(1, len(ids)) if mask[j]]
        segs.append(
            {
                "ids": c + r[k:],
                "pos": list(range(len(c))) + list(range(k, len(r))),
                "part": [0] * k + [1] * (len(c) - k) + [2] * (len(r) - k),
                "last": (len(c) - 1, col_r(len(r) - 1)),
                "trained": trained,
            }
        )
    lengths = [len(sg["ids"]) for sg in segs]
    rows = [[i] for i in range(b)] if capacity is None else pack_bins(lengths, max(capacity, max(lengths)))
    width = max(sum(lengths[i] for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    pos = torch.zeros((len(rows), width), dtype=torch.long)
    part = torch.full((len(rows), width), -1, dtype=torch.long)
    owner = torch.full((len(rows), width), -1, dtype=torch.long)  # which pair holds the column
    seq_last = [(0, 0)] * (2 * b)
    t_seq, t_row, t_col, t_lab = [], [], [], []
    for r_i, row in enumerate(rows):
        off = 0
        for i in row:
            sg, n = segs[i], lengths[i]
            ids[r_i, off : off + n] = torch.tensor(sg["ids"])
            pos[r_i, off : off + n] = torch.tensor(sg["pos"])
            part[r_i, off : off + n] = torch.tensor(sg["part"])
            owner[r_i, off : off + n] = i
            seq_last[i] = (r_i, off + sg["last"][0])
            seq_last[b + i] = (r_i, off + sg["last"][1])
            for side, col, label in sg["trained"]:
                t_seq.append(i + side * b)
                t_row.append(r_i)
                t_col.append(off + col)
                t_lab.append(label)
            off += n
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    real = owner >= 0
    allowed = causal[None] & real[:, :, None] & (owner[:, :, None] == owner[:, None, :])
    allowed &= ~((part[:, :, None] == 2) & (part[:, None, :] == 1))  # rejected never sees chosen
    allowed |= torch.eye(width, dtype=torch.bool)[None] & ~real[:, :, None]  # a pad sees itself
    return {
        "input_ids": ids,
        "position_ids": pos,
        "attention_mask": allowed[:, None],
        "seq_last": torch.tensor(seq_last, dtype=torch.long),
        "token_seq": torch.tensor(t_seq, dtype=torch.long),
        "token_row": torch.tensor(t_row, dtype=torch.long),
        "token_col": torch.tensor(t_col, dtype=torch.long),
        "token_label": torch.tensor(t_lab, dtype=torch.long),
        "margin": torch.tensor([float(it.get("margin", 0.0)) for it in items], dtype=torch.float32),
    }


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
