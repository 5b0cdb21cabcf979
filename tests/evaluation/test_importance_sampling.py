"""Importance sampling of a rare event: unbiased, covered by its CI, far better than naive."""

from __future__ import annotations

import math

import numpy as np
import pytest

from repulse.evaluation.importance import (
    effective_sample_size,
    ess_too_small,
    importance_prob_below,
    importance_summary_lines,
    importance_weights,
    masked_sequence_logprob,
)

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
    assert est.self_normalised_biased_low <= P_BAD <= est.self_normalised_biased_high
    assert est.estimate_reliable and est.ess_event > 100  # the event q was built to find
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
    assert est.self_normalised_biased == pytest.approx(3 / 4)
    assert est.ess == pytest.approx(16 / 6)  # (1 + 1 + 2)² / (1 + 1 + 4)
    assert est.ess_event == pytest.approx(9 / 5)  # terms w·1 = (1, 0, 2): (1 + 2)² / (1 + 4)
    assert not est.estimate_reliable and not est.self_normalised_biased_reliable  # 3 samples
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


# --------------------------------------------------------------------------- effective sample size


@pytest.mark.parametrize(
    "weights, ess",
    [
        ([1.0, 1.0, 1.0, 1.0], 4.0),  # equal weights: every sample counts
        ([3.0, 1.0], 1.6),  # 4² / (9 + 1)
        ([5.0, 0.0, 0.0], 1.0),  # one sample carries everything
        ([2.0, 2.0, 1.0, 0.0], 25 / 9),  # 5² / (4 + 4 + 1)
        ([0.0, 0.0], 0.0),  # nothing: no estimate rests on anything
    ],
)
def test_effective_sample_size_by_hand(weights, ess):
    assert effective_sample_size(weights) == pytest.approx(ess)


@pytest.mark.parametrize(
    "ess, n, small",
    [
        (99.9, 1000, True),  # below 100
        (100.0, 1000, False),  # 100 and 10% of n
        (150.0, 20000, True),  # 100 or more, but under 1% of n (200)
        (200.0, 20000, False),
    ],
)
def test_the_ess_rule(ess, n, small):
    assert ess_too_small(ess, n) is small


def test_an_event_the_proposal_does_not_target_is_flagged():
    """q = p except that q puts 10x less mass on outcome 0, the only bad one; 1,000 samples of
    which 1 is bad with weight 10 (all others weight ~1): the unbiased estimate 10/1000 = 0.01
    rests on one sample (event ESS 1) and is flagged; the self-normalised one divides by Σ w ≈ 1009."""
    log_w = np.zeros(1000)
    log_w[0] = math.log(10.0)
    rewards = np.ones(1000)
    rewards[0] = -10.0
    est = importance_prob_below(log_w, np.zeros(1000), rewards, ETA)
    assert est.estimate == pytest.approx(10 / 1000)
    assert est.ess_event == pytest.approx(1.0) and not est.estimate_reliable
    assert est.self_normalised_biased == pytest.approx(10 / 1009)
    assert est.ess == pytest.approx(1009**2 / 1099) and est.self_normalised_biased_reliable
    line, warnings = importance_summary_lines(ETA, est.as_dict())
    assert "= 1.000e-02" in line and "1 of 1000 samples below the threshold, ESS 1.0" in line, line
    assert "self-normalised (biased) = 9.911e-03 (weights' ESS 926.4 of 1000)" in line, line
    (warning,) = warnings
    assert "effective sample size of 1.0 (below max(100, 1% of 1000 samples))" in warning, warning


def test_a_self_normalised_estimate_on_few_effective_samples_is_called_biased():
    """The proposal's weights are all tiny except one non-bad sample's: Σ w is dominated by it, so
    the self-normalised estimate is unreliable (weights' ESS ≈ 1) while the event's own terms are
    equal (event ESS = 500, unbiased estimate reliable)."""
    log_p = np.full(1000, math.log(1e-3))
    log_p[-1] = math.log(50.0)  # one huge weight outside the event
    rewards = np.where(np.arange(1000) < 500, -10.0, 1.0)
    est = importance_prob_below(log_p, np.zeros(1000), rewards, ETA)
    assert est.ess_event == pytest.approx(500.0) and est.estimate_reliable
    assert est.ess < 1.1 and not est.self_normalised_biased_reliable
    _, warnings = importance_summary_lines(ETA, est.as_dict())
    (warning,) = warnings
    assert "self-normalised estimate" in warning and "is biased" in warning and "do not use it" in warning
