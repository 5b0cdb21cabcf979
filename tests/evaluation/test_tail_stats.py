"""Tail statistics against hand-derived numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import repulse.errors
from repulse.evaluation.tail_stats import (
    bootstrap_ci,
    cvar,
    cvar_count,
    normal_quantile,
    prob_below,
    regularized_incomplete_beta,
    student_t_cdf,
    student_t_quantile,
    summarise,
    t_interval,
    wilson_interval,
)


def test_prob_below_is_strict():
    r = [-3.0, -1.0, 0.0, 2.0]
    assert prob_below(r, 0.0) == 0.5  # -3, -1 (0 itself is not below 0)
    assert prob_below(r, 0.5) == 0.75
    assert prob_below(r, -3.0) == 0.0
    assert prob_below(torch.tensor(r), 10.0) == 1.0
    with pytest.raises(ValueError, match="NaN"):
        prob_below([1.0, float("nan")], 0.0)


def test_cvar_hand_values():
    r = [2.0, -1.0, 0.0, -3.0]  # order does not matter
    assert cvar(r, 0.25) == -3.0  # k = ceil(1) = 1
    assert cvar(r, 0.5) == -2.0  # k = 2: (-3 - 1) / 2
    assert cvar(r, 0.3) == -2.0  # k = ceil(1.2) = 2
    assert cvar(r, 0.3, rounding="floor") == -3.0  # reference code: floor(1.2) = 1
    assert cvar(r, 1e-6) == -3.0  # at least one sample
    assert cvar(r, 1.0) == pytest.approx(-0.5)  # all samples: the mean
    # ties: the value does not depend on which tied sample is taken
    assert cvar([1.0, -2.0, -2.0, 5.0], 0.25) == -2.0


def test_cvar_count_matches_paper_sizes_and_ignores_float_noise():
    assert cvar_count(50_000, 1e-4) == 5 == cvar_count(50_000, 1e-4, "floor")
    assert cvar_count(10_000, 0.003) == 30 == cvar_count(10_000, 0.003, "floor")
    assert 0.07 * 100 > 7  # float noise ...
    assert cvar_count(100, 0.07) == 7  # ... does not add a sample
    with pytest.raises(ValueError):
        cvar_count(10, 0.0)


def test_student_t_and_normal_quantiles_against_tables():
    table = {1: 12.706204736, 2: 4.302652730, 3: 3.182446305, 4: 2.776445105, 9: 2.262157163, 30: 2.042272456}
    for df, t in table.items():
        assert student_t_quantile(0.975, df) == pytest.approx(t, abs=1e-8)
    assert student_t_quantile(0.995, 3) == pytest.approx(5.840909310, abs=1e-8)
    assert student_t_quantile(0.05, 7) == pytest.approx(-1.894578605, abs=1e-8)
    assert normal_quantile(0.975) == pytest.approx(1.959963985, abs=1e-8)
    assert student_t_cdf(0.0, 5) == 0.5
    assert student_t_cdf(1.0, 1) == pytest.approx(0.75)  # Cauchy: 1/2 + atan(1)/pi
    assert regularized_incomplete_beta(1.0, 1.0, 0.3) == pytest.approx(0.3)  # uniform CDF
    assert regularized_incomplete_beta(2.0, 3.0, 0.4) == pytest.approx(0.5248)  # P(Binomial(4, 0.4) >= 2)


def test_t_interval_hand_calc():
    mean, low, high = t_interval([1.0, 2.0, 3.0, 4.0])
    s = math.sqrt(5.0 / 3.0)  # ddof-1 std of 1..4
    half = 3.182446305 * s / 2.0
    assert mean == 2.5
    assert (low, high) == (pytest.approx(2.5 - half, abs=1e-8), pytest.approx(2.5 + half, abs=1e-8))
    m1, l1, h1 = t_interval([7.0])
    assert m1 == 7.0 and math.isnan(l1) and math.isnan(h1)


def test_bootstrap_is_reproducible_and_seeded():
    vals = [0.1, 0.4, 0.35, 0.8, 0.25, 0.6]
    a = bootstrap_ci(vals, n_boot=2000, seed=0)
    assert a == bootstrap_ci(vals, n_boot=2000, seed=0)
    assert a != bootstrap_ci(vals, n_boot=2000, seed=1)
    assert min(vals) <= a[0] < np.mean(vals) < a[1] <= max(vals)
    # a statistic without an axis argument gives the same interval as the vectorised path
    assert bootstrap_ci(vals, lambda v: float(np.mean(v)), n_boot=500, seed=3) == pytest.approx(
        bootstrap_ci(vals, np.mean, n_boot=500, seed=3)
    )
    assert bootstrap_ci([4.2]) == (4.2, 4.2)


def test_wilson_interval():
    low, high = wilson_interval(0, 100)
    assert low == 0.0 and high == pytest.approx(0.0370, abs=1e-4)
    low, high = wilson_interval(50, 100)
    assert (low, high) == (pytest.approx(0.4038, abs=1e-4), pytest.approx(0.5962, abs=1e-4))


def test_summarise_over_seeds():
    seeds = {
        1: {"reward": [-6.0, -1.0, 0.0, 2.0], "return": [-7.0, -1.5, 0.0, 1.0]},
        2: {"reward": [-8.0, -4.0, 1.0, 3.0], "return": [-8.0, -4.0, 0.5, 2.5]},
        3: {"reward": [-2.0, 0.0, 1.0, 1.0], "return": [-2.0, 0.0, 1.0, 1.0]},
    }
    out = summarise(seeds, eta=-5.0, cvar_levels=[0.25, 0.5], n_boot=1000)
    assert out["ci_over"] == "seeds" and out["n_seeds"] == 3 and out["seeds"] == [1, 2, 3]
    assert out["p_bad"]["per_seed"] == [0.25, 0.25, 0.0]
    assert out["p_bad"]["mean"] == pytest.approx(1 / 6)
    assert out["cvar@0.25"]["per_seed"] == [-6.0, -8.0, -2.0]
    assert out["cvar@0.5"]["per_seed"] == [-3.5, -6.0, -1.0]
    assert out["cvar@0.5"]["k"] == [2, 2, 2]
    assert out["avg_reward"]["per_seed"] == [-1.25, -2.0, 0.0]
    assert out["avg_return"]["per_seed"] == pytest.approx([-1.875, -2.25, 0.0])
    for key in ("p_bad", "cvar@0.25", "avg_reward", "avg_return"):
        block = out[key]
        assert block["low"] <= block["mean"] <= block["high"]
        expected = bootstrap_ci(block["per_seed"], np.mean, n_boot=1000, seed=0)
        assert (block["low"], block["high"]) == expected
    assert out == summarise(seeds, eta=-5.0, cvar_levels=[0.25, 0.5], n_boot=1000)  # reproducible
    import json

    json.dumps(out)  # JSON-ready


def test_summarise_single_run_and_eta_warning(monkeypatch, capsys):
    monkeypatch.setattr(repulse.errors, "_warned", set())
    rng = np.random.default_rng(0)
    r = rng.normal(size=400)
    out = summarise([r], eta=-1.0, cvar_levels=[0.01])
    assert out["ci_over"] == "samples" and "avg_return" not in out
    k = int((r < -1.0).sum())
    assert (out["p_bad"]["low"], out["p_bad"]["high"]) == wilson_interval(k, 400)
    assert out["cvar@0.01"]["low"] <= out["cvar@0.01"]["mean"] <= out["cvar@0.01"]["high"]
    assert capsys.readouterr().err == ""
    summarise([r], eta=-50.0)
    assert "outside the range of rewards" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no 'reward' key"):
        summarise([{"rew": [1.0]}], eta=0.0)
