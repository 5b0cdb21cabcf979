"""Supervised fine-tuning loss (token-level negative log-likelihood), spec §3.1."""

from __future__ import annotations

import torch

from repulse.losses.aggregation import token_sum_and_count


def sft_loss(
    logprobs: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """NLL summed over trained tokens:

        L_sum = Σ_t m_t · (−log p(x_t | x_<t)),        n = Σ_t m_t

    ``logprobs`` [B, T] are the log-probabilities of the labels, already gathered (the
    shifted ones: position t predicts token t+1); ``loss_mask`` [B, T] (bool or 0/1) is 1
    on trained tokens (response tokens incl. EOS; every token in pretrain mode).

    Returns ``(L_sum, n, metrics)``. The caller divides by the trained-token count of the
    whole optimizer step (all micro-batches and ranks), which makes the loss the global
    token mean whatever the split (OpenRLHF's ``SFTLoss`` with its global normaliser, see
    ``repulse.losses.aggregation``). ``metrics["nll"]`` is this micro-batch's own token
    mean (0 when nothing is masked in), detached, for logging only.
    """
    total, n = token_sum_and_count(-logprobs, loss_mask)
    return total, n, {"nll": total.detach() / torch.where(n == 0, torch.ones_like(n), n)}
