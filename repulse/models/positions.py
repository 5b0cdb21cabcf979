"""Position ids for padded and packed rows, shared by log-probs and scalar heads."""

from __future__ import annotations

import torch


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only attended tokens (0 on padding), like ``generate``."""
    mask = attention_mask.long()
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the rightmost attended position of each row (left or right padding alike)."""
    idx = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (idx * (attention_mask != 0)).argmax(-1)


def check_not_packed(position_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    """Refuse packed rows that also carry a 2-D attention mask.

    transformers only builds the block-diagonal mask when ``attention_mask`` is None; with
    a mask the packed samples would silently attend to each other.
    """
    both = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    if bool(((position_ids[:, 1:] <= position_ids[:, :-1]) & both).any()):
        raise ValueError(
            "packed rows (position_ids restarting inside a row) must be passed without attention_mask"
        )
