"""PPO policy and value losses (per token; aggregation is the caller's, see ``repulse.trainers.fit``)."""

from __future__ import annotations

import torch

from repulse.losses.aggregation import masked_mean


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate per token (OpenRLHF ``PolicyLoss``):

        ρ_t = exp(clamp(log π_θ − log π_old, −20, 20))
        ℓ_t = −min(ρ_t A_t, clip(ρ_t, 1 − ε_lo, 1 + ε_hi) A_t)
        dual clip (c > 1), only where A_t < 0:  ℓ_t = −max(min(ρA, clip(ρ)A), c·A_t)

    Returns ``(ℓ [B, T], metrics)``; metrics (masked means): ``clip_frac`` = 1[clipped term
    is the smaller one], ``approx_kl`` = log π_old − log π_θ, ``ratio``. At ρ ≡ 1 (first
    update on fresh experience) ℓ_t = −A_t and clip_frac = 0. The token-level loss is
    ``Σ m ℓ / Σ m`` (``repulse.losses.aggregation.token_sum_and_count``). Off-mask
    positions never enter the metrics, even when they hold ``nan``.
    """
    log_ratio = (logprobs - old_logprobs).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    surr1 = ratio * advantages
    surr2 = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * advantages
    loss = -torch.min(surr1, surr2)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        dual = -torch.max(torch.min(surr1, surr2), dual_clip * advantages)
        loss = torch.where(advantages < 0, dual, loss)
    with torch.no_grad():
        metrics = {
            "clip_frac": masked_mean((surr2 < surr1).to(loss.dtype), mask),
            "approx_kl": masked_mean(old_logprobs - logprobs, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, metrics


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    value_clip: float | None = None,
) -> torch.Tensor:
    """Clipped value regression per token (OpenRLHF ``ValueLoss``):

    V_clip = V_old + clip(V − V_old, −ε_v, ε_v)
    ℓ_t = ½ · max((V_clip − R)², (V − R)²)        (½ (V − R)² without a clip)
    """
    del mask  # aggregation is the caller's
    unclipped = (values - returns) ** 2
    if value_clip is None:
        return 0.5 * unclipped
    clipped = old_values + (values - old_values).clamp(-value_clip, value_clip)
    return 0.5 * torch.max((clipped - returns) ** 2, unclipped)
