"""``repulse demo`` (the README's main command, ``make demo``) end to end, in full: every stage
runs and writes its outputs, and it reproduces the paper's toy finding (§4.2).

The finding: RePULSe's final exact P(bad) is below REINFORCE's and reward-transformed
REINFORCE's, with non-overlapping 95% t-intervals of log P(bad) over the 5 seeds, at an average
reward within 2% of theirs (rewards span about [-3, 2.4]; a policy that gave up reward to avoid bad
words would lose far more). Measured on 2 CPU cores: about 85 s; RePULSe 2.6e-6 against 1.8e-4 and
6.9e-5 (69x and 26x lower; log-CIs [-13.8, -11.9] against [-10.6, -6.6] and [-10.8, -8.4]),
average reward 2.284 against 2.291 and 2.299 (-0.3%, -0.6%).
"""

from __future__ import annotations

import json
import math

import pytest

from repulse.evaluation.tail_stats import t_interval
from repulse.workflows.demo import METHODS


@pytest.mark.slow
def test_demo_reproduces_the_toy_finding(tmp_path):
    from repulse.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == set(METHODS)
    for name, v in summary["methods"].items():
        assert len(v["avg_reward"]) == len(v["p_bad"]) == 5, name
        assert all(0.0 < p < 1.0 for p in v["p_bad"]), (name, v)
    # p_bad is the last exact P(bad) the run logged: before training and after each of 6 fit steps
    rows = [
        json.loads(ln) for ln in (out / "runs" / "repulse_seed2" / "metrics.jsonl").read_text().splitlines()
    ]
    exact = [r["p_bad_exact"] for r in rows if "p_bad_exact" in r]
    assert summary["methods"]["repulse"]["p_bad"][1] == exact[-1] and len(exact) == 7

    def log_ci(name: str) -> tuple[float, float, float]:
        return t_interval([math.log(p) for p in summary["methods"][name]["p_bad"]])

    def mean_reward(name: str) -> float:
        r = summary["methods"][name]["avg_reward"]
        return sum(r) / len(r)

    _, _, rep_high = log_ci("repulse")
    report = (out / "report.md").read_text()
    for base in ("reinforce", "reward_transform"):
        _, base_low, _ = log_ci(base)
        assert rep_high < base_low, (base, summary["methods"])
        assert mean_reward("repulse") >= mean_reward(base) - 0.02 * abs(mean_reward(base)), base
        assert f"RePULSe vs {base}" in report and "do not overlap" in report
    for stem in ("curves_log_p_bad", "curves_reward", "frontier"):
        for ext in ("png", "pdf"):
            assert (out / f"{stem}.{ext}").stat().st_size > 1000, (stem, ext)
