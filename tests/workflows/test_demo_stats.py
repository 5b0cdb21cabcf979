"""The demo's statistics over seeds, its claims and summary.json's schema, on hand-made numbers."""

from __future__ import annotations

import json
import math

import pytest

from repulse.workflows.demo.stats import check_claims, confirm_claims, derive_claims, interval
from repulse.workflows.demo.sweep import METHODS, RunSpec, all_runs, settings

T975_4 = 2.7764451051977987  # t_{0.975, 4}


def _per_seed(p_bad: list[float], reward: list[float]) -> dict:
    return {"p_bad": p_bad, "avg_reward": reward, "nondegenerate": [1.0] * len(p_bad)}


def _block(**methods) -> dict:
    return {"kl": {"methods": methods}}


def test_interval_is_geometric_for_probabilities():
    """log P(bad) of the 5 seeds: -10, -11, -12, -13, -14: mean -12, sd √2.5, half-width t·sd/√5."""
    values = [math.exp(-v) for v in (10, 11, 12, 13, 14)]
    i = interval(values, "p_bad")
    half = T975_4 * math.sqrt(2.5) / math.sqrt(5)
    assert i.centre == pytest.approx(math.exp(-12), rel=1e-12)
    assert math.log(i.low) == pytest.approx(-12 - half) and math.log(i.high) == pytest.approx(-12 + half)
    r = interval([1.0, 2.0, 3.0, 4.0, 5.0], "avg_reward")
    assert (r.centre, r.low) == (3.0, pytest.approx(3.0 - half))


def test_claims_are_the_separated_comparisons_either_way():
    """RePULSe's log P(bad) -20 ± 0.5 against REINFORCE's -10 ± 0.5 separates (a claim); against
    the transform's, whose seeds spread over -25..-12, it does not (no claim); the p-proposal's -30
    is lower (a claim the other way). Rewards: equal everywhere except the transform's, which is
    clearly higher than RePULSe's."""
    e = math.exp
    rep = _per_seed([e(-20.5), e(-20), e(-19.5), e(-20.2), e(-19.8)], [1.0, 1.1, 0.9, 1.0, 1.0])
    summary = {
        "settings": _block(
            repulse=rep,
            reinforce=_per_seed([e(-10.5), e(-10), e(-9.5), e(-10.2), e(-9.8)], [1.0, 1.1, 0.9, 1.0, 1.0]),
            reward_transform=_per_seed([e(-25), e(-12), e(-20), e(-14), e(-22)], [2.0, 2.1, 1.9, 2.0, 2.0]),
            p_proposal=_per_seed([e(-30.5), e(-30), e(-29.5), e(-30.2), e(-29.8)], [1.0, 1.1, 0.9, 1.0, 1.0]),
        )
    }
    claims = derive_claims(summary["settings"])
    assert claims == [
        {"setting": "kl", "lower": "repulse", "than": "reinforce", "metric": "p_bad"},
        {"setting": "kl", "lower": "repulse", "than": "reward_transform", "metric": "avg_reward"},
        {"setting": "kl", "lower": "p_proposal", "than": "repulse", "metric": "p_bad"},
    ]
    assert all(c["holds"] for c in check_claims(claims, summary))
    # the same claims on other seeds where RePULSe's P(bad) matches REINFORCE's: the first fails
    other = {"settings": {"kl": {"methods": dict(summary["settings"]["kl"]["methods"])}}}
    other["settings"]["kl"]["methods"]["repulse"] = _per_seed(
        [e(-10.4), e(-10.1), e(-9.6), e(-10.3), e(-9.9)], [1.0, 1.1, 0.9, 1.0, 1.0]
    )
    held = [c["holds"] for c in check_claims(claims, other)]
    assert held == [False, True, True]  # p-proposal (-30) is still below
    # a claim about a setting the other run does not have does not hold
    assert check_claims([{**claims[0], "setting": "kl0"}], other)[0]["holds"] is False


def test_design_is_equal_budget_and_equal_size():
    sets = settings()
    assert set(sets) == {"kl0", "kl"} and sets["kl0"].kl_coef == 0 < sets["kl"].kl_coef
    for s in sets.values():
        assert {len(s.grids[m]) for m in METHODS} == {4}  # the same number of settings per method
        assert len({s.samples(m) for m in METHODS}) == 1  # the same number of samples per run
        assert s.steps_per_eval("repulse") * 2 == s.steps_per_eval("reinforce")
        assert all(0 <= s.headline[m] < 4 for m in METHODS)
    runs = all_runs(sets, [100, 101])
    assert len(runs) == 2 * 4 * 4 * 2 and len({r.name for r in runs}) == len(runs)
    assert all(isinstance(r, RunSpec) for r in runs)
    assert len(all_runs(sets, [1, 2, 3], only_headline=True)) == 2 * 4 * 3


def test_importance_sampling_of_the_final_policy():
    """p = (.5, .3, .2), q = (.2, .3, .5), bad = {2nd, 3rd}: P = .5; Σ_bad p²/q = .09/.3 + .04/.5 = .38,
    Var = .38 - .25 = .13; with m = 100 the relative SE is √(.0013)/.5 and plain Monte Carlo needs
    (1 - .5)/(.5·rel²) = 192.3 samples. The estimate is unbiased: 400 of them average to P."""
    import torch

    from repulse.workflows.demo.evaluate import importance_sampling

    lp = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64).log()
    lq = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64).log()
    bad = torch.tensor([False, True, True])
    out = importance_sampling(lp, lq, bad, 100, seed=0)
    rel = math.sqrt(0.13 / 100) / 0.5
    assert out["is_rel_se"] == pytest.approx(rel, rel=1e-12)
    assert out["naive_samples_same_se"] == pytest.approx(0.5 / (0.5 * rel**2), rel=1e-12)
    estimates = [importance_sampling(lp, lq, bad, 100, seed=s)["is_estimate"] for s in range(400)]
    assert sum(estimates) / 400 == pytest.approx(0.5, abs=4 * 0.5 * rel / math.sqrt(400))


def test_frontier_claims_need_both_axes_and_are_rechecked_by_grid_point():
    """A RePULSe grid point with P(bad) e^-20 at reward 1.0 beats a REINFORCE point with e^-10 at
    reward 1.0 (both axes), but not one with e^-10 at reward 2.0 (higher reward); a claim names
    both grid points, and on other seeds it is checked at those same points."""
    e = math.exp
    low = _per_seed([e(-20.5), e(-20), e(-19.5), e(-20.2), e(-19.8)], [1.0, 1.1, 0.9, 1.0, 1.0])
    high = _per_seed([e(-10.5), e(-10), e(-9.5), e(-10.2), e(-9.8)], [1.0, 1.1, 0.9, 1.0, 1.0])
    richer = _per_seed([e(-10.5), e(-10), e(-9.5), e(-10.2), e(-9.8)], [2.0, 2.1, 1.9, 2.0, 2.0])
    same = dict(high)
    sweep = {
        "repulse": [{"hp": {"beta": 1.0, "alpha": 10.0}, **low}],
        "reinforce": [{"hp": {"lr": 0.001}, **high}, {"hp": {"lr": 0.01}, **richer}],
        "reward_transform": [{"hp": {"a": 1.0, "b": 1.0}, **same}],
        "p_proposal": [{"hp": {"alpha": 1.0}, **same}],
    }
    methods = {m: {k: v for k, v in entries[0].items() if k != "hp"} for m, entries in sweep.items()}
    summary = {"settings": {"kl": {"methods": methods, "sweep": sweep}}}
    front = [c for c in derive_claims(summary["settings"]) if "lower_hp" in c]
    assert {(c["than"], json.dumps(c["than_hp"])) for c in front} == {
        ("reinforce", '{"lr": 0.001}'),
        ("reward_transform", '{"a": 1.0, "b": 1.0}'),
        ("p_proposal", '{"alpha": 1.0}'),
    }
    assert all(c["lower"] == "repulse" and c["reward_at_least"] for c in front)
    assert all(r["holds"] for r in check_claims(front, summary))
    # other seeds where REINFORCE lr=0.001 got a higher reward: that claim no longer holds
    sweep2 = {**sweep, "reinforce": [{"hp": {"lr": 0.001}, **richer}, sweep["reinforce"][1]]}
    held = {
        c["claim"]["than"]: c["holds"] for c in check_claims(front, {"settings": {"kl": {"sweep": sweep2}}})
    }
    assert held == {"reinforce": False, "reward_transform": True, "p_proposal": True}


def test_confirm_claims_keeps_only_claims_that_hold_on_every_variant():
    """RePULSe's log P(bad) -20 vs REINFORCE's -10 and the p-proposal's -30 give two claims on these
    seeds; a variant where RePULSe sits at -10 breaks the first, another where everything is as here
    keeps both: only the second claim is kept, the first is dropped naming the variant it fails on."""
    e = math.exp
    here = {
        "repulse": _per_seed([e(-20.5), e(-20), e(-19.5), e(-20.2), e(-19.8)], [1.0] * 5),
        "reinforce": _per_seed([e(-10.5), e(-10), e(-9.5), e(-10.2), e(-9.8)], [1.0] * 5),
        "reward_transform": _per_seed([e(-25), e(-12), e(-20), e(-14), e(-22)], [1.0] * 5),
        "p_proposal": _per_seed([e(-30.5), e(-30), e(-29.5), e(-30.2), e(-29.8)], [1.0] * 5),
    }
    claims = derive_claims(_block(**here))
    assert [(c["lower"], c["than"]) for c in claims] == [("repulse", "reinforce"), ("p_proposal", "repulse")]
    same = {"settings": _block(**here)}
    worse = {"settings": _block(**{**here, "repulse": here["reinforce"]})}
    kept, dropped = confirm_claims(claims, [("seeds 100-104", worse), ("rarity 0.001", same)])
    assert kept == [claims[1]]
    assert dropped == [{"claim": claims[0], "failed_on": ["seeds 100-104"]}]
    assert confirm_claims(claims, []) == (claims, [])


def test_importance_sentence_says_when_q_is_worse_than_plain_sampling():
    """4,096 samples of q against plain sampling: a seed whose plain-sampling equivalent is 1e5
    samples is a win for q, one at 85 samples is not; the sentence counts them and says so."""
    from repulse.workflows.demo.verdicts import importance_sentence

    rep = {
        "is_estimate": [2.0e-4, 1.2e-5],
        "p_bad": [1.9e-4, 1.5e-5],
        "is_rel_se": [0.01, 28.0],
        "naive_samples_same_se": [1.0e5, 85.0],
    }
    text = importance_sentence(rep, [1, 2])
    assert "seed 2: 1.2e-5 vs exact 1.5e-5 (relative SE 28; plain sampling of p: ~85 samples)" in text
    assert (
        "beats plain sampling of p (fewer samples for the same error) in 1 of 2 seed(s); in the others q"
        in text
    )
    rep["naive_samples_same_se"] = [1.0e5, 1.0e6]
    assert importance_sentence(rep, [1, 2]).endswith("in 2 of 2 seed(s).")
    rep["naive_samples_same_se"] = [85.0, 85.0]
    assert "in 0 of 2 seed(s); in every seed q" in importance_sentence(rep, [1, 2])
