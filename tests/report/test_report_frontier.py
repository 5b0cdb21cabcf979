"""Pareto sets, run discovery/grouping and frontier points."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from repulse.errors import UserError
from repulse.evaluation.tail_stats import bootstrap_ci
from repulse.report.frontier import frontier_points, non_dominated
from repulse.report.runs import available_metrics, load_runs, resolve_metric, run_series, run_value


def test_non_dominated_hand_made():
    pts = [(1, 0.5), (2, 0.3), (3, 0.4), (2.5, 0.3), (0.5, 0.1), (3, 0.6), (math.nan, 0.0)]
    # (1,.5) < (2,.3) < (2.5,.3) [same y, more x]; (3,.6) < (3,.4); NaN is never in the set
    assert non_dominated(pts) == [4, 3, 2]
    # higher y better: (3, .6) beats every other point
    assert non_dominated(pts, minimize_y=False) == [5]
    # lower x better, lower y better: (0.5, 0.1) beats everything
    assert non_dominated(pts, maximize_x=False) == [4]
    # equal points are both kept; extra tuple fields are ignored
    assert non_dominated([(1, 1, None, None), (1, 1, (0, 2), None), (0, 2, None, None)]) == [0, 1]
    assert non_dominated([]) == []


def write_run(root, name, config, metrics=None, summary=None):
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    if metrics is not None:
        (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if summary is not None:
        (d / "tail_summary.json").write_text(json.dumps(summary))
    return d


def cfg(method, seed, out, **repulse):
    return {
        "model": {"pretrain": "toy"},
        "train": {"seed": seed, "batch_size": 4},
        "ckpt": {"output_dir": str(out)},
        "logger": {"tensorboard_dir": None},
        "algo": {"advantage": {"estimator": "rloo"}},
        "repulse": {"method": method, "beta": 10.0, "alpha": 0.01, **repulse},
    }


@pytest.fixture()
def run_tree(tmp_path):
    """repulse at beta 10 and 5 (2 seeds each), plain RL (rloo, 2 seeds), one custom label."""
    root = tmp_path / "runs"
    vals = {}
    for beta in (10.0, 5.0):
        for seed in (1, 2):
            name = f"repulse_b{beta:g}/s{seed}"
            p_bad = 0.01 * seed / beta
            reward = 1.0 + seed * 0.1 + beta * 0.01
            metrics = [
                {"step": s, "time": 0.0, "eval/p_bad": p_bad * (3 - s), "loss": 1.0 / (s + 1)}
                for s in range(3)
            ]
            summary = {
                "p_bad": {"mean": p_bad, "low": 0.0, "high": 2 * p_bad},
                "avg_reward": {"mean": reward},
            }
            d = write_run(root, name, cfg("repulse", seed, root / name, beta=beta), metrics, summary)
            vals[(beta, seed)] = (reward, p_bad)
            # a checkpoint inside a run that looks like a run must not be found as one
            write_run(d / "checkpoints", "step_2", cfg("repulse", seed, d), metrics)
    for seed in (1, 2):
        metrics = [{"step": s, "eval/p_bad": 0.05, "avg_reward": 0.5 + seed, "loss": "nan"} for s in (0, 5)]
        write_run(root, f"rl/s{seed}", cfg("rl", seed, root / f"rl{seed}"), metrics)
    c = cfg("rl", 7, root / "x")
    c["method"] = "my-label"
    write_run(root / "other", "run", c, [{"step": 0, "eval/p_bad": 0.2}])
    return root, vals


def test_load_runs_discovers_and_groups(run_tree):
    root, _ = run_tree
    groups = load_runs(root)
    assert sorted(groups) == ["my-label", "repulse", "rl:rloo"]
    rep = groups["repulse"]
    assert len(rep) == 4  # checkpoints pruned
    assert sorted(r.seed for r in rep) == [1, 1, 2, 2]
    assert {r.setting_label for r in rep} == {"beta=10", "beta=5"}
    assert len({r.setting for r in rep}) == 2
    assert [r.seed for r in groups["rl:rloo"]] == [1, 2] and groups["rl:rloo"][0].setting_label == ""
    # a run directory given directly, and the same run twice, are found once
    single = load_runs([root / "rl" / "s1", root / "rl" / "s1" / "metrics.jsonl"])
    assert [len(v) for v in single.values()] == [1]
    # metrics: "nan" strings come back as floats and are dropped from series
    rl1 = groups["rl:rloo"][0]
    assert math.isnan(rl1.records[0]["loss"]) and run_series(rl1, "loss") == []
    assert run_series(rl1, "avg_reward") == [(0.0, 1.5), (5.0, 1.5)]


def test_metric_lookup(run_tree):
    root, _ = run_tree
    groups = load_runs(root)
    names = available_metrics(groups)
    assert {"eval/p_bad", "loss", "p_bad", "avg_reward"} <= set(names) and "time" not in names
    assert resolve_metric(groups, "eval/p_bad") == "eval/p_bad"
    assert resolve_metric(groups, "loss") == "loss"
    assert resolve_metric(groups, "p_bad") == "p_bad"  # the tail summary's
    assert resolve_metric(groups, "p_bad", series_only=True) == "eval/p_bad"  # logged over steps
    with pytest.raises(UserError, match="unknown metric 'nope'.*eval/p_bad"):
        resolve_metric(groups, "nope")
    rep = groups["repulse"][0]
    value, interval = run_value(rep, "p_bad")  # from the tail summary, with its interval
    assert interval == (0.0, 2 * value)
    assert run_value(rep, "loss") == (pytest.approx(1 / 3), None)  # last logged value
    assert run_value(rep, "missing") is None


def test_frontier_points_mean_and_bootstrap(run_tree):
    root, vals = run_tree
    groups = load_runs(root)
    pts = frontier_points(groups, "avg_reward", "p_bad", n_boot=500, seed=3)
    assert sorted(pts) == ["repulse"]  # the other methods have no 'p_bad' summary
    by_label = {p.label: p for p in pts["repulse"]}
    p10 = by_label["beta=10"]
    xs = [vals[(10.0, s)][0] for s in (1, 2)]
    ys = [vals[(10.0, s)][1] for s in (1, 2)]
    assert (p10.x, p10.y, p10.n_seeds) == (pytest.approx(np.mean(xs)), pytest.approx(np.mean(ys)), 2)
    assert p10.x_ci == bootstrap_ci(xs, np.mean, n_boot=500, seed=3)
    assert p10.y_ci == bootstrap_ci(ys, np.mean, n_boot=500, seed=3)
    x, y, x_ci, y_ci, label = p10  # iterable as the plain tuple plot_frontier takes
    assert label == "beta=10"
    # a metric logged over steps serves too: the last value per run
    pts2 = frontier_points(groups, "avg_reward", "eval/p_bad", n_boot=100)
    assert pts2["rl:rloo"][0].y == pytest.approx(0.05)
    with pytest.raises(UserError, match="no run has both"):
        frontier_points(groups, "nope", "p_bad")


def test_load_runs_errors(tmp_path):
    with pytest.raises(UserError, match="no runs found"):
        load_runs(tmp_path)
    with pytest.raises(UserError, match="no such file"):
        load_runs(tmp_path / "missing")
    d = write_run(tmp_path, "bad", {"repulse": {"method": "repulse"}}, [{"step": 0}])
    (d / "metrics.jsonl").write_text('{"step": 0}\n{oops\n{"step": 2}\n')
    with pytest.raises(UserError, match=r"metrics.jsonl:2"):
        load_runs(tmp_path)
    (d / "metrics.jsonl").write_text('{"step": 0, "x": 1}\n{"step": 1, "x"')  # killed mid-line: tolerated
    assert run_series(load_runs(tmp_path)["repulse"][0], "x") == [(0.0, 1.0)]


def test_summary_in_eval_tail_form():
    """``repulse eval-tail`` nests summarise() blocks per threshold under ``by_eta``."""
    from repulse.evaluation.importance import importance_prob_below
    from repulse.evaluation.tail_stats import summarise
    from repulse.report.runs import summary_metrics

    rewards = np.array([-8.0, -6.0, -1.0, 0.0, 2.0, 3.0])
    entries = {"s.jsonl": {"reward": rewards, "return": rewards - 0.5}}
    by_eta = {f"{eta:g}": summarise(entries, eta, [0.5]) for eta in (-5.0, -7.0)}
    by_eta["-5"]["importance"] = [importance_prob_below(np.zeros(6), np.zeros(6), rewards, -5.0).as_dict()]
    summary = json.loads(json.dumps({"files": ["s.jsonl"], "by_eta": by_eta, "exact_log_p_bad": -3.5}))
    flat = summary_metrics(summary)
    assert flat["p_bad@eta=-5"]["mean"] == pytest.approx(2 / 6)
    assert flat["p_bad@eta=-7"]["mean"] == pytest.approx(1 / 6)
    assert "p_bad" not in flat  # differs between thresholds: no plain name
    assert flat["avg_reward"]["mean"] == pytest.approx(rewards.mean())  # the same for every eta
    assert flat["avg_return"]["mean"] == pytest.approx(rewards.mean() - 0.5)
    assert flat["cvar@0.5"]["mean"] == pytest.approx(-5.0)
    assert flat["exact_log_p_bad"] == -3.5
    assert flat["p_bad_is@eta=-5"]["mean"] == pytest.approx(2 / 6) and "p_bad_is" not in flat
    # with one threshold, the plain names are there too
    one = summary_metrics(json.loads(json.dumps({"by_eta": {"-5": by_eta["-5"]}})))
    assert one["p_bad"]["mean"] == pytest.approx(2 / 6)
    assert one["p_bad_is"]["mean"] == pytest.approx(2 / 6) and one["p_bad_is_sn"]["mean"] == pytest.approx(
        2 / 6
    )


def test_aggregate_geomean_with_t_interval_hand_computed():
    """Seeds e^1 and e^3: the geometric mean is e^2; the t-interval of the mean log is
    2 ∓ t_{0.975,1}·sd/√2 = 2 ∓ 12.7062·1, exponentiated. The arithmetic mean would be 11.4."""
    from repulse.report.frontier import aggregate

    t975_1 = 12.706204736174698
    centre, (low, high) = aggregate([math.e, math.e**3], "geomean", "t")
    assert centre == pytest.approx(math.e**2, rel=1e-12)
    assert math.log(low) == pytest.approx(2 - t975_1, rel=1e-9) and math.log(high) == pytest.approx(
        2 + t975_1, rel=1e-9
    )
    centre, (low, high) = aggregate([1.0, 3.0], "mean", "t")
    assert (centre, low, high) == (2.0, pytest.approx(2 - t975_1), pytest.approx(2 + t975_1))
    assert aggregate([4.0], "geomean", "t") == (pytest.approx(4.0), None)
    with pytest.raises(UserError, match="values > 0"):
        aggregate([0.0, 1.0], "geomean", "t")


def test_exact_summaries_are_final_values_and_plot_uses_the_geometric_mean(tmp_path):
    """``exact_summary.json`` (the demo's exact evaluation of a run) is read like a tail summary;
    ``repulse plot frontier --log-y`` aggregates P(bad) by its geometric mean, with ``--interval t``
    the t-interval of the mean log - the statistic of the demo's report - and draws the figure."""
    from repulse.report.cli import plot_main
    from repulse.report.frontier import aggregate

    root = tmp_path / "runs"
    p_bads = {1: 1e-6, 2: 1e-4, 3: 1e-5}
    for seed, p in p_bads.items():
        d = write_run(root, f"a/s{seed}", cfg("repulse", seed, root / "x"), [{"step": 0, "loss": 1.0}])
        (d / "exact_summary.json").write_text(
            json.dumps({"p_bad": p, "avg_reward": 1.0 + seed, "top": [{"text": "x"}]})
        )
    d = write_run(root, "b/s1", cfg("reinforce", 1, root / "y"), None)
    (d / "exact_summary.json").write_text(json.dumps({"p_bad": 1e-3, "avg_reward": 2.0}))
    groups = load_runs(root)
    assert sorted(groups) == ["reinforce", "repulse"]  # a run with only an exact summary is found
    assert run_value(groups["repulse"][0], "p_bad") == (1e-6, None)
    pts = frontier_points(groups, "avg_reward", "p_bad", x_stat="mean", y_stat="geomean", interval="t")
    (p,) = pts["repulse"]
    assert p.y == pytest.approx(1e-5, rel=1e-12)  # (1e-6 · 1e-4 · 1e-5)^(1/3); the mean would be 3.7e-5
    assert p.y_ci == pytest.approx(aggregate(list(p_bads.values()), "geomean", "t")[1])
    assert p.x == pytest.approx(3.0)
    out = tmp_path / "fig"
    assert (
        plot_main(
            [
                "frontier",
                "--runs",
                str(root),
                "--x",
                "avg_reward",
                "--y",
                "p_bad",
                "--log-y",
                "--interval",
                "t",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (tmp_path / "fig.png").stat().st_size > 1000
    drawn = json.loads((tmp_path / "fig.json").read_text())
    assert (drawn["y_stat"], drawn["x_stat"], drawn["interval"]) == ("geomean", "mean", "t")
    (q,) = drawn["points"]["repulse"]
    assert q["y"] == pytest.approx(p.y, rel=1e-12) and q["y_ci"] == pytest.approx(list(p.y_ci), rel=1e-12)
    # without a log axis the default is the arithmetic mean
    assert (
        plot_main(["frontier", "--runs", str(root), "--x", "avg_reward", "--y", "p_bad", "--out", str(out)])
        == 0
    )
    (q,) = json.loads((tmp_path / "fig.json").read_text())["points"]["repulse"]
    assert q["y"] == pytest.approx(sum(p_bads.values()) / 3, rel=1e-12)
