"""Kill a training run with SIGKILL mid-way, resume it with ``--ckpt.load_enable``, and check
that it ends exactly where an uninterrupted run ends.

The run is killed while it is still training, once a checkpoint is on disk *and* metrics.jsonl
holds steps past it (so the resume must drop and redo them). Bit-exact means: every logged
metric except wall-clock ones equal, metrics.jsonl with every step once, and every exported
safetensors file (the model, and a critic's or proposal's beside it) equal tensor for tensor.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from test_rm import ROOT, cli


def wall_clock(key: str) -> bool:
    """A metric that measures time (``time``, ``time_step``, ``time_generate``, ``tokens_per_s``)."""
    return key == "time" or key.startswith("time_") or key.endswith("_per_s")


def logged_steps(out: Path) -> list[int]:
    """Steps of the complete lines of a metrics.jsonl that a live run may be appending to."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    found = []
    for line in path.read_text().split("\n")[:-1]:  # the last piece may be a line being written
        try:
            found.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            pass
    return found


def last_checkpoint(out: Path) -> int:
    """The step of the newest finished checkpoint under ``out/checkpoints`` (0 if none)."""
    done = [
        int(p.parent.name.split("_")[1])
        for p in (out / "checkpoints").glob("step_*/trainer.json")
        if "." not in p.parent.name
    ]
    return max(done, default=0)


def rows(out: Path) -> list[dict]:
    """metrics.jsonl without its wall-clock fields."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(ln).items() if not wall_clock(k)} for ln in lines if ln.strip()]


def weights(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Every exported safetensors file under ``out`` (not the checkpoints), by relative path."""
    from safetensors.torch import load_file

    return {
        str(p.relative_to(out)): load_file(p)
        for p in sorted(out.rglob("*.safetensors"))
        if "checkpoints" not in p.relative_to(out).parts
    }


def assert_kill_and_resume_is_bit_identical(
    argv: list[str], tmp_path: Path, every: int, n: int, min_weights: int = 1
) -> tuple[Path, Path]:
    """``repulse <argv> --ckpt.output_dir <dir>`` (``argv`` saves every ``every`` of ``n``
    steps) run once uninterrupted and once SIGKILLed mid-way then resumed; see the module
    docstring. ``min_weights``: how many exported safetensors files each run must have.
    Returns the two output directories (uninterrupted, resumed)."""
    full, part = tmp_path / "full", tmp_path / "part"
    done = cli([*argv, "--ckpt.output_dir", str(full)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "repulse", *argv, "--ckpt.output_dir", str(part)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path,
    )  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if last_checkpoint(part) >= every and max(logged_steps(part), default=0) > last_checkpoint(part):
            break
        time.sleep(0.01)
    still_running = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert still_running, "the run ended (or timed out) before it could be killed mid-training"
    assert proc.returncode == -signal.SIGKILL
    assert not (part / "model.safetensors").exists(), "killed runs must not leave a final model"
    resume_from = last_checkpoint(part)
    before = logged_steps(part)
    assert every <= resume_from < max(before) < n, (resume_from, before)

    resumed = cli([*argv, "--ckpt.output_dir", str(part), "--ckpt.load_enable"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {resume_from}" in resumed.stdout, resumed.stdout[-2000:]
    a, b = rows(full), rows(part)
    steps = [r["step"] for r in a]
    assert [r["step"] for r in b] == steps and len(set(steps)) == len(steps)  # none repeated
    assert set(range(1, n + 1)) <= set(steps) and steps[-1] == n  # none missing
    for ra, rb in zip(a, b):
        assert ra == rb, (
            ra["step"],
            {k: (ra.get(k), rb.get(k)) for k in ra.keys() | rb.keys() if ra.get(k) != rb.get(k)},
        )
    wa, wb = weights(full), weights(part)
    assert wa.keys() == wb.keys() and len(wa) >= min_weights, (sorted(wa), sorted(wb))
    for name, tensors in wa.items():
        assert tensors.keys() == wb[name].keys(), name
        for k, t in tensors.items():
            assert torch.equal(t, wb[name][k]), (name, k)
    return full, part
