"""``repulse demo`` end to end in its quick form, on a variant the default run does not use (other
seeds, a second rarity level): every stage runs and writes its outputs, summary.json has the
schema others recheck claims with, each claim it states holds on its own per-seed numbers -
checked here with a t quantile written out, not with the demo's code - and no separated
comparison is left unclaimed, and ``repulse plot frontier`` on the run directories reproduces
the report's frontier points.
"""

from __future__ import annotations

import json
import math
import statistics

import pytest

from repulse.workflows.demo import METHODS

T975_2 = 4.302652729911275  # t_{0.975, 2}: three seeds


def _t_interval(values: list[float]) -> tuple[float, float]:
    m, s = statistics.fmean(values), statistics.stdev(values)
    return m - T975_2 * s / math.sqrt(len(values)), m + T975_2 * s / math.sqrt(len(values))


def _ci(values: list[float], metric: str) -> tuple[float, float]:
    return _t_interval([math.log(v) for v in values] if metric == "p_bad" else values)


def _separated(methods: dict, a: str, b: str, metric: str) -> bool:
    return _ci(methods[a][metric], metric)[1] < _ci(methods[b][metric], metric)[0]


def _beats(x: dict, y: dict) -> bool:
    """x's P(bad) interval below y's, at a mean reward at least y's."""
    return _ci(x["p_bad"], "p_bad")[1] < _ci(y["p_bad"], "p_bad")[0] and statistics.fmean(
        x["avg_reward"]
    ) >= statistics.fmean(y["avg_reward"])


@pytest.mark.slow
def test_quick_variant_states_only_claims_that_hold(tmp_path):
    from repulse.cli import main
    from repulse.report.cli import plot_main

    out = tmp_path / "demo"
    seeds = [100, 101, 102]
    # claims of another run (written here) to recheck on this variant's seeds: headline ones either
    # way, a frontier one, and one about a setting this demo does not have (never holds)
    theirs = [
        {"setting": "kl", "lower": "repulse", "than": "reinforce", "metric": "p_bad"},
        {"setting": "kl0", "lower": "reinforce", "than": "repulse", "metric": "avg_reward"},
        {"setting": "kl", "lower": "repulse", "lower_hp": {"beta": 10.0, "alpha": 1.0}, "than": "p_proposal",
         "than_hp": {"alpha": 1.0}, "metric": "p_bad", "reward_at_least": True},
        {"setting": "kl5", "lower": "repulse", "than": "reinforce", "metric": "p_bad"},
    ]  # fmt: skip
    (tmp_path / "theirs.json").write_text(json.dumps({"claims": theirs}))
    argv = ["demo", "--quick", "--seeds", *map(str, seeds), "--rarity", "0.01", "--out", str(out)]
    assert main([*argv, "--claims-from", str(tmp_path / "theirs.json")]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # each claim of the other run rechecked on these seeds, with this test's own t-intervals
    settings = summary["settings"]
    sweep_kl = {m: e[0] for m, e in settings["kl"]["sweep"].items()}
    expected_holds = [
        _separated(settings["kl"]["methods"], "repulse", "reinforce", "p_bad"),
        _separated(settings["kl0"]["methods"], "reinforce", "repulse", "avg_reward"),
        _beats(sweep_kl["repulse"], sweep_kl["p_proposal"]),
        False,
    ]
    assert [c["claim"] for c in summary["rechecked_claims"]] == theirs
    assert [c["holds"] for c in summary["rechecked_claims"]] == expected_holds
    assert f"{sum(expected_holds)} of 4 hold" in (out / "report.md").read_text()
    assert summary["seeds"] == seeds and summary["rarity"] == 0.01 and summary["quick"] is True
    assert set(summary["settings"]) == {"kl0", "kl"}
    for name, block in summary["settings"].items():
        assert set(block["methods"]) == set(METHODS) == set(block["sweep"])
        for method, v in block["methods"].items():
            for key in ("avg_reward", "p_bad", "nondegenerate"):
                assert len(v[key]) == len(seeds), (name, method, key)
            assert all(0.0 < p < 1.0 for p in v["p_bad"]) and all(0.0 <= x <= 1.0 for x in v["nondegenerate"])
            # the headline values are the run's own exact evaluation, seed by seed
            run = (
                out
                / "runs"
                / name
                / method
                / f"h{[e for e in block['sweep'][method] if e['headline']][0]['index']}"
            )
            for seed, p in zip(seeds, v["p_bad"]):
                assert json.loads((run / f"seed{seed}" / "exact_summary.json").read_text())["p_bad"] == p
    # every claim holds on the run's own seeds, and every separated comparison is claimed
    claims = summary["claims"]
    head = [c for c in claims if "lower_hp" not in c]
    assert all(set(c) == {"setting", "lower", "than", "metric"} for c in head)
    expected = []
    for name, block in summary["settings"].items():
        for base in ("reinforce", "reward_transform", "p_proposal"):
            for metric in ("p_bad", "avg_reward"):
                for a, b in (("repulse", base), (base, "repulse")):
                    if _separated(block["methods"], a, b, metric):
                        expected.append({"setting": name, "lower": a, "than": b, "metric": metric})
        sweep = block["sweep"]
        for r in sweep["repulse"]:
            for base in ("reinforce", "reward_transform", "p_proposal"):
                for b in sweep[base]:
                    for (lm, lo), (tm, th) in ((("repulse", r), (base, b)), ((base, b), ("repulse", r))):
                        if _beats(lo, th):
                            expected.append(
                                {"setting": name, "lower": lm, "lower_hp": lo["hp"], "than": tm, "than_hp": th["hp"],
                                 "metric": "p_bad", "reward_at_least": True}
                            )  # fmt: skip
    key = lambda c: json.dumps(c, sort_keys=True)  # noqa: E731
    assert sorted(claims, key=key) == sorted(expected, key=key)
    report = (out / "report.md").read_text()
    for c in head:
        assert f"{c['setting']}: " in report and c["metric"] in report
    # the frontier figure, redrawn by `repulse plot frontier` from the run directories, shows the
    # report's points: the geometric mean of the seeds' P(bad) and the mean average reward
    redrawn = tmp_path / "redrawn"
    argv = ["frontier", "--runs", str(out / "runs" / "kl"), "--x", "avg_reward", "--y", "p_bad", "--log-y"]
    assert plot_main([*argv, "--interval", "t", "--out", str(redrawn)]) == 0
    mine = json.loads((tmp_path / "redrawn.json").read_text())["points"]
    theirs = json.loads((out / "frontier_kl.json").read_text())["points"]
    assert mine == theirs
    for method, block in summary["settings"]["kl"]["sweep"].items():
        (point,) = mine[method]
        (entry,) = block
        assert point["y"] == pytest.approx(
            math.exp(statistics.fmean(math.log(p) for p in entry["p_bad"])), rel=1e-9
        )
        assert point["x"] == pytest.approx(statistics.fmean(entry["avg_reward"]), rel=1e-9)
    for stem in ("curves_kl0_log_p_bad", "curves_kl_reward", "frontier_kl0", "frontier_kl"):
        assert (out / f"{stem}.png").stat().st_size > 1000, stem
    assert (out / "readme.md").read_text().startswith("`make demo`")
    assert (out / "world" / "rm_scores.tsv").read_text().count("\n") == summary["world"]["n_responses"] + 1
