"""``repulse demo`` end to end in its quick form: every stage runs and writes its outputs.

The demo's scientific claim (RePULSe's P(bad) below REINFORCE's with separated CIs) needs
the full run (about 4 minutes on 2 cores); it is checked by running ``make demo``, and its
numbers are in the README. Here: the structure of what a user gets.
"""

from __future__ import annotations

import json
import math

import pytest

from repulse.workflows.demo import METHODS


@pytest.mark.slow
def test_quick_demo_writes_summary_report_and_plots(tmp_path):
    from repulse.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--seeds", "2", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == set(METHODS)
    for name, v in summary["methods"].items():
        assert len(v["avg_reward"]) == len(v["p_bad"]) == 2, name
        assert all(0.0 < p < 1.0 for p in v["p_bad"]), (name, v)
        assert all(math.isfinite(r) for r in v["avg_reward"]), (name, v)
    # p_bad is the last exact P(bad) logged by the run
    rows = [
        json.loads(ln) for ln in (out / "runs" / "repulse_seed2" / "metrics.jsonl").read_text().splitlines()
    ]
    exact = [r["p_bad_exact"] for r in rows if "p_bad_exact" in r]
    assert summary["methods"]["repulse"]["p_bad"][1] == exact[-1] and len(exact) == 3  # before + 2 fit steps
    report = (out / "report.md").read_text()
    assert all(f"| {m} |" in report for m in METHODS) and "RePULSe vs reinforce" in report
    for stem in ("curves_log_p_bad", "curves_reward", "frontier"):
        for ext in ("png", "pdf"):
            assert (out / f"{stem}.{ext}").stat().st_size > 1000, (stem, ext)
