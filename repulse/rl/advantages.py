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

Masks: every function takes the action mask ``m`` [B, T] (1 = action token). Off-mask
positions never enter a sum or a statistic (they are selected out with ``torch.where``,
so even ``nan`` padding cannot leak) and get exactly 0 advantage and return.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from repulse.errors import UserError

GROUP = {"rloo", "reinforce_baseline", "group_norm", "dr_grpo"}
WHITENED = {"gae", "reinforce", "reinforce_baseline"}
ESTIMATORS = {"gae", "reinforce"} | GROUP

Reduce = Callable[[torch.Tensor], torch.Tensor]  # sums a tensor over processes


def _zero_off(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x where m ≠ 0, exactly 0 elsewhere (no 0·nan = nan from padding)."""
    return torch.where(mask != 0, x, torch.zeros((), dtype=x.dtype, device=x.device))


def check_estimator(name: str) -> None:
    """UserError unless ``name`` is one of ``ESTIMATORS``."""
    if name not in ESTIMATORS:
        raise UserError(f"--algo.advantage.estimator must be one of {sorted(ESTIMATORS)}, got {name!r}.")


def check_group(name: str, group_size: int) -> None:
    """UserError for an unknown estimator, or a group estimator (``GROUP``) with n < 2.

    With n = 1 every group baseline equals the sample's own reward, so every advantage
    would be 0 (OpenRLHF asserts n > 1); the message names ``--rollout.n_samples_per_prompt``.
    """
    check_estimator(name)
    if name in GROUP and group_size < 2:
        raise UserError(
            f"--algo.advantage.estimator {name} compares samples of the same prompt: set "
            f"--rollout.n_samples_per_prompt to 2 or more (got {group_size})."
        )


def shape_group_rewards(name: str, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Subtract the estimator's per-prompt baseline from scalar rewards [B] (a group's rows are consecutive).

    With n = ``group_size`` and r_1..r_n the rewards of one prompt:

    - ``rloo``:                         r_i − (Σ_j r_j − r_i)/(n − 1)
    - ``reinforce_baseline``, ``dr_grpo``: r_i − mean_j r_j
    - ``group_norm`` (GRPO):            (r_i − mean_j r_j)/(std_j r_j + 1e-9), std unbiased (÷ (n − 1))
    - ``gae``, ``reinforce``:           r_i unchanged

    A zero-variance group (all r_j equal) gets exactly 0 from every group estimator. The
    arithmetic runs in float64: in float32 the mean of n identical values can be off by
    one ulp, and group_norm then divides that rounding error by a ~1e-7 std, giving
    O(1) advantages to a group with no signal (e.g. six rewards of −4.995 gave −0.911 each).
    """
    check_group(name, group_size)
    if name not in GROUP:
        return rewards
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.double().view(-1, group_size)
    mean = r.mean(-1, keepdim=True)
    if name == "rloo":
        out = r - (r.sum(-1, keepdim=True) - r) / (group_size - 1)
    elif name == "group_norm":
        out = (r - mean) / (r.std(-1, keepdim=True) + 1e-9)
    else:  # reinforce_baseline, dr_grpo
        out = r - mean
    return out.to(rewards.dtype).reshape(rewards.shape)


def token_rewards(rewards: torch.Tensor, kl_penalty: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """r_t = −kl_penalty_t·m_t + 1[t = last action token]·r (kl_penalty already includes β).

    The last action token is the last position with m_t ≠ 0 (OpenRLHF's ``compute_reward``),
    so masks with holes or leading zeros are handled; a row with an empty mask gets no reward.
    """
    out = torch.zeros_like(mask, dtype=torch.float32)
    if kl_penalty is not None:
        out = out - _zero_off(kl_penalty.to(out.dtype), mask)
    on = mask != 0
    last = mask.shape[1] - 1 - on.flip(-1).long().argmax(-1)
    out[torch.arange(mask.shape[0]), last] += rewards.to(out.dtype) * on.any(-1)
    return out


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = Σ_{k≥t, m_k ≠ 0} γ^{k−t} r_k at action tokens (m_t ≠ 0), 0 elsewhere.

    As in OpenRLHF the discount counts positions, so it also runs across masked holes.
    """
    r = _zero_off(rewards, mask)
    out = torch.zeros_like(r)
    running = torch.zeros(r.shape[0], dtype=r.dtype, device=r.device)
    for t in range(r.shape[1] - 1, -1, -1):
        running = r[:, t] + gamma * running
        out[:, t] = running
    return _zero_off(out, mask)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lambd: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the action tokens; returns (A, R) [B, T].

    r and V are zeroed off the mask first, then from the end:
    δ_t = r_t + γ V_{t+1} − V_t (V after the last token = 0); A_t = δ_t + γλ A_{t+1};
    R_t = A_t + V_t. Both are 0 off the mask.
    """
    r, v = _zero_off(rewards, mask), _zero_off(values, mask)
    adv = torch.zeros_like(r)
    last = torch.zeros(r.shape[0], dtype=r.dtype, device=r.device)
    next_v = torch.zeros_like(last)
    for t in range(r.shape[1] - 1, -1, -1):
        delta = r[:, t] + gamma * next_v - v[:, t]
        last = delta + gamma * lambd * last
        adv[:, t] = last
        next_v = v[:, t]
    return _zero_off(adv, mask), _zero_off(adv + v, mask)


def whiten(
    x: torch.Tensor, mask: torch.Tensor, std_norm: bool = True, reduce: Reduce | None = None
) -> torch.Tensor:
    """Batch whitening over the action tokens (of all processes when ``reduce`` sums):

        μ = Σ m x / Σ m,   σ² = Σ m x² / Σ m − μ²   (population variance)
        x ← (x − μ)·rsqrt(max(σ², 1e-8))            (``std_norm=False``: x ← x − μ)

    Off-mask entries are 0 on output and do not enter μ or σ² (m may also be weights).
    The sums are taken in float64: in float32 a constant batch could get a ~1e-7 error in
    μ that the 1e-4 rsqrt floor turns into ~1e-2 spurious advantages.
    """
    on = mask != 0
    zero = torch.zeros((), dtype=torch.float64, device=x.device)
    xd, m = torch.where(on, x.double(), zero), torch.where(on, mask.double(), zero)
    stats = torch.stack([(xd * m).sum(), m.sum(), (xd * xd * m).sum()])
    if reduce is not None:
        stats = reduce(stats)
    n = stats[1].clamp(min=1)
    mean = stats[0] / n
    var = (stats[2] / n - mean * mean).clamp(min=0)
    out = xd - mean
    if std_norm:
        out = out * torch.rsqrt(var.clamp(min=1e-8))
    return _zero_off(out, on).to(x.dtype)


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
    """Per-token (advantages, returns) [B, T] for estimator ``name`` from already-shaped token rewards.

    - ``gae``: (A, R) = ``gae(r, V, m, γ, λ)``, then A is whitened;
    - ``reinforce``: A = R = G_t = Σ_{k≥t} γ^{k−t} r_k, then A is whitened;
    - ``reinforce_baseline``: as reinforce with γ = 1 (the group baseline is already in r), whitened;
    - ``rloo``, ``group_norm``, ``dr_grpo``: A = R = G_t with γ = 1, not whitened.

    Whitening is ``whiten(A, m, std_norm=not no_std_norm)``: ``no_std_norm`` only centres.
    With only a final reward and no KL, γ = 1 gives A_t = shaped r at every action token.
    """
    check_estimator(name)
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

    keep_i = 1[low < mean_{j ∈ group(i)} r_j < high]. Groups where every sample succeeds or
    every one fails (0/1 scores, range (0, 1)) carry no learning signal for group
    baselines; they are dropped.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    mean = rewards.double().view(-1, group_size).mean(-1)
    keep = (mean > low) & (mean < high)
    return keep.repeat_interleave(group_size)
