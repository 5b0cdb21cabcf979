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

**What it is reliable for.** The estimate is reliable for the event the proposal was trained
to find - RePULSe's q targets the low-reward tail, so P_p(r < η) for the η it was trained
with (or a nearby one). There q draws many bad samples with moderate weights, and a few
thousand of them can estimate a probability near 1e-6, for which naive sampling from p would
need hundreds of millions. For
another event (say one list of bad words that q seldom produces) the few hits carry large
weights, and the estimate can be off by an order of magnitude while its interval looks
narrow; where q never produces part of the event, nothing can reveal it.

**Effective sample size.** Every estimate comes with the effective sample size of the
weights it averages, ESS(v) = (Σ v_i)² / Σ v_i² ∈ [1, n] (n equal weights: n; one weight
dominating: 1), and :func:`ess_too_small` flags it when ESS < 100 or ESS < 1% of n - then a
handful of samples carry the estimate, its interval is not to be trusted, and ``eval-tail``
prints a one-line warning. The unbiased estimate averages v = w·1[r < η] (``ess_event``: how
many samples of the event it effectively rests on); the self-normalised one, Σ w·1 / Σ w,
also divides by Σ w, so it needs the whole weight vector to be well spread (``ess``, Kong's
rule: Var ≈ Var_p / ESS). The self-normalised estimate is biased (O(1/n), and off by
orders of magnitude when the weights' ESS is a few) and is labelled so everywhere; it is
reported because it needs p and q only up to a constant.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from repulse.evaluation.tail_stats import as_array, normal_quantile

__all__ = [
    "ISEstimate",
    "effective_sample_size",
    "ess_too_small",
    "importance_prob_below",
    "importance_summary_lines",
    "importance_weights",
    "masked_sequence_logprob",
]

MIN_ESS = 100.0  # below this many effective samples an IS estimate is not to be trusted ...
MIN_ESS_FRACTION = 0.01  # ... nor below this share of the samples drawn


def effective_sample_size(values: Any) -> float:
    """ESS(v) = (Σ v)² / Σ v² for non-negative weights ``v`` (0.0 when all are zero).

    n equal weights give n; weights (3, 1) give 16/10 = 1.6: the larger one dominates.
    """
    v = np.asarray(values, dtype=np.float64)
    sq = float(np.sum(v * v))
    return float(np.sum(v)) ** 2 / sq if sq > 0 else 0.0


def ess_too_small(ess: float, n: int) -> bool:
    """The rule for trusting an IS estimate: not when ESS < 100 or ESS < 1% of the n samples.

    100 effective samples give a relative standard error of about 10% for a mean of weights
    of one sign; the 1% share catches weights so uneven that almost all of n is wasted.
    """
    return ess < MIN_ESS or ess < MIN_ESS_FRACTION * n


@dataclass(frozen=True)
class ISEstimate:
    """The result of :func:`importance_prob_below` (all probabilities, not logs).

    estimate      unbiased  (1/n) Σ w_i·1_i
    low, high     CLT interval of ``estimate``: estimate ∓ z·sd(w·1)/√n, clipped to [0, 1]
    std_err       sd(w·1)/√n (ddof 1)
    ess_event     ESS of the terms w_i·1_i: how many samples of the event the estimate rests on
    estimate_reliable  not :func:`ess_too_small` (``ess_event``, n)
    self_normalised_biased  Σ w_i·1_i / Σ w_i (consistent, but biased for finite n - far off
                  when ``ess`` is small; needs p, q only up to a constant)
    self_normalised_biased_low, _high  delta-method interval: sn ∓ z·√(Σ w_i²(1_i - sn)²) / Σ w_i
    ess           ESS of all weights, (Σ w)² / Σ w² ∈ [1, n]: how many p-samples the weighted
                  q-samples are worth for estimating means under p
    self_normalised_biased_reliable  not :func:`ess_too_small` (``ess``, n)
    n             number of samples; ``n_hits`` how many had r < η
    """

    estimate: float
    low: float
    high: float
    std_err: float
    ess_event: float
    estimate_reliable: bool
    self_normalised_biased: float
    self_normalised_biased_low: float
    self_normalised_biased_high: float
    ess: float
    self_normalised_biased_reliable: bool
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
    * Self-normalised, biased:  P̃ = Σ_i w_i·1[r_i < η] / Σ_i w_i  (usable when p or q is known
      only up to a constant; bias O(1/n), large when the weights' ESS is small).
    * ``ess_event`` = ESS(w·1) for the unbiased estimate, ``ess`` = ESS(w) for the
      self-normalised one; each is flagged unreliable by :func:`ess_too_small` (ESS < 100 or
      < 1% of n). Reliable for the event q targets (see the module docstring).

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
    ess = effective_sample_size(w_scaled)
    ess_event = effective_sample_size(terms)
    return ISEstimate(
        estimate=est,
        low=low,
        high=high,
        std_err=se,
        ess_event=ess_event,
        estimate_reliable=not ess_too_small(ess_event, n),
        self_normalised_biased=sn,
        self_normalised_biased_low=max(0.0, sn - z * sn_se),
        self_normalised_biased_high=min(1.0, sn + z * sn_se),
        ess=ess,
        self_normalised_biased_reliable=not ess_too_small(ess, n),
        n=n,
        n_hits=int(hit.sum()),
        ci=ci,
    )


def importance_summary_lines(eta: float, est: dict[str, Any], where: str = "") -> tuple[str, list[str]]:
    """(the line that reports an IS estimate with its ESS, one warning line per unreliable estimate).

    ``est`` is an :class:`ISEstimate` as a dict (as saved in ``tail_summary.json``); ``where``
    names the samples file when there are several.
    """
    at = f"{where}: " if where else ""
    n = int(est["n"])
    pct = f"{100 * est['ci']:g}%"
    line = (
        f"{at}P_p(r < {eta:g}) by importance sampling = {est['estimate']:.3e} "
        f"({pct} CI {est['low']:.3e} to {est['high']:.3e}; {est['n_hits']} of {n} samples below the "
        f"threshold, ESS {est['ess_event']:.1f}); self-normalised (biased) = "
        f"{est['self_normalised_biased']:.3e} (weights' ESS {est['ess']:.1f} of {n})"
    )
    rule = f"below max({MIN_ESS:g}, {100 * MIN_ESS_FRACTION:g}% of {n} samples)"
    warnings = []
    if est["n_hits"] == 0:
        warnings.append(
            f"{at}no sample had a reward below {eta:g}: the importance-sampling estimate 0 says only that "
            "P_p(r < eta) is small for this proposal."
        )
    elif not est["estimate_reliable"]:
        warnings.append(
            f"{at}the importance-sampling estimate of P_p(r < {eta:g}) rests on an effective sample size of "
            f"{est['ess_event']:.1f} ({rule}): do not trust it or its interval; it is reliable only for the "
            "event the proposal was trained to find."
        )
    if est["n_hits"] and not est["self_normalised_biased_reliable"]:
        warnings.append(
            f"{at}the self-normalised estimate {est['self_normalised_biased']:.3e} of P_p(r < {eta:g}) is "
            f"biased and its weights' effective sample size is {est['ess']:.1f} ({rule}): do not use it."
        )
    return line, warnings
