"""Reward shaping before the advantage: length penalties, running normalisation, clipping."""

from __future__ import annotations

import torch


def overlong_penalty(
    lengths: torch.Tensor, max_new_tokens: int, buffer_len: float, factor: float
) -> torch.Tensor:
    """DAPO overlong penalty (OpenRLHF ``length_penalty.py``), added to the scalar reward.

    With L_max = ``max_new_tokens``, B = ``buffer_len``, f = ``factor`` and
    e = len − (L_max − B):  penalty = −min(e, B)/B · f  where e > 0, else 0.
    A linear ramp from 0 at len = L_max − B down to −f at len = L_max (and −f beyond).
    """
    excess = lengths.float() - (max_new_tokens - buffer_len)
    return torch.where(
        excess > 0, -excess.clamp(max=buffer_len) / buffer_len * factor, torch.zeros_like(excess)
    )


def clip_rewards(r: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """r ← clamp(r, low, high) (``--reward.clip_range``, applied after the group baseline)."""
    return r.clamp(min=low, max=high)


class RunningMeanStd:
    """Running mean and (population) variance over every reward seen (``--reward.normalize_enable``).

    Starts at μ = 0, σ² = 1, count = 0; each ``update`` merges a batch exactly (Chan et al.),
    so after any sequence of batches μ and σ² equal those of all rewards seen so far.
    """

    def __init__(self, eps: float = 1e-8):
        self.mean, self.var, self.count, self.eps = 0.0, 1.0, 0.0, eps

    def update(self, x: torch.Tensor, reduce=None) -> None:
        """Merge a batch of n values with mean μ_b, population variance σ²_b (float64):

        N = c + n, δ = μ_b − μ,  μ ← μ + δ·n/N,
        σ² ← (σ²·c + σ²_b·n + δ²·c·n/N)/N,  c ← N.   An empty batch changes nothing.

        ``reduce`` sums a float64 tensor over processes: the batch is then every process's
        values together (via n, Σx, Σx²), so all processes keep the same statistics.
        """
        x = x.double().flatten()
        moments = torch.stack([torch.tensor(float(x.numel()), dtype=torch.float64), x.sum(), (x * x).sum()])
        if reduce is not None:
            moments = reduce(moments)
        n, total_x, total_xx = (float(v) for v in moments)
        if n == 0:
            return
        b_mean = total_x / n
        b_var = max(total_xx / n - b_mean * b_mean, 0.0)
        total = self.count + n
        delta = b_mean - self.mean
        m2 = self.var * self.count + b_var * n + delta * delta * self.count * n / total
        self.mean += delta * n / total
        self.var, self.count = m2 / total, total

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x − μ)/sqrt(σ² + eps)."""
        return ((x.double() - self.mean) / (self.var + self.eps) ** 0.5).to(x.dtype)

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = state["mean"], state["var"], state["count"]
