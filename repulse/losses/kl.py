"""KL estimators and KL-coefficient controllers (OpenRLHF ``compute_approx_kl``, Ziegler et al.).

Sign convention (Schulman, "Approximating KL divergence"; spec §3.7). Tokens are sampled
from π (the policy), and every estimator is a per-token estimate of KL(π ‖ π_ref):

    δ = log π − log π_ref,   r = π_ref/π = exp(−δ)
    k1 = −log r = δ          (unbiased, can be negative)
    k2 = ½(log r)² = ½δ²     (biased, ≥ 0)
    k3 = (r − 1) − log r = exp(−δ) − 1 + δ   (unbiased, ≥ 0)

Note k1 is **−**log r with r = π_ref/π (equivalently log(π/π_ref)): positive where the
policy puts more mass than the reference. Every value is clamped to [−10, 10].
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = δ, δ = log π − log π_ref (unbiased, can be negative), clamped to [−10, 10]."""
    return (logprobs - ref_logprobs).clamp(-10.0, 10.0)


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = δ²/2, clamped to [−10, 10]."""
    d = logprobs - ref_logprobs
    return (0.5 * d * d).clamp(-10.0, 10.0)


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = exp(−δ) − 1 + δ (≥ 0, unbiased for KL(π ‖ π_ref) under π), clamped to [−10, 10]."""
    d = (logprobs - ref_logprobs).clamp(-20.0, 20.0)
    return (torch.exp(-d) - 1.0 + d).clamp(-10.0, 10.0)


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


class FixedKLController:
    """β stays ``init_coef``."""

    def __init__(self, init_coef: float):
        self.value = float(init_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """β is unchanged."""
        return None

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """β ← β·(1 + clip(KL/target − 1, −0.2, 0.2)·n/horizon) (Ziegler et al. 2019)."""

    def __init__(self, init_coef: float, target: float, horizon: int):
        super().__init__(init_coef)
        self.target, self.horizon = float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """err = clip(KL/target − 1, −0.2, 0.2);  β ← β·(1 + err·n_steps/horizon)."""
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
