"""``repulse demo``'s command line without running the experiment: the README paragraph printed
from a summary.json (``--readme``), with claims that did not hold elsewhere left out in words; the
output directory it accepts, refuses and prunes."""

from __future__ import annotations

import json
import math

import pytest

from repulse.errors import UserError
from repulse.workflows.demo.cli import main
from repulse.workflows.demo.runner import prune_runs

E = math.exp


def _entry(logs: list[float], reward: float, nondegenerate: float = 1.0) -> dict:
    return {
        "hp": {},
        "p_bad": [E(v) for v in logs],
        "avg_reward": [reward + d for d in (0.0, 0.1, -0.1, 0.05, -0.05)],
        "nondegenerate": [nondegenerate] * 5,
        "entropy": [3.0] * 5,
    }


def _summary() -> dict:
    """KL setting: RePULSe log P(bad) -20, REINFORCE -10 (separated, but the claim failed on seeds
    100-104), the transform spread over -25..-12 (overlap), the p-proposal -30 (lower than RePULSe:
    a claim that held)."""
    methods = {
        "repulse": {
            **_entry([-20.5, -20, -19.5, -20.2, -19.8], 1.0, 0.5),
            "hp": {"beta": 10.0, "alpha": 1.0},
        },
        "reinforce": {**_entry([-10.5, -10, -9.5, -10.2, -9.8], 1.0), "hp": {"lr": 0.001}},
        "reward_transform": {**_entry([-25, -12, -20, -14, -22], 1.0), "hp": {"a": 1.0, "b": 1.0}},
        "p_proposal": {**_entry([-30.5, -30, -29.5, -30.2, -29.8], 1.0), "hp": {"alpha": 1.0}},
    }
    sweep = {m: [{**v, "index": 0, "headline": True}] for m, v in methods.items()}
    kept = {"setting": "kl", "lower": "p_proposal", "than": "repulse", "metric": "p_bad"}
    dropped = {"setting": "kl", "lower": "repulse", "than": "reinforce", "metric": "p_bad"}
    frontier = {
        "setting": "kl", "lower": "p_proposal", "lower_hp": {"alpha": 1.0}, "than": "repulse",
        "than_hp": {"beta": 10.0, "alpha": 1.0}, "metric": "p_bad", "reward_at_least": True,
    }  # fmt: skip
    win = {
        "setting": "kl", "lower": "repulse", "lower_hp": {"beta": 10.0, "alpha": 1.0}, "than": "reinforce",
        "than_hp": {"lr": 0.001}, "metric": "p_bad", "reward_at_least": True,
    }  # fmt: skip
    lost = {"on": "seeds 1-5 at rarity 0.001", "setting": "kl", "lower": "reinforce", "than": "repulse"}
    return {
        "against_repulse_elsewhere": [
            {
                **lost,
                "metric": "p_bad",
                "baseline": "reinforce",
                "baseline_value": 3.1e-4,
                "repulse_value": 9.2e-4,
            }
        ],
        "seeds": [1, 2, 3, 4, 5],
        "rarity": 1e-4,
        "quick": False,
        "world": {"p0_bad": 2.28e-3, "eta": -1.62},
        "settings": {"kl": {"title": "KL penalty (paper App. E.1)", "methods": methods, "sweep": sweep}},
        "claims": [kept, frontier, win],
        "confirmed_on": ["seeds 100-104, rarity 0.0001"],
        "unconfirmed_claims": [{"claim": dropped, "failed_on": ["seeds 100-104, rarity 0.0001"]}],
        "timing": {
            "wall_seconds": 60.0,
            "cpu_seconds": 30.0,
            "reused_runs": 160,  # a re-render (--resume) ...
            "measured": {  # ... of runs trained by an earlier demo, which measured this
                "wall_seconds": 600.0,
                "cpu_seconds": 1140.0,
                "load_average_start": [6.8, 4.7, 7.9],
                "load_average_end": [10.2, 11.3, 11.7],
            },
        },  # fmt: skip
    }


def test_readme_paragraph_is_rendered_from_the_summary(tmp_path, capsys):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(_summary()))
    assert main(["--readme", str(path)]) == 0
    text = capsys.readouterr().out
    assert (
        text.startswith("`make demo` reproduces")
        and (
            "measured: 10 min wall clock, 19 min of CPU (machine load average 6.8 at the start, 10.2 at the end)"
        )
        in text
    )
    assert "2.3e-3" in text and "η = -1.62" in text and "seeds 1, 2, 3, 4, 5" in text
    # separated on these seeds, failed on the variant: said so, not claimed
    assert (
        "2.2e+04x lower than REINFORCE (RLOO)'s (4.5e-5) at these seeds only - it does NOT hold on "
        "seeds 100-104, rarity 0.0001, so it is not claimed"
    ) in text
    assert "not distinguishable from reward-transformed REINFORCE's" in text
    # the claim that held is stated plainly, against RePULSe
    assert "2.2e+04x HIGHER than p-proposal's (9.4e-14). Over the sweep" in text
    assert "also holds on seeds 100-104, rarity 0.0001" in text
    # RePULSe's well-formed share is 0.5: the setting the paragraph names says it is degenerate
    assert (
        "(beta=10, alpha=1: P(bad) 2.1e-9, reward 1.00, well-formed 0.50; DEGENERATE in 5 seed(s)) beats 1 of 3"
        in text
    )
    assert "1 comparison(s) go the other way" in text
    # what went against RePULSe in another run of the demo is said, with its numbers
    assert (
        "But RePULSe does not beat every baseline everywhere: on seeds 1-5 at rarity 0.001, kl: RePULSe's "
        "P(bad) 9.2e-4 is HIGHER than REINFORCE (RLOO)'s 3.1e-4"
    ) in text


def test_against_repulse_elsewhere_is_what_a_baseline_won():
    """Another run's claims: a baseline's lower P(bad) and RePULSe's lower reward go against RePULSe;
    a baseline's lower reward and RePULSe's lower P(bad) do not; frontier claims are left to the sweep."""
    from repulse.workflows.demo.verdicts import against_repulse

    other = _summary()
    c = lambda lower, than, metric: {"setting": "kl", "lower": lower, "than": than, "metric": metric}  # noqa: E731
    other["claims"] = [
        c("p_proposal", "repulse", "p_bad"),
        c("repulse", "reinforce", "p_bad"),
        c("repulse", "reinforce", "avg_reward"),
        c("p_proposal", "repulse", "avg_reward"),
        other["claims"][1],
    ]
    got = against_repulse("seeds 7-11 at rarity 0.0001", other)
    assert [(e["baseline"], e["metric"]) for e in got] == [
        ("p_proposal", "p_bad"),
        ("reinforce", "avg_reward"),
    ]
    assert got[0]["repulse_value"] == pytest.approx(E(-20), rel=1e-9)
    assert got[0]["baseline_value"] == pytest.approx(E(-30), rel=1e-9)
    assert got[1]["on"] == "seeds 7-11 at rarity 0.0001"


def test_readme_refuses_flags_it_would_ignore(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(_summary()))
    with pytest.raises(UserError, match="--seeds, --quick would be ignored"):
        main(["--readme", str(path), "--quick", "--seeds", "7", "8"])
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"claims": []}))
    with pytest.raises(UserError, match=r"--readme .*other.json: not a demo's summary.json"):
        main(["--readme", str(bad)])


def test_out_holding_another_commands_files_is_refused(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(UserError, match=r"--out .*foreign: the directory holds files that no demo wrote"):
        main(["--quick", "--out", str(foreign)])
    assert (foreign / "metrics.jsonl").read_text() == '{"step": 1}\n'  # untouched
    with pytest.raises(UserError, match="--confirm-on .*missing.json: no such file"):
        main(["--quick", "--out", str(tmp_path / "new"), "--confirm-on", str(tmp_path / "missing.json")])


def test_prune_runs_keeps_exactly_the_current_runs(tmp_path):
    root = tmp_path / "runs"
    keep = [root / "kl0" / "repulse" / "h2" / "seed1", root / "kl" / "reinforce" / "h1" / "seed1"]
    stale = [root / "kl0" / "repulse" / "h2" / "seed9", root / "kl" / "p_proposal" / "h0" / "seed9"]
    for d in keep + stale:
        d.mkdir(parents=True)
        (d / "exact_summary.json").write_text("{}")
    removed = prune_runs(root, keep)
    assert sorted(removed) == sorted(stale)
    assert all(d.is_dir() for d in keep)
    assert not (root / "kl" / "p_proposal").exists()  # emptied folders go too
    assert prune_runs(root, []) and not any(root.iterdir())


def test_a_rerender_keeps_the_time_of_the_demo_that_trained_the_runs(tmp_path):
    """--resume with every run reused measures nothing new: the experiment's time is the one recorded
    by the demo that trained the runs (its "measured" block, or, from an older summary, its own wall
    and CPU time when it reused nothing); a demo that itself reused runs passes on no measurement."""
    from repulse.workflows.demo.cli import _earlier_measurement

    def write(timing: dict) -> None:
        (tmp_path / "summary.json").write_text(json.dumps({"timing": timing}))

    measured = {"wall_seconds": 600.0, "cpu_seconds": 1140.0, "load_average_start": [1.0, 1.0, 1.0]}
    write({"wall_seconds": 5.0, "cpu_seconds": 2.0, "reused_runs": 160, "measured": measured})
    assert _earlier_measurement(tmp_path) == measured
    write({"wall_seconds": 1530.0, "cpu_seconds": 510.0, "reused_runs": 0})
    assert _earlier_measurement(tmp_path) == {"wall_seconds": 1530.0, "cpu_seconds": 510.0}
    write({"wall_seconds": 30.0, "cpu_seconds": 20.0, "reused_runs": 6})
    assert _earlier_measurement(tmp_path) is None
    (tmp_path / "summary.json").unlink()
    assert _earlier_measurement(tmp_path) is None
