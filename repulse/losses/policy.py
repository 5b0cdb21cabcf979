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


def gspo_sequence_ratio(
    logprobs: torch.Tensor, behaviour_logprobs: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """GSPO's sequence-level importance ratio, broadcast to the sequence's tokens (OpenRLHF ``gspo``):

        s_i = exp( Σ_t m_{i,t} (log π_θ − log π_b)_{i,t} / Σ_t m_{i,t} ),     ρ_{i,t} = s_i · m_{i,t}

    the geometric mean of the token ratios, (π_θ(y_i) / π_b(y_i))^(1/|y_i|). The gradient flows
    through every token's log π_θ. π_b is π_old (or the rollout engine's π when the rollout
    importance-sampling correction is on).
    """
    m = mask.to(logprobs.dtype)
    mean_log = ((logprobs - behaviour_logprobs) * m).sum(-1) / m.sum(-1).clamp(min=1)
    return torch.exp(mean_log.clamp(-20.0, 20.0)).unsqueeze(-1) * m


def gspo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO's clipped surrogate per token, with the sequence ratio s_i of ``gspo_sequence_ratio``:

        ℓ_{i,t} = −min(s_i A_{i,t}, clip(s_i, 1 − ε_lo, 1 + ε_hi) A_{i,t})

    GSPO aggregates per sequence: L = mean_i (1/|y_i|) Σ_t m ℓ_{i,t} (the caller's units are
    sequences). Returns ``(ℓ [B, T], metrics)`` as ``ppo_policy_loss``.
    """
    ratio = gspo_sequence_ratio(logprobs, old_logprobs, mask)
    surr1 = ratio * advantages
    surr2 = ratio.clamp(1.0 - eps_low, 1.0 + eps_high) * advantages
    loss = -torch.min(surr1, surr2)
    with torch.no_grad():
        metrics = {
            "clip_frac": masked_mean((surr2 < surr1).to(loss.dtype), mask),
            "approx_kl": masked_mean(old_logprobs - logprobs, mask),
            "ratio": masked_mean(ratio, mask),
        }
    return loss, metrics


ROLLOUT_IS_MODES = ("tis", "icepop", "seq-mask-tis")


def rollout_is_weights(
    old_logprobs: torch.Tensor,
    rollout_logprobs: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    low: float,
    high: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token weights correcting for a rollout engine whose π_roll differs from the trainer's π_old.

        w_t = exp(log π_old − log π_roll)                                   (detached)
        tis:           ω_t = clamp(w_t, lo, hi)                      (truncated importance sampling)
        icepop:        ω_t = w_t · 1[lo ≤ w_t ≤ hi]                    (out-of-band tokens dropped)
        seq-mask-tis:  ω_t = w_t · 1[lo ≤ exp(mean_t log w_t) ≤ hi]   (whole sequences kept or dropped)

    The policy loss becomes ω_t·ℓ_t. ``rollout_kl`` = masked mean(log π_roll − log π_old) and
    ``rollout_is_dropped`` (share of action tokens with ω = 0) are logged.
    """
    m = mask.to(old_logprobs.dtype)
    log_w = (old_logprobs - rollout_logprobs).detach().clamp(-20.0, 20.0)
    w = torch.exp(log_w)
    if mode == "tis":
        omega = w.clamp(low, high)
    elif mode == "icepop":
        omega = w * ((w >= low) & (w <= high)).to(w.dtype)
    elif mode == "seq-mask-tis":
        seq = torch.exp((log_w * m).sum(-1) / m.sum(-1).clamp(min=1))
        omega = w * ((seq >= low) & (seq <= high)).to(w.dtype).unsqueeze(-1)
    else:
        raise ValueError(f"rollout IS mode must be one of {ROLLOUT_IS_MODES}, got {mode!r}")
    with torch.no_grad():
        metrics = {
            "rollout_kl": masked_mean(-log_w, mask),
            "rollout_is_dropped": masked_mean((omega == 0).to(w.dtype), mask),
        }
    return omega * m, metrics
