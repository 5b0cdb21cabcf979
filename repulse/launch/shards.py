"""Cutting a step's batches into the shards of an actor group, and putting them back together.

The controller holds a whole step; a group of D actors holds it as D contiguous shards, shard r
on rank r - the rows rank r holds under ``torchrun``. Generation returns one ``Samples`` per
shard, each padded to its own widths; ``merge_samples`` pads them to common widths (prompts on
the left, responses on the right) for the controller, and ``trim_prompt_padding`` takes the
extra prompt padding off again before a shard's forwards, so that an actor computes on the
tensors its shard was generated as (padding changes no value, but a wider input can change the
last bits of a reduction).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from repulse.rl.rollout import Samples


def split_sizes(total: int, parts: int) -> list[int]:
    """Contiguous shard sizes, as equal as possible, the first ones larger."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def split_even(total: int, parts: int, what: str) -> list[int]:
    """Equal contiguous shard sizes: sharded engines must run the same number of forwards."""
    if total % parts:
        raise RuntimeError(
            f"{what}: {total} rows cannot be split evenly over {parts} actors of a data-parallel group"
        )
    return [total // parts] * parts


def offsets(sizes: Sequence[int]) -> list[int]:
    out, at = [], 0
    for s in sizes:
        out.append(at)
        at += s
    return out


def merge_samples(parts: Sequence[Samples], prompt_counts: Sequence[int], pad_id: int) -> Samples:
    """One ``Samples`` from per-shard ones, in order; part i's prompt indices are shifted by the
    prompts of the parts before it. Prompts are left-padded and responses right-padded to the
    widest part (``pad_id``, attention 0, log-prob 0)."""
    width_p = max(s.prompt_len for s in parts)
    width_t = max(s.sequences.shape[1] - s.prompt_len for s in parts)
    seqs, attn, act, lps, vers, idx, trunc = [], [], [], [], [], [], []
    for s, first in zip(parts, offsets(prompt_counts)):
        left, right = width_p - s.prompt_len, width_t - (s.sequences.shape[1] - s.prompt_len)
        seqs.append(F.pad(s.sequences, (left, right), value=pad_id))
        attn.append(F.pad(s.attention_mask, (left, right), value=0))
        act.append(F.pad(s.action_mask, (0, right), value=0))
        if s.logprobs is not None:
            lps.append(F.pad(s.logprobs, (0, right), value=0.0))
        if s.versions is not None:
            vers.append(s.versions)
        idx.append(s.prompt_index + first)
        trunc.append(s.truncated)
    return Samples(
        torch.cat(seqs),
        torch.cat(attn),
        torch.cat(act),
        width_p,
        torch.cat(idx),
        torch.cat(trunc),
        torch.cat(lps) if len(lps) == len(parts) else None,
        torch.cat(vers) if len(vers) == len(parts) else None,
    )


def _leading_padding(s: Samples) -> int:
    """Prompt columns on the left that are padding in every row."""
    real = s.attention_mask[:, : s.prompt_len].bool().any(0)
    hits = torch.nonzero(real)
    return int(hits[0]) if hits.numel() else s.prompt_len


def _drop_left(s: Samples, k: int) -> Samples:
    if k == 0:
        return s
    return dataclasses.replace(
        s, sequences=s.sequences[:, k:], attention_mask=s.attention_mask[:, k:], prompt_len=s.prompt_len - k
    )


def _map_samples(obj: Any, fn: Callable[[Samples], Samples]) -> Any:
    """``obj`` with ``fn`` applied to every ``Samples`` inside it (dataclasses, lists, tuples)."""
    if isinstance(obj, Samples):
        return fn(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changes = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            new = _map_samples(value, fn)
            if new is not value:
                changes[f.name] = new
        return dataclasses.replace(obj, **changes) if changes else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_samples(v, fn) for v in obj)
    return obj


def trim_prompt_padding(obj: Any) -> Any:
    """Drop the prompt columns that are padding in every row of every ``Samples`` in ``obj`` (one
    shard's batch or micro-batches), per prompt width, so that a shard's rows come back to the
    width they were generated with."""
    common: dict[int, int] = {}

    def measure(s: Samples) -> Samples:
        k = _leading_padding(s)
        common[s.prompt_len] = min(common.get(s.prompt_len, k), k)
        return s

    _map_samples(obj, measure)
    return _map_samples(obj, lambda s: _drop_left(s, common[s.prompt_len]))
