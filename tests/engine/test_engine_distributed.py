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
import math
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


def launch(tmp_path: Path, runs: str, nproc: int | None, timeout: int, env: dict | None = None) -> dict:
    """Run the worker (under torchrun when ``nproc``), return rank 0's results."""
    out = tmp_path / "result.pt"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "DS_ACCELERATOR": "cpu",
        **(env or {}),
    }
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
@pytest.mark.skipif(not HAS_DS, reason="needs the deepspeed extra (pip install 'repulse[deepspeed]')")
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


def _gradients(state: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
    """The gradient of the workers' loss (mean cross-entropy over the label tokens of global
    batch ``step``) at weights ``state``, accumulated over the worker's micro-batches in fp32 as
    one process does (so that it is the run's own gradient to rounding), returned in fp64. Why
    so close: Adam's first step is lr·g/(|g| + eps), as steep as lr/eps in g where |g| ~ eps."""
    import torch.nn.functional as F  # noqa: N812

    model = w.tiny_llama(0)
    model.load_state_dict(state)
    ids, labels = w.global_batch(step)
    shifted = labels[:, 1:]
    total = float((shifted != -100).sum())
    for i in range(0, w.GLOBAL_BATCH, w.MICRO):
        logits = model(input_ids=ids[i : i + w.MICRO]).logits[:, :-1].float()
        y = shifted[i : i + w.MICRO].reshape(-1)
        (
            F.cross_entropy(logits.reshape(-1, w.VOCAB), y, ignore_index=-100, reduction="sum") / total
        ).backward()
    return {n: p.grad.double() for n, p in model.named_parameters()}


def newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Muon's orthogonalisation in fp64, as published: X = G / ||G||_F (wide orientation), then
    ``steps`` times X <- aX + (bA + cA^2)X with A = XX^T, (a, b, c) = (3.4445, -4.7750, 2.0315)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = g.shape[0] > g.shape[1]
    x = g.T if tall else g
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def hand_steps(
    states: list[dict[str, torch.Tensor]], muon: bool, n: int = 2
) -> list[dict[str, torch.Tensor]]:
    """The weights after each of the first ``n`` steps of ``opt_spec(optim, plain=True)``, by hand,
    each step from the run's own weights before it (``states``; the gradients come from
    ``_gradients``), the optimizer state carried by hand:

    - Muon, on the 2-D hidden matrices (not embeddings or the LM head): B <- mu B + (1-mu) G,
      U = (1-mu) G + mu B (Nesterov), W <- W (1 - lr wd) - lr sqrt(max(1, rows/cols)) NS5(U);
    - AdamW on the rest, decoupled decay on matrices only: m <- b1 m + (1-b1) G,
      v <- b2 v + (1-b2) G^2, W <- W (1 - lr wd) - lr (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps).
    """
    spec = w.opt_spec("muon" if muon else "adam", plain=True)
    b1, b2 = spec.betas
    mu = spec.muon_momentum
    before = {k: v.float() for k, v in w.tiny_llama(0).state_dict().items()}
    buf: dict[str, torch.Tensor] = {}
    out = []
    for t in range(1, n + 1):
        grads = _gradients(before, t - 1)
        after = {}
        for name, g in grads.items():
            p = before[name].double()
            hidden = p.ndim == 2 and "embed" not in name and "lm_head" not in name
            if muon and hidden:
                b = buf[name] = mu * buf.get(name, torch.zeros_like(g)) + (1 - mu) * g
                ortho = newton_schulz((1 - mu) * g + mu * b)
                scale = math.sqrt(max(1.0, p.shape[0] / p.shape[1]))
                after[name] = p * (1 - spec.muon_lr * spec.weight_decay) - spec.muon_lr * scale * ortho
            else:
                m = buf[name + ".m"] = b1 * buf.get(name + ".m", torch.zeros_like(g)) + (1 - b1) * g
                v = buf[name + ".v"] = b2 * buf.get(name + ".v", torch.zeros_like(g)) + (1 - b2) * g * g
                decay = spec.weight_decay if p.ndim >= 2 else 0.0
                step = spec.lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + spec.eps)
                after[name] = p * (1 - spec.lr * decay) - step
        out.append(after)
        before = states[t - 1]
    return out


def assert_hand_steps(name: str, res: dict, muon: bool, muon_rtol: float = 0.0) -> None:
    """Each of the first two steps of run ``name`` moved every weight as ``hand_steps`` says:
    AdamW entries within 1e-6 (the step is ~lr = 1e-2), a Muon matrix's update within
    ``muon_rtol`` of its norm (the Newton-Schulz precision)."""
    start = {k: v.double() for k, v in w.tiny_llama(0).state_dict().items()}
    runs = [start] + [{k: v.double() for k, v in s.items()} for s in res["states"]]
    for t, expected in enumerate(hand_steps(res["states"], muon), start=1):
        for k, want in expected.items():
            got, prev = runs[t][k], runs[t - 1][k]
            if muon and want.ndim == 2 and "embed" not in k and "lm_head" not in k:
                err = float((got - want).norm() / (want - prev).norm())
                assert err <= muon_rtol, f"{name} step {t}: {k} update off by {err:.2e} of its norm"
            else:
                torch.testing.assert_close(got, want, atol=1e-6, rtol=0, msg=f"{name} step {t}: {k}")


@pytest.mark.slow
@pytest.mark.distributed
def test_deepspeed_cpu_adam_offload_and_muon(tmp_path):
    """DeepSpeed's CPU Adam (ZeRO-2 with ``adam_offload``) and its Muon, on one process. CPU Adam
    matches the 1-process torch-AdamW reference over 5 clipped, scheduled steps (1e-5) and
    resumes exactly; with a constant lr and no clipping, its first two steps are the hand-computed
    AdamW steps (``hand_steps``, 1e-6). DeepSpeed's Muon (ZeRO-2): its first two steps are the
    hand-computed Muon/AdamW steps (biases and norms not decayed, as with our own Muon), the Muon
    matrices within 1e-4 of their update's norm when Newton-Schulz runs in fp32 (5e-2 where
    DeepSpeed picks fp16 on this CPU).

    DeepSpeed JIT-compiles its CPU Adam on first use (``.ci/run`` builds it before the tests:
    1-2 min, several on a loaded machine); its Muon kernels are ``torch.compile``d, which this
    test skips (``TORCHDYNAMO_DISABLE``): the same math, eagerly."""
    pytest.importorskip("deepspeed", reason="needs the deepspeed extra (pip install 'repulse[deepspeed]')")
    from deepspeed.runtime.zero.muon.original_muon import ns_compute_dtype

    runs = "deepspeed-offload:adam:2,deepspeed-offload:adam:2:fp32:plain,deepspeed:muon:2:fp32:plain"
    results = launch(tmp_path, runs, nproc=None, timeout=1200, env={"TORCHDYNAMO_DISABLE": "1"})
    check_matches_reference("deepspeed-offload:adam:2", results["deepspeed-offload:adam:2"])
    check_resume_exact("deepspeed-offload:adam:2", results["deepspeed-offload:adam:2"])
    assert_hand_steps("cpu-adam", results["deepspeed-offload:adam:2:fp32:plain"], muon=False)
    # measured in fp32: 5e-6; fp16 (a CPU with AVX512-FP16/AMX) is ~3 decimal digits per product
    muon_rtol = 1e-4 if ns_compute_dtype("gram") == torch.float32 else 5e-2
    assert_hand_steps("muon", results["deepspeed:muon:2:fp32:plain"], muon=True, muon_rtol=muon_rtol)
