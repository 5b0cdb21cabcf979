"""Plots are written (PNG + PDF, non-empty) and the `repulse plot` command works end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from repulse.errors import UserError
from repulse.report.cli import plot_main
from repulse.report.plots import aggregate_curve, plot_curves, plot_frontier


def _assert_figures(paths, stem):
    assert [p.name for p in paths] == [stem.name + ".png", stem.name + ".pdf"]
    png, pdf = (p.read_bytes() for p in paths)
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    assert pdf.startswith(b"%PDF") and len(pdf) > 1000


def test_aggregate_curve_hand_values():
    seeds = [[(0, 1.0), (1, 2.0)], [(0, 3.0), (1, 4.0), (2, 5.0)]]
    steps, mean, low, high, n = aggregate_curve(seeds)
    assert steps.tolist() == [0.0, 1.0, 2.0] and n.tolist() == [2, 2, 1]
    assert mean.tolist() == [2.0, 3.0, 5.0]
    half = 12.706204736 * math.sqrt(2.0) / math.sqrt(2.0)  # t_{.975,1} · s / √n with s = √2
    assert low[0] == pytest.approx(2.0 - half) and high[1] == pytest.approx(3.0 + half)
    assert math.isnan(low[2])  # one seed: no band


def test_plot_curves_writes_png_and_pdf(tmp_path):
    rng = np.random.default_rng(0)
    runs = {
        "repulse": [[(s, float(np.exp(-s / 5) + 0.01 * rng.normal())) for s in range(20)] for _ in range(3)],
        "rloo": [[(s, 0.5 + 0.01 * rng.normal()) for s in range(0, 20, 2)] for _ in range(2)],
    }
    stem = tmp_path / "figs" / "p_bad"
    _assert_figures(plot_curves(runs, "p_bad", stem, log_y=True), stem)
    # a suffix on the stem is dropped
    _assert_figures(plot_curves(runs, "p_bad", tmp_path / "again.png"), tmp_path / "again")


def test_plot_frontier_writes_png_and_pdf(tmp_path):
    points = {
        "repulse": [
            (1.0, 1e-3, (0.9, 1.1), (5e-4, 2e-3), "beta=10"),
            (1.2, 3e-3, None, None),
            (0.8, 2e-3, None, None),
        ],
        "rloo": [(1.1, 1e-2, (1.0, 1.2), (8e-3, 1.2e-2)), (1.3, 0.0, None, None)],
    }
    stem = tmp_path / "frontier"
    _assert_figures(plot_frontier(points, "avg reward", "P(bad)", stem, log_y=True), stem)


def _write_runs(root):
    for method, base in (("repulse", 0.001), ("reinforce", 0.01)):
        for beta in (1.0, 10.0):
            for seed in (1, 2, 3):
                d = root / f"{method}_{beta:g}_{seed}"
                d.mkdir(parents=True)
                cfg = {"train": {"seed": seed}, "repulse": {"method": method, "beta": beta}}
                (d / "config.yaml").write_text(yaml.safe_dump(cfg))
                lines = [
                    {
                        "step": s,
                        "eval/p_bad": base * (1 + 1 / (s + 1)) / beta * (1 + 0.1 * seed),
                        "avg_reward": 1 + s,
                    }
                    for s in range(5)
                ]
                (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
                summary = {
                    "p_bad": {"mean": base / beta * seed, "low": 0, "high": 1},
                    "avg_reward": 1 + beta / 10 + seed,
                }
                (d / "tail_summary.json").write_text(json.dumps(summary))


def test_plot_cli_end_to_end(tmp_path, capsys):
    _write_runs(tmp_path / "runs")
    out = tmp_path / "out" / "curves"
    assert (
        plot_main(["curves", "--runs", str(tmp_path / "runs"), "--metric", "p_bad", "--out", str(out)]) == 0
    )
    printed = capsys.readouterr().out.split()
    assert printed == [str(out) + ".png", str(out) + ".pdf"]
    _assert_figures([out.with_name("curves.png"), out.with_name("curves.pdf")], out)

    out = tmp_path / "out" / "frontier"
    argv = [
        "frontier",
        "--runs",
        str(tmp_path / "runs"),
        "--x",
        "avg_reward",
        "--y",
        "p_bad",
        "--out",
        str(out),
    ]
    assert plot_main([*argv, "--log-y", "--n-boot", "200"]) == 0
    _assert_figures([out.with_name("frontier.png"), out.with_name("frontier.pdf")], out)


def test_plot_cli_bad_input(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no runs found"):
        plot_main(
            ["curves", "--runs", str(tmp_path / "empty"), "--metric", "p_bad", "--out", str(tmp_path / "x")]
        )
    _write_runs(tmp_path / "runs")
    with pytest.raises(UserError, match="unknown metric 'p_god'"):
        plot_main(
            ["curves", "--runs", str(tmp_path / "runs"), "--metric", "p_god", "--out", str(tmp_path / "x")]
        )
    with pytest.raises(UserError, match="required: --x"):
        plot_main(
            ["frontier", "--runs", str(tmp_path / "runs"), "--y", "p_bad", "--out", str(tmp_path / "x")]
        )

    from repulse.cli import main

    assert main(["plot", "curves", "--runs", str(tmp_path / "empty"), "--metric", "m", "--out", "x"]) == 2


def test_plot_curves_takes_load_runs_output(tmp_path):
    from repulse.report.plots import load_runs

    _write_runs(tmp_path / "runs")
    stem = tmp_path / "from_runs"
    _assert_figures(plot_curves(load_runs(tmp_path / "runs"), "p_bad", stem), stem)
    with pytest.raises(UserError, match="unknown metric"):
        plot_curves(load_runs(tmp_path / "runs"), "nope", stem)
