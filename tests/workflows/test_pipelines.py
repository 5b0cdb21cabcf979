"""``repulse pipeline``: each workflow improves the toy policy, and a run killed mid-stage (SIGKILL) and
started again ends with the same model, bit for bit, as an uninterrupted run.

The uninterrupted runs happen once per module (in this process) and serve both kinds of test; the
killed runs are subprocesses with the same config and the same number of threads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from repulse.config.schema import build
from repulse.workflows.pipeline import KINDS
from repulse.workflows.pipeline import run as run_pipeline

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = "User: {}\nAssistant: "
pytestmark = pytest.mark.slow


RECIPE = {
    "rejection-sampling": "rejection_sampling",
    "iterative-dpo": "iterative_dpo",
    "csft": "conditional_sft",
}


def _config(kind: str, recipe, toy, policy, rm, out: Path) -> dict:
    """The kind's recipe (recipes/workflows/) on this session's toy assets, policy and reward model."""
    config = recipe(RECIPE[kind], toy, {"start_policy": str(policy), "reward_model": str(rm)})
    config["pipeline"]["output_dir"] = str(out)
    return config


def _write(config: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def runs(toy, start_policy, toy_rm, workflow_recipe, tmp_path_factory):
    """kind -> (config file, output dir) of an uninterrupted run, made on first use."""
    done: dict[str, tuple[Path, Path]] = {}

    def get(kind: str) -> tuple[Path, Path]:
        if kind not in done:
            root = tmp_path_factory.mktemp(kind)
            out = root / "run"
            path = _write(
                _config(kind, workflow_recipe, toy, start_policy, toy_rm, out), root / "config.yaml"
            )
            run_pipeline(build(KINDS[kind].root, [str(path)], []), kind)
            done[kind] = (path, out)
        return done[kind]

    return get


def _final_model(out: Path) -> Path:
    return Path(json.loads((out / "state.json").read_text())["model"])


def _tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


# --------------------------------------------------------------------------- did it learn


def test_rejection_sampling_raises_the_held_out_greedy_reward(
    runs, start_policy, toy, toy_rm, greedy_eval, tmp_path
):
    _, out = runs("rejection-sampling")
    before = greedy_eval(start_policy, toy.sft_eval, toy_rm, tmp_path / "before.jsonl")
    after = greedy_eval(_final_model(out), toy.sft_eval, toy_rm, tmp_path / "after.jsonl")
    gain = sum(after) / len(after) - sum(before) / len(before)
    assert gain > 3.0, f"held-out greedy reward {sum(before) / 64:.3f} -> {sum(after) / 64:.3f}"
    log = (out / "iter.log").read_text()
    assert "iteration 1 sft done" in log and "finished: the final model is" in log
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(m["iteration"], m["stage"]) for m in metrics] == [
        (i, s) for i in range(2) for s in ("generate", "score", "sft")
    ]
    assert metrics[0]["rows"] == 48 * 4


def test_iterative_dpo_raises_the_held_out_greedy_reward(
    runs, start_policy, toy, toy_rm, greedy_eval, tmp_path
):
    _, out = runs("iterative-dpo")
    before = greedy_eval(start_policy, toy.sft_eval, toy_rm, tmp_path / "before.jsonl")
    after = greedy_eval(_final_model(out), toy.sft_eval, toy_rm, tmp_path / "after.jsonl")
    gain = sum(after) / len(after) - sum(before) / len(before)
    assert gain > 3.0, f"held-out greedy reward {sum(before) / 64:.3f} -> {sum(after) / 64:.3f}"
    pairs = [json.loads(line) for line in (out / "iter_0" / "iter_dpo.jsonl").read_text().splitlines()]
    assert all(p["chosen_reward"] >= p["rejected_reward"] and p["chosen"] != p["rejected"] for p in pairs)


def test_conditional_sft_follows_the_score_it_is_given(runs, toy, toy_rm, greedy_eval, tmp_path):
    _, out = runs("csft")
    rows = [json.loads(line) for line in (out / "iter_0" / "csft.jsonl").read_text().splitlines()]
    assert len(rows) == 300 and rows[0]["input"].startswith("User: ") and " <rm_score>: " in rows[0]["input"]
    model = _final_model(out)
    high = greedy_eval(model, toy.sft_eval, toy_rm, tmp_path / "high.jsonl", TEMPLATE + " <rm_score>: 1.00 ")
    low = greedy_eval(model, toy.sft_eval, toy_rm, tmp_path / "low.jsonl", TEMPLATE + " <rm_score>: -1.00 ")
    assert sum(high) / len(high) - sum(low) / len(low) > 2.0


# --------------------------------------------------------------------------- killed and rerun


def _launch(config: Path, kind: str, log: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(torch.get_num_threads()))
    cmd = [sys.executable, "-m", "repulse", "pipeline", kind, "--config", str(config)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT)


def _kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            return
        if proc.poll() is not None:
            raise AssertionError("the pipeline finished before it could be killed")
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("the kill point was never reached")


def _chunks(parts: Path) -> int:
    return len(list(parts.glob("chunk_*.jsonl"))) if parts.is_dir() else 0


def _metric_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


# kind -> (what must exist when the run is killed, the stage marker that must not exist yet)
KILL_POINTS = {
    # in the SFT stage of iteration 0, after its checkpoint at step 2 (the rerun resumes from it)
    "rejection-sampling": (
        lambda out: (out / "iter_0/model/checkpoints/step_2/trainer.json").is_file(),
        "iter_0/sft.done",
    ),
    # in the generate stage of iteration 1, with 3 of its 16 chunks written
    "iterative-dpo": (lambda out: _chunks(out / "iter_1/generate.jsonl.parts") >= 3, "iter_1/generate.done"),
    # in the SFT stage (no checkpoints: the rerun trains the stage again from its start)
    "csft": (lambda out: _metric_lines(out / "iter_0/model/metrics.jsonl") >= 5, "iter_0/sft.done"),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_killed_pipeline_continues_to_the_same_model(kind, runs, tmp_path):
    config_path, reference_out = runs(kind)
    config = yaml.safe_load(config_path.read_text())
    out = tmp_path / "run"
    config["pipeline"]["output_dir"] = str(out)
    path = _write(config, tmp_path / "config.yaml")
    log = tmp_path / "log.txt"
    ready, pending_marker = KILL_POINTS[kind]
    _kill_when(_launch(path, kind, log), lambda: ready(out))
    assert not (out / pending_marker).exists(), "killed too late: the stage had finished"
    finished = {p: p.stat().st_mtime_ns for p in out.glob("iter_*/*.done")}
    rerun = _launch(path, kind, log)
    assert rerun.wait(timeout=900) == 0, log.read_text()[-3000:]
    for marker, mtime in finished.items():  # finished stages were skipped, not redone
        assert marker.stat().st_mtime_ns == mtime, marker
    if kind == "iterative-dpo":
        assert "resuming" in log.read_text() and "chunks are done" in log.read_text()
    if kind == "rejection-sampling":
        assert "resumed from" in log.read_text()
    got, want = _tensors(_final_model(out)), _tensors(_final_model(reference_out))
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    assert (
        _final_model(out).name == "model"
        and _final_model(out).parent.name == f"iter_{1 if kind != 'csft' else 0}"
    )
