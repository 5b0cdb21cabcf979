"""Two processes (torchrun, gloo) equal one: fsdp (also CPU-offloaded), deepspeed ZeRO-1/2/3 and
local vs a 1-process run.

Each test launches ``engine_dist_worker.py`` (see its docstring for the pattern) and
compares rank 0's results with :func:`engine_dist_worker.train` run here on one process
with the local engine over the full batch.

Tolerances (fp32): with AdamW, per-step global loss and grad norm within 1e-5 and final
weights within 1e-5 (absolute; measured ~1e-7). Muon gets loss 1e-4 and weights 3e-3:
its Newton-Schulz runs in bf16 (as torch.optim.Muon's) and amplifies the ~1e-7
differences a different reduction order leaves in the gradients (measured after 5 steps:
loss 1.4e-5, weights 4.6e-4), while a wrong, per-shard orthogonalisation is off by 5.8e-4
in loss and 1.9e-2 in weights. Save -> load -> continue must be bit-identical.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import engine_dist_worker as w
import pytest
import torch

WORKER = Path(w.__file__)
ROOT = WORKER.parents[2]
HAS_DS = importlib.util.find_spec("deepspeed") is not None

_REFERENCE: dict[str, dict] = {}


def reference(optim: str) -> dict:
    """The 1-process local run on the full batch (computed once per optimizer)."""
    if optim not in _REFERENCE:
        _REFERENCE[optim] = w.train("local", optim)
    return _REFERENCE[optim]


def launch(tmp_path: Path, runs: str, nproc: int | None, timeout: int) -> dict:
    """Run the worker (under torchrun when ``nproc``), return rank 0's results."""
    out = tmp_path / "result.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    args = [str(WORKER), "--runs", runs, "--out", str(out), "--ckpt-dir", str(tmp_path / "ck")]
    if nproc:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(nproc),
            *args,
        ]
    else:
        cmd = [sys.executable, *args]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return torch.load(out, weights_only=False)


def check_matches_reference(name: str, res: dict) -> None:
    optim = name.split(":")[1]
    ref = reference(optim)
    loss_tol, weight_tol = (1e-4, 3e-3) if optim == "muon" else (1e-5, 1e-5)
    if name.endswith(":bf16"):  # bf16 compute vs the fp32 reference: a sanity bound only
        loss_tol, weight_tol = 1e-3, 5e-2
    for got, exp in zip(res["metrics"], ref["metrics"]):
        assert got["loss"] == pytest.approx(exp["loss"], abs=loss_tol), name
        assert got["grad_norm"] == pytest.approx(exp["grad_norm"], abs=loss_tol), name
        assert got["lr"] == pytest.approx(exp["lr"], rel=1e-12), name
    assert set(res["state"]) == set(ref["state"])
    for k, v in ref["state"].items():
        torch.testing.assert_close(res["state"][k].float(), v, atol=weight_tol, rtol=0, msg=f"{name}: {k}")


def check_resume_exact(name: str, res: dict) -> None:
    cont = res["metrics"][w.SAVE_AFTER :]
    assert [m["loss"] for m in res["resumed_metrics"]] == [m["loss"] for m in cont], name
    for k, v in res["state"].items():
        assert torch.equal(res["resumed_state"][k], v), f"{name}: {k}"


def check_export(name: str, res: dict) -> None:
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(res["export_dir"])
    assert loaded.config.architectures == ["LlamaForCausalLM"]
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, res["state"][k].to(v.dtype)), f"{name}: {k}"


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp_and_local_two_processes_equal_one(tmp_path):
    # fsdp at zero_stage 3 (reshard after forward) and 2 (keep gathered), with Muon, with
    # bf16 mixed precision, and with the loss x world fallback for older torch; local
    # replicated over 2 processes.
    runs = "fsdp:adam,fsdp:muon,fsdp:adam:2,fsdp:adam:3:bf16,fsdp-lossscale:adam,local:adam"
    results = launch(tmp_path, runs, nproc=2, timeout=300)
    for name in runs.split(","):
        check_matches_reference(name, results[name])
    for name in ("fsdp:adam", "fsdp:muon", "fsdp:adam:2", "fsdp:adam:3:bf16", "fsdp-lossscale:adam"):
        check_resume_exact(name, results[name])
        check_export(name, results[name])
    from safetensors import safe_open

    with safe_open(Path(results["fsdp:adam:3:bf16"]["export_dir"]) / "model.safetensors", "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in f.keys())


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp_cpu_offload_reproduces_the_update(tmp_path):
    """``--engine.cpu_offload`` (FSDP2 ``CPUOffloadPolicy``: sharded parameters, gradients and the
    optimizer step on CPU) on 2 processes, ZeRO-3 and ZeRO-2 resharding: every FSDP unit carries
    the CPU policy; losses, grad norms and weights match the 1-process reference (the module's
    fp32 tolerances, abs 1e-5), the update equals the non-offloaded FSDP run's
    (``same_update``, relative 1e-3 of each tensor's update), and save -> load -> continue and
    the HF export are exact."""
    from same_update import assert_same_update

    runs = "fsdp-offload:adam,fsdp-offload:adam:2,fsdp:adam"
    results = launch(tmp_path, runs, nproc=2, timeout=300)
    assert results["fsdp:adam"]["offload_policy"] == {"OffloadPolicy"}  # the default: none
    start = w.tiny_llama(0).state_dict()
    for name in ("fsdp-offload:adam", "fsdp-offload:adam:2"):
        assert results[name]["offload_policy"] == {"CPUOffloadPolicy"}, name
        check_matches_reference(name, results[name])
        assert_same_update(start, results["fsdp:adam"]["state"], results[name]["state"])
        check_resume_exact(name, results[name])
        check_export(name, results[name])


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(not HAS_DS, reason="deepspeed is not installed")
def test_deepspeed_zero3_zero2_and_zero1_two_processes_equal_one(tmp_path):
    # The first DeepSpeed run on a machine JIT-compiles its CPU comm op (~35 s idle, minutes
    # on a loaded 2-core box); later runs take ~25 s. Hence the generous timeout. ZeRO-1 shards
    # only the optimizer state: same tolerances, same exact resume.
    runs = "deepspeed:adam:3,deepspeed:adam:2,deepspeed:adam:1"
    results = launch(tmp_path, runs, nproc=2, timeout=600)
    for name in runs.split(","):
        assert results[name]["ds_zero_stage"] == int(name.split(":")[2]), name
        check_matches_reference(name, results[name])
        check_resume_exact(name, results[name])
        check_export(name, results[name])


@pytest.mark.slow
@pytest.mark.distributed
def test_fsdp_and_deepspeed_on_one_process_without_launcher(tmp_path):
    runs = "fsdp:adam,fsdp-offload:adam" + (",deepspeed:adam:3" if HAS_DS else "")
    results = launch(tmp_path, runs, nproc=None, timeout=600)
    for name in runs.split(","):
        check_matches_reference(name, results[name])
        check_resume_exact(name, results[name])


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(not HAS_DS, reason="deepspeed is not installed")
@pytest.mark.skipif(
    os.environ.get("REPULSE_TEST_DS_JIT") != "1",
    reason="compiles DeepSpeed's CPU Adam (~1-4 min) and torch.compiles its Muon (1-5 min) on first use; "
    "set REPULSE_TEST_DS_JIT=1",
)
def test_deepspeed_cpu_adam_offload_and_muon(tmp_path):
    results = launch(tmp_path, "deepspeed-offload:adam:2,deepspeed:muon:2", nproc=None, timeout=1200)
    # ZeRO-Offload with DeepSpeed's CPU Adam: same AdamW math, so it matches the reference.
    check_matches_reference("deepspeed-offload:adam:2", results["deepspeed-offload:adam:2"])
    check_resume_exact("deepspeed-offload:adam:2", results["deepspeed-offload:adam:2"])
    # DeepSpeed's own Muon (different Newton-Schulz kernel, clipping after orthogonalisation):
    # only "it trains" is checked, not equality with our Muon.
    losses = [m["loss"] for m in results["deepspeed:muon:2"]["metrics"]]
    assert all(map(torch.isfinite, torch.tensor(losses))) and losses[-1] < losses[0]
