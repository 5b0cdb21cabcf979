"""Importance-sampling estimates of P(r < η) from samples of a proposal q.

A rare bad output (P ~ 1e-4) is almost never seen in a few thousand samples of p itself; a
proposal q that puts much of its mass on bad outputs (RePULSe's learned q, or any red-team
sampler) sees it often.  Reweighting each q-sample s_i by w_i = p(s_i) / q(s_i) corrects for
sampling from the wrong distribution:

    P_p(r < η) = E_p[1[r < η]] = E_q[w · 1[r < η]].

Inputs are per-sample *sequence* log-probabilities log p(s_i) and log q(s_i) - the sums over
the response's tokens of log p(s_t | x, s_<t) with padding masked out (spec §6.1: an unmasked
sum biases the weights; :func:`masked_sequence_logprob` does the masked sum) - and the rewards.
Requirement: q(s) > 0 wherever p(s) > 0 and r(s) < η, otherwise the estimator is biased low.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from repulse.errors import warn_once
from repulse.evaluation.tail_stats import as_array, normal_quantile

__all__ = ["ISEstimate", "importance_prob_below", "importance_weights", "masked_sequence_logprob"]


@dataclass(frozen=True)
class ISEstimate:
    """The result of :func:`importance_prob_below` (all probabilities, not logs).

    estimate      unbiased  (1/n) Σ w_i·1_i
    low, high     CLT interval of ``estimate``: estimate ∓ z·sd(w·1)/√n, clipped to [0, 1]
    std_err       sd(w·1)/√n (ddof 1)
    self_normalised  Σ w_i·1_i / Σ w_i (consistent, biased for finite n; needs p, q only up to
                  a constant)
    sn_low, sn_high  delta-method interval: sn ∓ z·√(Σ w_i²(1_i - sn)²) / Σ w_i
    ess           effective sample size (Σ w)² / Σ w² ∈ [1, n]: how many p-samples the weighted
                  q-samples are worth for estimating means under p
    n             number of samples; ``n_hits`` how many had r < η
    """

    estimate: float
    low: float
    high: float
    std_err: float
    self_normalised: float
    sn_low: float
    sn_high: float
    ess: float
    n: int
    n_hits: int
    ci: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def masked_sequence_logprob(token_logprobs: Any, mask: Any) -> np.ndarray:
    """log p(s) = Σ_t m_t · log p(s_t | x, s_<t) per row of [n, T] per-token log-probs.

    Positions with m_t = 0 (padding, prompt) contribute nothing, whatever value they hold.
    """
    if hasattr(token_logprobs, "detach"):
        token_logprobs = token_logprobs.detach().to("cpu").double().numpy()
    if hasattr(mask, "detach"):
        mask = mask.detach().to("cpu").numpy()
    lp = np.asarray(token_logprobs, dtype=np.float64)
    m = np.asarray(mask).astype(bool)
    if lp.shape != m.shape:
        raise ValueError(f"token log-probs {lp.shape} and mask {m.shape} differ in shape")
    return np.where(m, lp, 0.0).sum(axis=-1)


def importance_weights(log_p: Any, log_q: Any) -> tuple[np.ndarray, float]:
    """Scaled weights and their log-scale: w_i = exp(c) · ŵ_i with ŵ_i = exp(log p_i - log q_i - c).

    c = max_i (log p_i - log q_i), so ŵ ≤ 1 never overflows even when single weights exceed
    float64's range; ratio statistics (self-normalised estimate, ESS) do not depend on c.
    """
    lp = as_array(log_p, "log_p")
    lq = as_array(log_q, "log_q")
    if lp.shape != lq.shape:
        raise ValueError(f"log_p has {lp.size} values but log_q has {lq.size}")
    if (np.isneginf(lq) & ~np.isneginf(lp)).any():
        raise ValueError("a sample has q(s) = 0 but p(s) > 0: it cannot have been drawn from q")
    log_w = lp - lq
    log_w = np.where(np.isneginf(lp), -np.inf, log_w)
    c = float(np.max(log_w))
    if not math.isfinite(c):
        raise ValueError("every importance weight is zero (p(s) = 0 for all samples)")
    return np.exp(log_w - c), c


def importance_prob_below(log_p: Any, log_q: Any, rewards: Any, eta: float, ci: float = 0.95) -> ISEstimate:
    """Estimate P_p(r < η) from n samples s_i ~ q with weights w_i = p(s_i)/q(s_i).

    * Unbiased:         P̂ = (1/n) Σ_i w_i·1[r_i < η];  E_q[P̂] = P exactly.  Its CLT interval
      P̂ ∓ z_{(1+c)/2}·sd(w·1)/√n covers P with probability → c as n grows.
    * Self-normalised:  P̃ = Σ_i w_i·1[r_i < η] / Σ_i w_i  (usable when p or q is known only up
      to a constant; bias O(1/n)).
    * ESS = (Σ w)² / Σ w² - a small ESS (≪ n) means a few samples dominate and the interval is
      not to be trusted; a warning is printed when ESS < 10.

    If no sample is bad the estimate and its interval are [0, 0] - the CLT says nothing then;
    it only means P is probably small compared with 1/(n · typical w on the bad set).
    """
    w_scaled, c = importance_weights(log_p, log_q)
    r = as_array(rewards, "rewards")
    if r.size != w_scaled.size:
        raise ValueError(f"{r.size} rewards but {w_scaled.size} log-probabilities")
    n = r.size
    hit = (r < eta).astype(np.float64)
    scale = math.exp(c) if c < 709.0 else math.inf
    z = normal_quantile(0.5 + ci / 2.0)

    terms = w_scaled * hit  # (w·1) / exp(c)
    est = float(np.mean(terms)) * scale if np.any(hit) else 0.0
    sd = float(np.std(terms, ddof=1)) * scale if n > 1 and np.any(hit) else 0.0
    se = sd / math.sqrt(n)
    low, high = max(0.0, est - z * se), min(1.0, est + z * se)

    sum_w = float(np.sum(w_scaled))
    sn = float(np.sum(terms) / sum_w)
    sn_se = float(np.sqrt(np.sum(w_scaled**2 * (hit - sn) ** 2)) / sum_w)
    ess = sum_w**2 / float(np.sum(w_scaled**2))
    if ess < 10:
        warn_once(
            "importance.low_ess",
            f"importance sampling: effective sample size {ess:.1f} of {n} - a few samples dominate, "
            "the interval is unreliable (is the proposal far from p?)",
        )
    return ISEstimate(
        estimate=est,
        low=low,
        high=high,
        std_err=se,
        self_normalised=sn,
        sn_low=max(0.0, sn - z * sn_se),
        sn_high=min(1.0, sn + z * sn_se),
        ess=ess,
        n=n,
        n_hits=int(hit.sum()),
        ci=ci,
    )
