"""Padding-free forwards of RL samples (``--engine.packing_samples``).

``Samples`` rows are [left-padded prompt | right-padded response]; a batch with ragged lengths
spends most of a padded forward on padding. Packed, each row's real tokens (its prompt without
the left padding, then its response up to EOS) are laid end to end in rows of at most
``capacity`` tokens with ``position_ids`` restarting at 0 per sample and no attention mask, so
transformers attends within each sample only (the same rule as SFT packing). The outputs are
scattered back to the padded layout, so every loss downstream is unchanged: a packed forward
gives the padded forward's log-probs and values up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from repulse.data.collate import pack_bins


@dataclass
class PackedLayout:
    """Packed rows and, for every real token, where it sits in the padded [B, L] layout."""

    input_ids: torch.Tensor  # [R, W]
    position_ids: torch.Tensor  # [R, W]
    row: torch.Tensor  # [N] packed row of each real token
    col: torch.Tensor  # [N] packed column
    src_row: torch.Tensor  # [N] padded row
    src_col: torch.Tensor  # [N] padded column
    shape: tuple[int, int]  # (B, L) of the padded layout


def pack_capacity(model: torch.nn.Module) -> int | None:
    """Rows for the model's attention: one row for flash attention on CUDA (varlen kernels), else
    rows as long as the longest sample (sdpa/eager materialise the block-diagonal mask, so a
    row's attention costs its length squared) - the rule of offline packing."""
    impl = getattr(getattr(model, "config", None), "_attn_implementation", "") or ""
    return None if "flash" in impl and torch.cuda.is_available() else 0


def pack_rows(
    sequences: torch.Tensor, attention_mask: torch.Tensor, capacity: int | None, pad_id: int = 0
) -> PackedLayout:
    """Lay the attended tokens of each row end to end (first-fit decreasing into rows of at most
    ``capacity`` tokens; None: one row). Pads at the end of a packed row continue its last
    sample's positions; causal attention keeps them out of every real token's view."""
    b, length = sequences.shape
    mask = attention_mask.bool()
    lengths = mask.sum(-1).tolist()
    width_cap = max(lengths) if capacity is None else max(capacity, max(lengths))
    bins = [list(range(b))] if capacity is None else pack_bins(lengths, width_cap)
    width = max(sum(lengths[i] for i in r) for r in bins)
    ids = torch.full((len(bins), width), pad_id, dtype=torch.long, device=sequences.device)
    pos = torch.zeros((len(bins), width), dtype=torch.long, device=sequences.device)
    rows, cols, src_rows, src_cols = [], [], [], []
    for r, members in enumerate(bins):
        at = 0
        for i in members:
            n = lengths[i]
            where = torch.nonzero(mask[i]).flatten()
            ids[r, at : at + n] = sequences[i, where]
            pos[r, at : at + n] = torch.arange(n, device=sequences.device)
            rows.append(torch.full((n,), r, dtype=torch.long))
            cols.append(torch.arange(at, at + n))
            src_rows.append(torch.full((n,), i, dtype=torch.long))
            src_cols.append(where.cpu())
            at += n
        if at < width:  # trailing pads continue the last sample's positions
            last = pos[r, at - 1] if at else torch.tensor(-1)
            pos[r, at:] = last + 1 + torch.arange(width - at, device=sequences.device)
    cat = torch.cat
    return PackedLayout(ids, pos, cat(rows), cat(cols), cat(src_rows), cat(src_cols), (b, length))


def unpack(x: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    """[R, W, ...] packed values → [B, L, ...] in the padded layout (0 where the padded layout pads)."""
    out = x.new_zeros((*layout.shape, *x.shape[2:]))
    dev = x.device
    out[layout.src_row.to(dev), layout.src_col.to(dev)] = x[layout.row.to(dev), layout.col.to(dev)]
    return out


def packed_response_logits(model: torch.nn.Module, sequences: torch.Tensor, attention_mask: torch.Tensor,
                           prompt_len: int, capacity: int | None) -> torch.Tensor:  # fmt: skip
    """Logits predicting each response token, [B, T, V], from a packed forward.

    Only the packed columns that hold a position predicting a response token go through the LM
    head (``logits_to_keep`` with column indices)."""
    layout = pack_rows(sequences, attention_mask, capacity)
    b, length = layout.shape
    t = length - prompt_len
    # padded column c predicts token c + 1: the response's predictors are columns P-1 .. L-2
    predicts = (layout.src_col >= prompt_len - 1) & (layout.src_col <= length - 2)
    keep_cols = torch.unique(layout.col[predicts]).to(sequences.device)
    kwargs = dict(input_ids=layout.input_ids, position_ids=layout.position_ids, use_cache=False)
    try:
        logits = model(**kwargs, logits_to_keep=keep_cols).logits  # [R, K, V]
        col_of = torch.full((layout.input_ids.shape[1],), -1, dtype=torch.long, device=sequences.device)
        col_of[keep_cols] = torch.arange(keep_cols.numel(), device=sequences.device)
    except TypeError:  # a model class without logits_to_keep
        logits = model(**kwargs).logits
        col_of = torch.arange(layout.input_ids.shape[1], device=sequences.device)
    sel = predicts.to(sequences.device)
    rows, cols = layout.row.to(sequences.device)[sel], col_of[layout.col.to(sequences.device)[sel]]
    out = logits.new_zeros((b, t, logits.shape[-1]))
    out[
        layout.src_row.to(sequences.device)[sel], layout.src_col.to(sequences.device)[sel] - (prompt_len - 1)
    ] = logits[rows, cols]
    return out


def packed_token_values(model: torch.nn.Module, sequences: torch.Tensor, attention_mask: torch.Tensor,
                        capacity: int | None, values_fn) -> torch.Tensor:  # fmt: skip
    """A scalar head's per-position output [B, L] from a packed forward (``values_fn`` is
    ``token_values`` or ``tied_token_values``)."""
    layout = pack_rows(sequences, attention_mask, capacity)
    v = values_fn(model, layout.input_ids, None, layout.position_ids)
    return unpack(v, layout)
