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
    a mask the packed samples would silently attend to each other. A 4-D mask says itself
    who attends to whom (``shared_prompt_collate``): nothing to check.
    """
    if attention_mask.dim() == 4:
        return
    both = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    if bool(((position_ids[:, 1:] <= position_ids[:, :-1]) & both).any()):
        raise ValueError(
            "packed rows (position_ids restarting inside a row) must be passed without attention_mask"
        )


def model_attention_mask(model: torch.nn.Module, mask: torch.Tensor | None) -> torch.Tensor | None:
    """A boolean 4-D mask ``[B, 1, Q, K]`` (True = attend) in the form the model's attention takes.

    sdpa (and flex) take it as it is; eager attention adds the mask to its scores, so it gets the
    additive form (0 / the most negative fp32). 2-D masks and None pass through unchanged.
    """
    if mask is None or mask.dim() != 4 or mask.dtype != torch.bool:
        return mask
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"
    if impl in ("sdpa", "flex_attention"):
        return mask
    if "flash" in impl:
        raise ValueError("flash attention takes no 4-D attention mask; use sdpa or eager")
    additive = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    return additive.masked_fill_(~mask, torch.finfo(torch.float32).min)
