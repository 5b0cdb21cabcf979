"""RePULSe end to end on the toy: every method runs, the proposal finds bad outputs,
eval-tail gathers every sample across processes, and bad input is refused clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from repulse.config import parse_config
from repulse.config.sections import RLConfig
from repulse.errors import UserError
from repulse.trainers.rl import validate


@pytest.fixture(scope="module")
def toy_lm_rm(toy, tmp_path_factory):
    """The demo's pretrained toy LM and reward model, built once (quick settings)."""
    from repulse.trainers import rm, sft
    from repulse.workflows.demo import _rm_config, _sft_config

    out = tmp_path_factory.mktemp("demo")
    sft.run(_sft_config(toy, out, quick=True))
    rm.run(_rm_config(toy, out / "lm", out, quick=True))
    return out / "lm", out / "rm"


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["reinforce", "reward_transform", "p_proposal", "repulse"])
def test_every_method_runs_and_logs_exact_p_bad(toy, toy_lm_rm, tmp_path, method):
    from repulse.trainers import rl_loop
    from repulse.workflows.demo import rl_config

    lm, rm = toy_lm_rm
    cfg = rl_config(toy, lm, rm, tmp_path, method, seed=1, quick=True)
    cfg.repulse.fit_steps, cfg.train.num_episodes = 1, 3
    rl_loop.run(cfg)
    run_dir = Path(cfg.ckpt.output_dir)
    rows = _metrics(run_dir)
    exact = [r for r in rows if "p_bad_exact" in r]
    assert [r["step"] for r in exact] == [0, 3]
    assert 0.0 < exact[0]["p_bad_exact"] < 0.2  # the pretrained toy LM says a bad word sometimes
    steps = [r["step"] for r in rows if "reward" in r]
    assert steps == [1, 2, 3]
    if method == "repulse":
        assert (run_dir / "proposal" / "config.json").is_file()
        assert all("loss_ctl" in r for r in rows if "reward" in r)
        # the proposal's samples are worse than the policy's: it looks for low reward
        assert rows[-1]["q_reward"] < rows[-1]["reward"]
    if method == "p_proposal":
        assert all("loss_u" in r for r in rows if "reward" in r)


def test_repulse_validation_errors():
    base = [
        "--actor.model_name_or_path", "m", "--data.prompt_dataset", "p.jsonl", "--reward.remote_url", "r.py",
    ]  # fmt: skip
    with pytest.raises(UserError, match="--repulse.beta must be > 0"):
        parse_config("rl", RLConfig, [*base, "--repulse.method", "repulse", "--repulse.beta", "-1",
                                      "--rollout.n_samples_per_prompt", "4"], validate)  # fmt: skip
    with pytest.raises(UserError, match="n_samples_per_prompt to 2 or more"):
        parse_config("rl", RLConfig, [*base, "--repulse.method", "repulse"], validate)
    with pytest.raises(UserError, match="--repulse.reward_transform"):
        parse_config("rl", RLConfig, [*base, "--repulse.method", "reward_transform",
                                      "--rollout.n_samples_per_prompt", "4"], validate)  # fmt: skip


@pytest.mark.slow
@pytest.mark.distributed
def test_eval_tail_on_two_processes_writes_every_sample_once(toy, toy_lm_rm, tmp_path):
    lm, rm = toy_lm_rm
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"input": f"This man is a{' ' * i}"}) + "\n" for i in range(5)))
    out = tmp_path / "tail"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "repulse", "eval-tail",
        "--tail.policy", str(lm), "--reward.model_name_or_path", str(rm),
        "--data.prompt_dataset", str(prompts), "--rollout.n_samples_per_prompt", "3",
        "--rollout.max_new_tokens", "2", "--tail.passes", "2", "--tail.eta", "0", "-1",
        "--ckpt.output_dir", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 5 * 3 * 2  # prompts x samples x passes, gathered from both ranks
    assert {r["pass"] for r in rows} == {0, 1}
    summary = json.loads((out / "tail_summary.json").read_text())
    assert set(summary["by_eta"]) == {"0", "-1"}
    p_bad = summary["by_eta"]["0"]["p_bad"]["mean"]
    assert p_bad == pytest.approx(sum(r["reward"] < 0 for r in rows) / len(rows))
    report = subprocess.run(
        [sys.executable, "-m", "repulse", "eval-tail", "report", str(out / "samples.jsonl"), "--eta", "2.5"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["by_eta"]["2.5"]["p_bad"]["mean"] == pytest.approx(
        sum(r["reward"] < 2.5 for r in rows) / len(rows)
    )
