"""Supervised fine-tuning loss (token-level negative log-likelihood)."""

from __future__ import annotations

import torch


def sft_loss(logprobs: torch.Tensor, loss_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """NLL summed over trained tokens: L_sum = −Σ_t m_t · log p(x_t | x_<t).

    ``logprobs`` [B, T] are log-probabilities of the labels; ``loss_mask`` [B, T] is 1 on
    trained tokens. Returns ``(L_sum, n_tokens, metrics)``; the caller divides by the
    number of trained tokens of the whole global batch, which makes the loss the token
    mean over the batch whatever the split into micro-batches (OpenRLHF's SFTLoss).
    """
    mask = loss_mask.to(logprobs.dtype)
    total = -(logprobs * mask).sum()
    n = mask.sum()
    return total, n, {"nll": total.detach() / n.clamp(min=1)}
