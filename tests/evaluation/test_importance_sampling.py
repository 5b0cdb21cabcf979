"""Importance sampling of a rare event: unbiased, covered by its CI, far better than naive."""

from __future__ import annotations

import math

import numpy as np
import pytest

from repulse.evaluation.importance import importance_prob_below, importance_weights, masked_sequence_logprob

K = 1000  # outcomes of a categorical "LM"
BAD = np.arange(10)  # the rare bad set
P_BAD = 1e-3
ETA = -5.0


def _problem():
    """p: mass 1e-3 on the bad set (unevenly spread), q: 50% on the bad set (uniform there)."""
    rng = np.random.default_rng(123)
    p = np.empty(K)
    inside = rng.uniform(0.5, 1.5, size=BAD.size)
    p[BAD] = P_BAD * inside / inside.sum()
    outside = rng.uniform(0.5, 1.5, size=K - BAD.size)
    p[BAD.size :] = (1 - P_BAD) * outside / outside.sum()
    q = np.empty(K)
    q[BAD] = 0.5 / BAD.size
    q[BAD.size :] = 0.5 * p[BAD.size :] / p[BAD.size :].sum()
    reward = rng.uniform(0.0, 5.0, size=K)
    reward[BAD] = -10.0
    return p, q, reward


def _draw(dist, n, rng):
    return rng.choice(K, size=n, p=dist)


def test_truth_is_what_we_think():
    p, q, reward = _problem()
    assert float(p[reward < ETA].sum()) == pytest.approx(P_BAD)
    assert float(q[reward < ETA].sum()) == pytest.approx(0.5)


def test_one_estimate_lands_in_its_interval():
    p, q, reward = _problem()
    s = _draw(q, 500, np.random.default_rng(1))  # one draw; coverage over many is tested below
    est = importance_prob_below(np.log(p[s]), np.log(q[s]), reward[s], ETA)
    assert est.low <= P_BAD <= est.high
    assert est.sn_low <= P_BAD <= est.sn_high
    assert est.estimate == pytest.approx(P_BAD, rel=0.25)
    assert 0 < est.n_hits < 500 and est.n == 500
    assert 1 <= est.ess <= 500


def test_unbiased_coverage_and_naive_comparison():
    p, q, reward = _problem()
    rng = np.random.default_rng(1)
    n, reps = 500, 300
    estimates, covered, naive_zero = [], 0, 0
    for _ in range(reps):
        s = _draw(q, n, rng)
        est = importance_prob_below(np.log(p[s]), np.log(q[s]), reward[s], ETA)
        estimates.append(est.estimate)
        covered += est.low <= P_BAD <= est.high
        naive = np.mean(reward[_draw(p, n, rng)] < ETA)
        naive_zero += naive == 0.0
    estimates = np.array(estimates)
    # unbiased: the mean of many estimates is within 3 standard errors of the truth
    assert abs(estimates.mean() - P_BAD) < 3 * estimates.std(ddof=1) / math.sqrt(reps)
    # the 95% CLT interval covers the truth about 95% of the time
    assert 0.90 <= covered / reps <= 0.99
    # with the same n, IS is within 25% every time; naive sampling mostly sees no bad output at all
    assert np.all(np.abs(estimates / P_BAD - 1) < 0.25)
    assert naive_zero / reps > 0.5  # (1 - 1e-3)^500 ≈ 0.61


def test_hand_values_and_weights():
    # w = [1, 1, 2], bad = [True, False, True]
    log_p = np.log([0.1, 0.2, 0.4])
    log_q = np.log([0.1, 0.2, 0.2])
    est = importance_prob_below(log_p, log_q, [-6.0, 1.0, -7.0], ETA)
    assert est.estimate == pytest.approx((1 + 2) / 3)
    assert est.self_normalised == pytest.approx(3 / 4)
    assert est.ess == pytest.approx(16 / 6)
    terms = np.array([1.0, 0.0, 2.0])
    assert est.std_err == pytest.approx(terms.std(ddof=1) / math.sqrt(3))
    # huge log-weights do not overflow: ratios are scale-free
    w, c = importance_weights(log_p + 800.0, log_q)
    assert c == pytest.approx(800.0 + math.log(2.0))
    assert w.max() == 1.0


def test_no_hits_and_masking():
    est = importance_prob_below([0.0, 0.0], [0.0, 0.0], [1.0, 2.0], ETA)
    assert (est.estimate, est.low, est.high, est.n_hits) == (0.0, 0.0, 0.0, 0)
    lp = np.array([[-1.0, -2.0, 99.0], [-0.5, 7.0, 7.0]])
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    assert masked_sequence_logprob(lp, mask).tolist() == [-3.0, -0.5]
    with pytest.raises(ValueError, match="q\\(s\\) = 0"):
        importance_weights([0.0], [-np.inf])
