"""Tail-risk statistics of reward samples, and the confidence intervals that go with them.

Everything here is a pure function of numbers (numpy arrays, torch tensors or lists): no
models, no files.  The quantities are the ones RePULSe is judged by (spec §3):

* ``prob_below(r, η)``  = (1/n) Σ_i 1[r_i < η]  - the probability of a bad output, estimated
  from held-out samples (strict ``<``: a reward exactly at the threshold is *not* bad);
* ``cvar(r, a)``        = mean of the k = ⌈a·n⌉ lowest rewards - the lower-tail conditional
  value at risk at level a (see :func:`cvar` for the exact convention);
* ``bootstrap_ci``      - seeded percentile bootstrap over seeds/runs (error bars of frontiers);
* ``t_interval``        - mean ± t_{(1+c)/2, n-1}·s/√n (bands of training curves over seeds);
* ``summarise``         - all of the above for a set of runs, as one JSON-ready dict.

The Student-t and normal quantiles are computed here (bisection on the CDF, written with the
regularised incomplete beta function), so the package does not need scipy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from repulse.errors import warn_once

__all__ = [
    "as_array",
    "bootstrap_ci",
    "cvar",
    "cvar_count",
    "normal_quantile",
    "prob_below",
    "regularized_incomplete_beta",
    "student_t_cdf",
    "student_t_quantile",
    "summarise",
    "t_interval",
    "wilson_interval",
]

Rounding = Literal["ceil", "floor"]


# --------------------------------------------------------------------------- inputs


def as_array(values: Any, name: str = "values") -> np.ndarray:
    """``values`` (list, numpy array, torch tensor) as a 1-D float64 numpy array without NaN.

    NaN is rejected because ``nan < η`` is False: a NaN reward would silently count as "good".
    ±inf is allowed (it orders correctly).
    """
    if hasattr(values, "detach"):  # torch tensor, without importing torch here
        values = values.detach().to("cpu").double().numpy()
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN ({int(np.isnan(arr).sum())} of {arr.size})")
    return arr


# --------------------------------------------------------------------------- point statistics


def prob_below(rewards: Any, eta: float) -> float:
    """P̂(r < η) = (1/n) Σ_i 1[r_i < η]: the fraction of samples whose reward is strictly below η.

    This is the paper's estimator of the probability of a bad output (spec §3.1): each sample is
    a Bernoulli draw of the event, so the mean is unbiased with variance P(1-P)/n.
    """
    r = as_array(rewards, "rewards")
    if r.size == 0:
        raise ValueError("prob_below needs at least one reward")
    return float(np.mean(r < eta))


def cvar_count(n: int, level: float, rounding: Rounding = "ceil") -> int:
    """The number k of worst samples that :func:`cvar` averages: k = max(1, ⌈a·n⌉) (or ⌊a·n⌋).

    a·n is rounded to 9 decimals first, so that floating-point noise does not move k across an
    integer (0.07·100 evaluates to 7.000000000000001, whose plain ceiling would be 8).
    """
    if not 0.0 < level <= 1.0:
        raise ValueError(f"CVaR level must be in (0, 1], got {level}")
    if n <= 0:
        raise ValueError("CVaR needs at least one sample")
    if rounding not in ("ceil", "floor"):
        raise ValueError(f"rounding must be 'ceil' or 'floor', got {rounding!r}")
    an = round(level * n, 9)
    k = math.ceil(an) if rounding == "ceil" else math.floor(an)
    return int(min(n, max(1, k)))


def cvar(rewards: Any, level: float, rounding: Rounding = "ceil") -> float:
    """Lower-tail CVaR at level a: the mean of the k worst (lowest) rewards, k = max(1, ⌈a·n⌉).

    CVaR_a(r) = (1/k) Σ_{i=1..k} r_(i),  with r_(1) ≤ r_(2) ≤ … ≤ r_(n) the sorted rewards.

    Conventions, stated exactly:

    * *lower* tail: small rewards are bad, so CVaR is the average of the worst outcomes (a
      larger CVaR is better);
    * k = ⌈a·n⌉ (``rounding="ceil"``, default): the averaged set always covers at least a
      fraction a of the samples; k is at least 1 and at most n; a·n is rounded to 9 decimals
      before the ceiling (see :func:`cvar_count`);
    * ties: the value depends only on the multiset of the k smallest rewards, which is the same
      whichever of several tied samples is taken, so ties need no rule;
    * it averages whatever is passed - the reference code and we use raw *rewards* (spec §3.2,
      §6 bug 13: the paper's caption says "return"); pass returns to get the CVaR of returns.

    Reference code (spec §3.2) uses k = max(1, ⌊a·n⌋) (``rounding="floor"``).  The two agree
    whenever a·n is an integer - which is the case for the paper's numbers (a = 1e-4,
    n = 50,000 → k = 5; a = 0.003, n = 10,000 → k = 30) - and differ by one sample otherwise.
    Example: rewards [-3, -1, 0, 2] at a = 0.25 → k = 1 → -3; at a = 0.5 → k = 2 → -2.
    """
    r = as_array(rewards, "rewards")
    k = cvar_count(r.size, level, rounding)
    worst = np.partition(r, k - 1)[:k]
    return float(np.mean(worst))


# --------------------------------------------------------------------------- quantiles (no scipy)


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of I_x(a, b), evaluated with the modified Lentz method."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        # even step
        num = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        # odd step
        num = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1.0) < 1e-15:
            break
    return h


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) = B(x; a, b) / B(a, b) for a, b > 0 and 0 ≤ x ≤ 1.

    Uses the continued fraction directly where it converges fast (x < (a+1)/(a+b+2)) and the
    symmetry I_x(a, b) = 1 - I_{1-x}(b, a) elsewhere.
    """
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T ≤ t) for Student's t with ``df`` degrees of freedom (df = inf: standard normal).

    For t ≥ 0: F(t) = 1 - ½·I_{ν/(ν+t²)}(ν/2, ½); the lower half follows by symmetry.
    """
    if math.isinf(df):
        return 0.5 * (1.0 + math.erf(t / math.sqrt(2.0)))
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    tail = 0.5 * regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (df = inf: standard normal), by bisection on the CDF.

    Accurate to ~1e-12 absolute; e.g. t_{0.975, 1} = 12.7062, t_{0.975, 4} = 2.7764,
    t_{0.975, ∞} = 1.9600.
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile level must be in (0, 1), got {p}")
    if p < 0.5:
        return -student_t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
        if hi > 1e12:
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if student_t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def normal_quantile(p: float) -> float:
    """The p-quantile z_p of the standard normal distribution (z_{0.975} ≈ 1.959964)."""
    return student_t_quantile(p, math.inf)


# --------------------------------------------------------------------------- intervals


def t_interval(values: Any, ci: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) with low/high = x̄ ∓ t_{(1+c)/2, n-1} · s / √n, s the ddof-1 std.

    The t-based band the paper draws around toy training curves over seeds (spec §5.1).  With
    fewer than two values the spread is unknown and low = high = NaN (a plot shows no band).
    """
    x = as_array(values)
    if x.size == 0:
        raise ValueError("t_interval needs at least one value")
    mean = float(np.mean(x))
    if x.size < 2:
        return mean, math.nan, math.nan
    half = student_t_quantile(0.5 + ci / 2.0, x.size - 1) * float(np.std(x, ddof=1)) / math.sqrt(x.size)
    return mean, mean - half, mean + half


def wilson_interval(successes: int, n: int, ci: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion k/n.

    centre = (p̂ + z²/2n) / (1 + z²/n),  half = z·√(p̂(1-p̂)/n + z²/4n²) / (1 + z²/n).
    Unlike p̂ ± z·√(p̂(1-p̂)/n), it has non-zero width when k = 0 - the usual case for rare bad
    outputs - and never leaves [0, 1].
    """
    if n <= 0:
        raise ValueError("wilson_interval needs n > 0")
    z = normal_quantile(0.5 + ci / 2.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_ci(
    values_per_seed: Any,
    stat: Callable[..., Any] = np.mean,
    n_boot: int = 10000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI (low, high) of ``stat`` over seeds (or runs).

    Draw B = ``n_boot`` resamples of the n per-seed values with replacement, compute ``stat`` of
    each, and return the (1-c)/2 and (1+c)/2 quantiles of those B numbers.  The generator is
    ``np.random.default_rng(seed)``, so the same inputs and seed give the same interval (the
    reference code's unseeded bootstrap moved the error bars between plots; spec §6.16).

    ``stat`` is called as ``stat(resamples, axis=1)`` on the (B, n) matrix when it accepts
    ``axis`` (np.mean, np.median, ...), else once per resample.  One value gives (v, v).
    """
    x = as_array(values_per_seed, "values_per_seed")
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(int(n_boot), x.size))
    resamples = x[idx]
    try:
        boot = np.asarray(stat(resamples, axis=1), dtype=np.float64)
        if boot.shape != (int(n_boot),):
            raise TypeError
    except TypeError:
        boot = np.array([float(stat(row)) for row in resamples])
    low, high = np.quantile(boot, [(1.0 - ci) / 2.0, (1.0 + ci) / 2.0])
    return float(low), float(high)


def _bootstrap_samples_cvar(
    r: np.ndarray, level: float, rounding: Rounding, n_boot: int, ci: float, seed: int
) -> tuple[float, float]:
    """Percentile bootstrap of CVaR over the samples of one run, in chunks to bound memory."""
    rng = np.random.default_rng(seed)
    k = cvar_count(r.size, level, rounding)
    chunk = max(1, int(2_000_000 // max(1, r.size)))
    out: list[np.ndarray] = []
    done = 0
    while done < n_boot:
        m = min(chunk, n_boot - done)
        res = r[rng.integers(0, r.size, size=(m, r.size))]
        out.append(np.partition(res, k - 1, axis=1)[:, :k].mean(axis=1))
        done += m
    boot = np.concatenate(out)
    low, high = np.quantile(boot, [(1.0 - ci) / 2.0, (1.0 + ci) / 2.0])
    return float(low), float(high)


# --------------------------------------------------------------------------- summary


def _entries(samples: Any) -> tuple[list[Any], list[Any]]:
    if isinstance(samples, Mapping):
        return list(samples.keys()), list(samples.values())
    if isinstance(samples, Sequence) or hasattr(samples, "__iter__"):
        items = list(samples)
        return list(range(len(items))), items
    raise TypeError("samples must be a sequence of per-seed entries or a mapping seed -> entry")


def _rewards_returns(entry: Any, label: Any) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(entry, Mapping):
        rew_key = next((k for k in ("reward", "rewards") if k in entry), None)
        if rew_key is None:
            raise ValueError(f"samples[{label!r}] has no 'reward' key (keys: {sorted(entry)})")
        ret_key = next((k for k in ("return", "returns") if k in entry), None)
        rewards = as_array(entry[rew_key], f"samples[{label!r}].reward")
        returns = None if ret_key is None else as_array(entry[ret_key], f"samples[{label!r}].return")
        if returns is not None and returns.size != rewards.size:
            raise ValueError(f"samples[{label!r}]: {rewards.size} rewards but {returns.size} returns")
        return rewards, returns
    rewards = as_array(entry, f"samples[{label!r}]")
    return rewards, None


def _stat_block(per_seed: list[float], low: float, high: float, **extra: Any) -> dict[str, Any]:
    block = {"mean": float(np.mean(per_seed)), "low": low, "high": high, "per_seed": list(per_seed)}
    block.update(extra)
    return block


def summarise(
    samples: Any,
    eta: float,
    cvar_levels: Sequence[float] = (),
    *,
    ci: float = 0.95,
    n_boot: int = 10000,
    seed: int = 0,
    cvar_rounding: Rounding = "ceil",
    n_boot_samples: int = 1000,
) -> dict[str, Any]:
    """Tail-risk summary of the held-out samples of one or more seeds, as a JSON-ready dict.

    ``samples``: a sequence of per-seed entries, or a mapping seed → entry.  An entry is either
    a 1-D array of rewards, or a mapping with ``"reward"`` (or ``"rewards"``) and optionally
    ``"return"`` (or ``"returns"``; r - λ·KL per sample) arrays of equal length.  One run is
    ``[rewards]``.

    Each statistic is computed per seed and reported as a block
    ``{"mean", "low", "high", "per_seed"}``: mean = the mean of the per-seed values (a seed with
    more samples does not weigh more), [low, high] its ``ci`` interval:

    * ``"p_bad"``          P̂(r < η) (:func:`prob_below`);
    * ``"cvar@{a:g}"``      CVaR of the *rewards* at each level a (:func:`cvar`; ``"k"`` lists k);
    * ``"avg_reward"``     mean reward;
    * ``"avg_return"``     mean return - only when every seed has returns.

    Intervals (``"ci_over"`` says which):

    * two or more seeds → ``"seeds"``: :func:`bootstrap_ci` of the mean of the per-seed values
      (the paper's frontier error bars, spec §4.1/§5.2), seeded by ``seed``;
    * one seed → ``"samples"``: within-run intervals - Wilson for P̂(r < η), t over samples for
      the averages, percentile bootstrap over samples (``n_boot_samples``) for CVaR (coarse for
      small k: the bootstrap of extreme order statistics is known to be unreliable).

    A warning is printed (once) when η lies outside the range of rewards seen: then P̂ is 0 or 1
    in every seed and says nothing about the tail - the threshold is probably on the wrong scale.
    """
    labels, entries = _entries(samples)
    if not entries:
        raise ValueError("summarise needs samples of at least one seed")
    data = [_rewards_returns(e, lab) for lab, e in zip(labels, entries)]
    for lab, (r, _) in zip(labels, data):
        if r.size == 0:
            raise ValueError(f"samples[{lab!r}] is empty")
    all_min = float(min(r.min() for r, _ in data))
    all_max = float(max(r.max() for r, _ in data))
    if not all_min < eta <= all_max:
        warn_once(
            f"tail_stats.eta_outside.{eta}",
            f"eta = {eta:g} is outside the range of rewards seen [{all_min:g}, {all_max:g}]: P(r < eta) is "
            f"{'0' if eta <= all_min else '1'} for every seed and says nothing about the tail; "
            "check the threshold's scale against the reward model.",
        )
    over_seeds = len(data) >= 2
    out: dict[str, Any] = {
        "eta": float(eta),
        "ci": float(ci),
        "ci_over": "seeds" if over_seeds else "samples",
        "n_seeds": len(data),
        "seeds": [lab if isinstance(lab, (int, float, str)) else str(lab) for lab in labels],
        "n_samples": [int(r.size) for r, _ in data],
        "reward_min": all_min,
        "reward_max": all_max,
    }

    def seed_ci(per_seed: list[float]) -> tuple[float, float]:
        return bootstrap_ci(per_seed, np.mean, n_boot=n_boot, ci=ci, seed=seed)

    # P(r < eta)
    p = [prob_below(r, eta) for r, _ in data]
    if over_seeds:
        lo, hi = seed_ci(p)
    else:
        r0 = data[0][0]
        lo, hi = wilson_interval(int(np.sum(r0 < eta)), r0.size, ci)
    out["p_bad"] = _stat_block(p, lo, hi)

    # CVaR of rewards
    for level in cvar_levels:
        vals = [cvar(r, level, cvar_rounding) for r, _ in data]
        ks = [cvar_count(r.size, level, cvar_rounding) for r, _ in data]
        if over_seeds:
            lo, hi = seed_ci(vals)
        else:
            lo, hi = _bootstrap_samples_cvar(data[0][0], level, cvar_rounding, n_boot_samples, ci, seed)
        out[f"cvar@{level:g}"] = _stat_block(vals, lo, hi, level=float(level), k=ks)

    # averages
    columns = {"avg_reward": [r for r, _ in data]}
    if all(ret is not None for _, ret in data):
        columns["avg_return"] = [ret for _, ret in data]  # type: ignore[misc]
    for name, arrays in columns.items():
        vals = [float(np.mean(a)) for a in arrays]
        if over_seeds:
            lo, hi = seed_ci(vals)
        else:
            _, lo, hi = t_interval(arrays[0], ci)
        out[name] = _stat_block(vals, lo, hi)
    return out
