"""``repulse eval-tail`` prints every importance-sampling estimate with its effective sample size, warns
in one line when that ESS is too small, and labels the self-normalised figure as biased - in the
summary's key names and in the printed text. Samples are written by hand, so every number is known.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest

from repulse.workflows.eval_tail import print_importance, report_main, summarise_files


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(n: int, bad: int, log_w_bad: float) -> list[dict]:
    """n samples from q, the first ``bad`` with reward -10 and log p - log q = ``log_w_bad``, the
    rest reward 1 and weight 1."""
    return [
        {"reward": -10.0 if i < bad else 1.0, "logprob": log_w_bad if i < bad else 0.0, "log_q": 0.0}
        for i in range(n)
    ]


def test_summary_keys_name_the_biased_estimate_and_both_ess(tmp_path):
    """200 samples, 150 bad with weight 0.01 and 50 good with weight 1: the unbiased estimate is
    150·0.01/200 = 7.5e-3 on an event ESS of 150 (reliable: >= 100 and >= 1% of 200); the
    self-normalised one is 1.5/51.5 = 0.0291 on a weights' ESS of 51.5²/50.015 = 53.03 (< 100:
    unreliable)."""
    f = _write(tmp_path / "samples.jsonl", _rows(200, 150, math.log(0.01)))
    summary = summarise_files([f], [-5.0], [0.01])
    (imp,) = summary["by_eta"]["-5"]["importance"]
    assert imp["estimate"] == pytest.approx(7.5e-3)
    assert imp["ess_event"] == pytest.approx(150.0) and imp["estimate_reliable"] is True
    assert imp["self_normalised_biased"] == pytest.approx(1.5 / 51.5)
    assert imp["ess"] == pytest.approx(51.5**2 / 50.015) and imp["self_normalised_biased_reliable"] is False
    assert "self_normalised" not in imp and "sn_low" not in imp  # only under its biased name
    out = io.StringIO()
    print_importance(summary, out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[repulse] P_p(r < -5) by importance sampling = 7.500e-03"), lines
    assert "150 of 200 samples below the threshold, ESS 150.0" in lines[0]
    assert "self-normalised (biased) = 2.913e-02 (weights' ESS 53.0 of 200)" in lines[0]
    assert len(lines) == 2 and lines[1].startswith("[repulse] warning: the self-normalised estimate")


def test_a_rare_hit_warns_in_one_line_and_report_keeps_stdout_json(tmp_path, capsys):
    """500 samples, 2 bad with weight 20: the estimate rests on an event ESS of 2 -> one warning
    line naming the ESS and the rule; ``eval-tail report`` prints it on stderr, so its stdout
    stays the JSON summary."""
    f = _write(tmp_path / "samples.jsonl", _rows(500, 2, math.log(20.0)))
    assert report_main([str(f), "--eta", "-5"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    (imp,) = summary["by_eta"]["-5"]["importance"]
    assert imp["estimate"] == pytest.approx(40 / 500) and imp["ess_event"] == pytest.approx(2.0)
    err = [ln for ln in captured.err.splitlines() if ln.startswith("[repulse]")]
    assert "ESS 2.0" in err[0]
    warnings = [ln for ln in err if "warning" in ln]
    assert len(warnings) == 1, err
    assert "effective sample size of 2.0 (below max(100, 1% of 500 samples))" in warnings[0]
    assert "the event the proposal was trained to find" in warnings[0]


def test_no_proposal_no_importance_lines(tmp_path):
    f = _write(tmp_path / "samples.jsonl", [{"reward": r} for r in (-10.0, 1.0, 2.0)])
    out = io.StringIO()
    print_importance(summarise_files([f], [-5.0], [0.01]), out)
    assert out.getvalue() == ""
