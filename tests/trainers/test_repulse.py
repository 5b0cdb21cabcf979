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
    """Every sample of both ranks in one file, written once; each rank draws its own samples. The
    5 prompts are the same text, so rank 1's first generate call (prompts 1 and 3, padded with a
    copy of prompt 0) has the same input as rank 0's (prompts 0, 2, 4): with one random stream
    shared by the ranks, its samples would repeat rank 0's."""
    lm, rm = toy_lm_rm
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text((json.dumps({"input": "This man is a"}) + "\n") * 5)
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
    responses = [r["response"] for r in rows]  # rank 0: 3 prompts x 3 samples x 2 passes, then rank 1
    assert responses[18:24] != responses[0:6]
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


def _eval_tail(argv: list[str]) -> None:
    from repulse.cli import main

    assert main(["eval-tail", *argv]) == 0


@pytest.mark.slow
def test_eval_tail_proposal_exact_negdata_and_default_output(toy_lm_rm, tmp_path):
    """--tail.proposal: rows carry log q and the summary an importance-sampling estimate (with q :=
    p the weights are all 1, so it equals the plain estimate and the ESS is the sample count);
    --tail.exact adds the exact P(bad word); --tail.negdata_threshold writes exactly the distinct
    samples below it; with no --ckpt.output_dir the output goes into the policy's run directory
    (it holds the run's config.yaml, which `repulse plot` pairs the summary with)."""
    import shutil

    lm, rm = toy_lm_rm
    policy = tmp_path / "policy"
    shutil.copytree(lm, policy)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"input": "This man is a"}) + "\n")
    common = [
        "--reward.model_name_or_path", str(rm), "--data.prompt_dataset", str(prompts),
        "--rollout.n_samples_per_prompt", "64", "--rollout.max_new_tokens", "2", "--tail.eta", "0",
    ]  # fmt: skip
    argv = ["--tail.policy", str(policy), "--tail.proposal", str(policy), "--tail.exact", *common]
    _eval_tail(argv)
    assert (policy / "tail_config.yaml").is_file() and (policy / "config.yaml").is_file()
    rows = [json.loads(line) for line in (policy / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 64 and all(r["log_q"] == pytest.approx(r["logprob"], abs=1e-5) for r in rows)
    summary = json.loads((policy / "tail_summary.json").read_text())
    assert summary["exact_log_p_bad"] < 0
    assert summary["by_eta"]["0"]["samples_from"] == "proposal"
    # a threshold inside the rewards seen (the quick toy RM's scale), chosen at report time
    eta = sorted(r["reward"] for r in rows)[32]
    report = subprocess.run(
        [sys.executable, "-m", "repulse", "eval-tail", "report", str(policy / "samples.jsonl"), "--eta", repr(eta)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    (imp,) = json.loads(report.stdout)["by_eta"][f"{eta:g}"]["importance"]
    naive = sum(r["reward"] < eta for r in rows) / len(rows)
    assert 0 < naive < 1
    assert imp["self_normalised"] == pytest.approx(naive, abs=1e-5)
    assert imp["estimate"] == pytest.approx(naive, abs=1e-4)
    assert imp["ess"] == pytest.approx(64, rel=1e-4)
    # the same seed draws the same samples: harvest those below eta
    _eval_tail([*argv, "--tail.negdata_threshold", repr(eta)])
    neg = [json.loads(line) for line in (policy / "negdata.jsonl").read_text().splitlines()]
    expected = {(r["prompt"], r["response"]) for r in rows if r["reward"] < eta}
    assert {(r["prompt"], r["response"]) for r in neg} == expected and len(neg) == len(expected)
    assert len(expected) < sum(r["reward"] < eta for r in rows)  # duplicates were merged

    # not a run directory: the default is ./tail_eval
    bare = tmp_path / "bare"
    shutil.copytree(lm, bare)
    (bare / "config.yaml").unlink()
    monkey_cwd = tmp_path / "cwd"
    monkey_cwd.mkdir()
    subprocess.run(
        [sys.executable, "-m", "repulse", "eval-tail", "--tail.policy", str(bare), *common],
        cwd=monkey_cwd, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    assert (monkey_cwd / "tail_eval" / "samples.jsonl").is_file() and not (bare / "samples.jsonl").exists()
