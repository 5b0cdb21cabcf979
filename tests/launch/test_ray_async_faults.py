"""Asynchronous training, dead actors and resume on a two-node Ray cluster (CPU nodes), on the toy.

One configuration throughout: GRPO on the ``e``-fraction reward (``tests/trainers/rl_reward_funcs.py``),
8 prompts x 4 samples, lr 1e-2, 16 steps; the policy as 2 actors (one per node) and one rollout
engine that receives the weights over gloo after every update; a checkpoint after every step.
The synchronous run (k = 0) is built once per module: it is the margin the asynchronous runs must
reach and the uninterrupted run a resumed one must equal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ray_helpers import by_role, env, placement, ray_rl
from test_rl import first_last, load_weights, rl_cfg, steps
from test_rm import cfg_file, metrics

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

RAY_FLAGS = ["--actor.num_nodes", "2", "--vllm.num_engines", "1", "--vllm.sync_backend", "gloo",
             "--launch.cpus_per_device", "0.5"]  # fmt: skip
TIMEOUT_S = 90  # --launch.timeout_s of these runs: a failure must be reported within it


def run_cfg(toy, out: Path):
    return rl_cfg(
        toy, out, algo__advantage__estimator="group_norm", rollout__micro_batch_size=16,
        train__micro_batch_size=16, train__max_steps=16, ckpt__save_steps=1, ckpt__max_num=2,
    )  # fmt: skip


def check_ok(proc) -> None:
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-6000:]}"


@pytest.fixture(scope="module")
def sync_run(toy, two_nodes, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sync")
    out = root / "sync"
    check_ok(
        ray_rl(["--config", cfg_file(run_cfg(toy, out), root / "sync.yaml"), *RAY_FLAGS], two_nodes, root)
    )
    return out


@pytest.mark.parametrize("k", [1, 2])
def test_async_staleness_is_bounded_and_reward_rises_as_synchronously(toy, two_nodes, sync_run, tmp_path, k):
    """``--train.async_enable --train.async_queue_size k`` with the truncated IS correction: the
    engine draws the rollouts of steps t+1..t+k while step t trains. Step s trains on samples
    drawn by weight version max(0, s - k) exactly - staleness read from every sample's recorded
    version is min(s, k), never more. Learning (mean reward of the last 4 steps over the first
    4): the synchronous run rose by 0.38 (0.10 -> 0.48, measured); both asynchronous runs must
    rise by at least half of that (and by 0.06, ten standard errors of a 4-step mean, as every
    estimator must in tests/trainers/test_rl.py). Measured: k = 1 rose 0.39 (0.11 -> 0.50),
    k = 2 rose 0.24 (0.11 -> 0.34)."""
    out = tmp_path / f"async{k}"
    flags = ["--train.async_enable", "--train.async_queue_size", str(k), "--algo.rollout_is.mode", "tis"]
    check_ok(ray_rl(["--config", cfg_file(run_cfg(toy, out), tmp_path / "a.yaml"), *RAY_FLAGS, *flags],
                    two_nodes, tmp_path))  # fmt: skip
    rows = steps(out)
    assert [r["step"] for r in rows] == list(range(1, 17))
    assert [r["staleness_max"] for r in rows] == [float(min(s, k)) for s in range(16)]
    assert [r["staleness_mean"] for r in rows] == [float(min(s, k)) for s in range(16)]
    assert all("rollout_kl" in r for r in rows)  # the IS correction ran
    sync = steps(sync_run)
    assert all("staleness_max" not in r for r in sync)
    s_first, s_last = first_last(sync)
    a_first, a_last = first_last(rows)
    rise, sync_rise = a_last - a_first, s_last - s_first
    assert sync_rise >= 0.06, (s_first, s_last)
    assert rise >= max(0.06, 0.5 * sync_rise), (k, rise, sync_rise)


def wait_for(path: Path, proc: subprocess.Popen, log: Path, limit: float) -> None:
    deadline = time.time() + limit
    while time.time() < deadline and proc.poll() is None and not path.exists():
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted:\n" + log.read_text()[-3000:]
    assert path.exists(), f"no {path} within {limit} s"


def kill_and_check(proc: subprocess.Popen, log: Path, out: Path, role: str, rank: int) -> str:
    """SIGKILL one actor's process; the run must stop with one paragraph naming it, within the timeout."""
    victim = next(r for r in placement(out) if r["role"] == role and r["rank"] == rank)
    killed = time.time()
    os.kill(victim["pid"], signal.SIGKILL)
    try:
        proc.wait(timeout=TIMEOUT_S + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the controller hung after an actor died") from None
    elapsed = time.time() - killed
    err = log.read_text()
    assert proc.returncode == 2, err[-3000:]
    assert elapsed < TIMEOUT_S, elapsed
    name = {"rollout": "rollout engine", "policy": "policy actor"}[role]
    message = err.split("error: ")[-1]
    assert f"the {name} rank {rank} (node {victim['ip']}, id {victim['node_id'][:12]}" in message, err[-3000:]
    assert "died" in message and "resume with --ckpt.load_enable" in message and "Traceback" not in message
    return err


def test_dead_actors_stop_the_run_clearly_and_resume_is_bit_identical(toy, two_nodes, sync_run, tmp_path):
    """Kill the rollout engine once step 3's checkpoint is on disk: the run stops within the timeout
    with one error naming the engine and its node. Resume (``--ckpt.load_enable``), kill the
    policy's rank 1 (its rank 0 is then blocked in a collective with it) after step 8: the same,
    naming the policy's rank 1. Resume again to the end: per-step rewards and the final weights
    equal the uninterrupted synchronous run's bit for bit, and every step is logged once."""
    out = tmp_path / "part"
    yaml = cfg_file(run_cfg(toy, out), tmp_path / "part.yaml")
    base = [sys.executable, "-m", "repulse", "rl", "--config", yaml, *RAY_FLAGS, "--launch.backend", "ray",
            "--launch.ray_address", two_nodes.address, "--launch.timeout_s", str(TIMEOUT_S)]  # fmt: skip
    ckpts = out / "checkpoints"
    for extra, role, rank, at in (([], "rollout", 0, 3), (["--ckpt.load_enable"], "policy", 1, 8)):
        log = tmp_path / f"{role}.log"
        with open(log, "w") as sink:  # a file, not a pipe: the actors' logs must never block the driver
            proc = subprocess.Popen([*base, *extra], env=env(), cwd=tmp_path, stdout=subprocess.DEVNULL,
                                    stderr=sink)  # fmt: skip
            wait_for(ckpts / f"step_{at}" / "trainer.json", proc, log, 300)
            kill_and_check(proc, log, out, role, rank)
        assert (ckpts / f"step_{at}" / "trainer.json").is_file()  # the last finished checkpoint is intact
    resumed = ray_rl(["--config", yaml, *RAY_FLAGS, "--ckpt.load_enable"], two_nodes, tmp_path)
    check_ok(resumed)
    assert "resumed from" in resumed.stdout
    assert [r["step"] for r in metrics(out)] == list(range(1, 17))
    assert [r["reward"] for r in steps(out)] == [r["reward"] for r in steps(sync_run)]
    wa, wb = load_weights(sync_run), load_weights(out)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert len({r["node_id"] for r in by_role(placement(out))["policy"]}) == 2
