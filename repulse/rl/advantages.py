"""Advantage estimators, keyed by the names users type (``--algo.advantage.estimator``).

Pipeline (OpenRLHF's, spec §3.6–3.8), for scalar rewards r [B] of groups of n
consecutive samples per prompt:

1. ``shape_group_rewards``: the per-group baseline of the estimator
   (rloo: r_i − mean_{j≠i} r_j; reinforce_baseline and dr_grpo: r_i − mean_j r_j;
   group_norm: (r_i − mean_j r_j)/(std_j r_j + 1e-9), unbiased std; gae/reinforce: none);
2. the caller clips and builds token rewards r_t = −β·k_t + 1[t = last]·r (``token_rewards``);
3. ``compute_advantages``: GAE(γ, λ) with the critic's values, or the return-to-go
   G_t = Σ_{k≥t} γ^{k−t} r_k (γ = 1 for the group estimators), then whitening over all
   action tokens of the batch for gae, reinforce and reinforce_baseline
   (A ← (A − μ)/sqrt(max(σ², 1e-8)); ``no_std_norm`` only centres).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from repulse.errors import UserError

GROUP = {"rloo", "reinforce_baseline", "group_norm", "dr_grpo"}
WHITENED = {"gae", "reinforce", "reinforce_baseline"}
ESTIMATORS = {"gae", "reinforce"} | GROUP

Reduce = Callable[[torch.Tensor], torch.Tensor]  # sums a tensor over processes


def check_group(name: str, group_size: int) -> None:
    if name not in ESTIMATORS:
        raise UserError(f"--algo.advantage.estimator must be one of {sorted(ESTIMATORS)}, got {name!r}.")
    if name in GROUP and group_size < 2:
        raise UserError(
            f"--algo.advantage.estimator {name} compares samples of the same prompt: set "
            f"--rollout.n_samples_per_prompt to 2 or more (got {group_size})."
        )


def shape_group_rewards(name: str, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Subtract the estimator's per-prompt baseline from scalar rewards (rows of a group are consecutive)."""
    check_group(name, group_size)
    if name not in GROUP:
        return rewards
    r = rewards.view(-1, group_size)
    mean = r.mean(-1, keepdim=True)
    if name == "rloo":
        out = r - (r.sum(-1, keepdim=True) - r) / (group_size - 1)
    elif name == "group_norm":
        out = (r - mean) / (r.std(-1, keepdim=True) + 1e-9)
    else:  # reinforce_baseline, dr_grpo
        out = r - mean
    return out.reshape(rewards.shape)


def token_rewards(rewards: torch.Tensor, kl_penalty: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """r_t = −kl_penalty_t + 1[t = last action token]·r (kl_penalty already includes β)."""
    out = torch.zeros_like(mask, dtype=torch.float32)
    if kl_penalty is not None:
        out = out - kl_penalty * mask
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    out[torch.arange(mask.shape[0]), last] += rewards.to(out.dtype) * (mask.sum(-1) > 0)
    return out


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = Σ_{k≥t} γ^{k−t} r_k over the masked tokens."""
    r = rewards * mask
    out = torch.zeros_like(r)
    running = torch.zeros(r.shape[0], dtype=r.dtype, device=r.device)
    for t in range(r.shape[1] - 1, -1, -1):
        running = r[:, t] + gamma * running
        out[:, t] = running
    return out * mask


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lambd: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """δ_t = r_t + γ V_{t+1} − V_t (V after the last token = 0); A_t = δ_t + γλ A_{t+1}; R_t = A_t + V_t."""
    r, v = rewards * mask, values * mask
    adv = torch.zeros_like(r)
    last = torch.zeros(r.shape[0], dtype=r.dtype, device=r.device)
    next_v = torch.zeros_like(last)
    for t in range(r.shape[1] - 1, -1, -1):
        delta = r[:, t] + gamma * next_v - v[:, t]
        last = delta + gamma * lambd * last
        adv[:, t] = last
        next_v = v[:, t]
    return adv * mask, (adv + v) * mask


def whiten(
    x: torch.Tensor, mask: torch.Tensor, std_norm: bool = True, reduce: Reduce | None = None
) -> torch.Tensor:
    """(x − μ)·rsqrt(max(σ², 1e-8)) over the masked entries (of all processes when ``reduce`` sums)."""
    m = mask.to(x.dtype)
    stats = torch.stack([(x * m).sum(), m.sum(), (x * x * m).sum()]).double()
    if reduce is not None:
        stats = reduce(stats)
    n = stats[1].clamp(min=1)
    mean = stats[0] / n
    var = (stats[2] / n - mean * mean).clamp(min=0)
    out = x - mean.to(x.dtype)
    if std_norm:
        out = out * torch.rsqrt(var.clamp(min=1e-8)).to(x.dtype)
    return out * m


def compute_advantages(
    name: str,
    *,
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    lambd: float = 1.0,
    no_std_norm: bool = False,
    reduce: Reduce | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (advantages, returns) for estimator ``name`` from already-shaped token rewards."""
    mask = mask.to(torch.float32)
    if name == "gae":
        if values is None:
            raise UserError("--algo.advantage.estimator gae needs a critic (values).")
        adv, ret = gae(token_rewards, values, mask, gamma, lambd)
    else:
        ret = discounted_returns(token_rewards, mask, gamma if name == "reinforce" else 1.0)
        adv = ret.clone()
    if name in WHITENED:
        adv = whiten(adv, mask, std_norm=not no_std_norm, reduce=reduce)
    return adv, ret


def dynamic_filter_groups(rewards: torch.Tensor, group_size: int, low: float, high: float) -> torch.Tensor:
    """Keep-mask [B] of samples whose group's mean reward lies strictly inside (low, high) (DAPO).

    Groups where every sample succeeds or every one fails carry no learning signal for
    group baselines; they are dropped.
    """
    mean = rewards.view(-1, group_size).mean(-1)
    keep = (mean > low) & (mean < high)
    return keep.repeat_interleave(group_size)
