"""What an RL method is: a rollout, a training step on it, and state to checkpoint.

The loop (``repulse.trainers.rl.loop``) only loops: per step it asks the method for a rollout of
the step's prompts and then to train on it. Splitting the two lets a controller draw rollouts
ahead of training (asynchronous mode) without the method knowing.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch

from repulse.config.sections import RLConfig
from repulse.rl.roles import Comm
from repulse.rl.rollout import Samples, SamplingParams


class RLMethod(Protocol):
    def rollout(self, items: list[dict]) -> Any:
        """Sample and score the step's prompts (no training)."""

    def train(self, rollout: Any, step: int) -> dict[str, float]:
        """Experience and updates from ``rollout``; the step's metrics (``samples``: rows drawn here)."""

    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def sampling(cfg: RLConfig, prompt_ids: list[list[int]], temperature: float | None = None) -> SamplingParams:
    r = cfg.rollout
    return SamplingParams(
        max_new_tokens=max_new_tokens(cfg, prompt_ids),
        temperature=r.temperature if temperature is None else temperature,
        top_p=r.top_p,
        top_k=r.top_k,
    )


def max_new_tokens(cfg: RLConfig, prompt_ids: list[list[int]]) -> int:
    """The response budget L_max: ``--rollout.max_new_tokens``, else what ``--data.max_len`` leaves."""
    return cfg.rollout.max_new_tokens or max(1, cfg.data.max_len - max(len(p) for p in prompt_ids))


def global_range(comm: Comm, x: torch.Tensor) -> tuple[float, float]:
    """(min, max) of ``x`` over every process's values."""
    xd = x.detach().double().flatten().cpu()
    t = torch.stack([-xd.min(), xd.max()]) if xd.numel() else torch.full((2,), -math.inf, dtype=torch.float64)
    t = comm.all_reduce(t, "max").cpu()
    return -float(t[0]), float(t[1])


def global_std(comm: Comm, x: torch.Tensor) -> float:
    """Unbiased std of ``x`` over every process's values (the mean of rank-local stds is not it)."""
    xd = x.detach().double().flatten().cpu()
    t = torch.stack([xd.sum(), (xd * xd).sum(), torch.tensor(float(xd.numel()), dtype=torch.float64)])
    total, squares, n = (float(v) for v in comm.all_reduce(t, "sum").cpu())
    if n < 2:
        return 0.0
    return math.sqrt(max(squares - total * total / n, 0.0) / (n - 1))


def sample_metrics(comm: Comm, raw: torch.Tensor, samples: Samples) -> dict[str, float]:
    """The policy's sampled rewards over every process (mean, std, min, max) and response length."""
    lo, hi = global_range(comm, raw)
    return {
        "reward": float(raw.mean()),
        "reward_std": global_std(comm, raw),
        "reward_min": lo,
        "reward_max": hi,
        "response_length": float(samples.response_length.float().mean()),
    }


def prefixed(prefix: str, stats: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in stats.items()}
