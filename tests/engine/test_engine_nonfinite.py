"""Engines never apply an update with a non-finite gradient norm and never export a non-finite
weight - on one process and, with the processes agreeing, on two (``nonfinite_worker.py``).
Saved weights get the same file mode as every other saved file."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import engine_dist_worker as w
import pytest
import torch

from repulse.config.sections import EngineSection
from repulse.engine import build_engine
from repulse.errors import NonFiniteError

WORKER = Path(__file__).with_name("nonfinite_worker.py")
ROOT = WORKER.parents[2]
HAS_DS = importlib.util.find_spec("deepspeed") is not None


def _state(engine) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in engine.full_state_dict().items()}


def test_local_step_with_a_nan_gradient_changes_nothing_then_training_goes_on():
    """A NaN gradient (one weight's hook) with a finite loss: ``step()`` reports ``update_skipped``
    and the NaN norm, the weights, the AdamW moments and the schedule position stay as they were
    (the next step runs at the lr the skipped one would have used); the next clean step trains."""
    engine = build_engine(w.tiny_llama(), w.opt_spec("adam"), EngineSection(backend="local"))
    engine.train()
    w.train_step(engine, 0)
    before = _state(engine)
    moments = {k: v["exp_avg"].clone() for k, v in engine.optimizer.state.items()}
    position = engine.scheduler.last_epoch
    weight = dict(engine.module.named_parameters())["model.layers.1.self_attn.q_proj.weight"]
    handle = weight.register_hook(lambda g: g * float("nan"))
    bad = w.train_step(engine, 1)
    handle.remove()
    assert bad["update_skipped"] == 1.0 and bad["grad_norm"] != bad["grad_norm"]
    for k, v in _state(engine).items():
        assert torch.equal(v, before[k]), k
    assert all(torch.equal(engine.optimizer.state[k]["exp_avg"], m) for k, m in moments.items())
    assert engine.scheduler.last_epoch == position
    assert all(p.grad is None for p in engine.module.parameters())
    good = w.train_step(engine, 2)
    assert "update_skipped" not in good and good["lr"] == bad["lr"]
    assert any(not torch.equal(v, before[k]) for k, v in _state(engine).items())


def test_local_export_refuses_a_nan_weight_and_writes_nothing(tmp_path):
    engine = build_engine(w.tiny_llama(), w.opt_spec("adam"), EngineSection(backend="local"))
    assert engine.first_nonfinite_parameter() is None
    with torch.no_grad():
        dict(engine.module.named_parameters())["model.norm.weight"][3] = float("inf")
    assert engine.first_nonfinite_parameter() == "model.norm.weight holds 1 NaN/infinite value(s) (of 32)"
    with pytest.raises(NonFiniteError, match=r"model\.norm\.weight holds 1 NaN/infinite") as err:
        engine.export_hf(tmp_path / "hf")
    assert err.value.quantity == "parameter"
    assert not (tmp_path / "hf").exists()


def test_saved_weights_have_the_mode_of_the_other_saved_files(tmp_path):
    """safetensors writes through a private temporary file (mode 0600): the export's and the
    checkpoint's ``model.safetensors`` must end up with the mode of ``config.json`` (umask default)."""
    engine = build_engine(w.tiny_llama(), w.opt_spec("adam"), EngineSection(backend="local"))
    old = os.umask(0o022)
    try:
        engine.export_hf(tmp_path / "hf")
        engine.save(tmp_path / "ck")
    finally:
        os.umask(old)
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "hf" / "config.json") == 0o644
    assert mode(tmp_path / "hf" / "model.safetensors") == 0o644
    assert mode(tmp_path / "ck" / "model.safetensors") == mode(tmp_path / "ck" / "engine.json") == 0o644


def _launch(tmp_path: Path, runs: str, nproc: int | None) -> dict:
    out = tmp_path / "result.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    args = [str(WORKER), "--runs", runs, "--out", str(out)]
    cmd = [sys.executable, *args]
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
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"worker failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return torch.load(out, weights_only=False)


def _check(runs: dict, world: int) -> None:
    for name, r in runs.items():
        assert r["bad"]["update_skipped"] == 1.0, name
        assert r["unchanged_by_bad"] and r["changed_by_good"], name
        assert r["good"]["lr"] == r["bad"]["lr"], name  # the schedule did not move on
        assert "update_skipped" not in r["first"] and "update_skipped" not in r["good"], name
        assert len(r["named"]) == world and all(n and n.startswith(w_name()) for n in r["named"]), name
        assert len(r["raised"]) == world and all(x and "non-finite parameter" in x for x in r["raised"]), name
        assert not r["exported"], name


def w_name() -> str:
    return "model.layers.0.mlp.up_proj.weight holds 1 NaN/infinite value"


@pytest.mark.slow
@pytest.mark.distributed
def test_every_backend_on_one_process(tmp_path):
    runs = "local:0,fsdp:3" + (",deepspeed:0,deepspeed:2,deepspeed:3" if HAS_DS else "")
    _check(_launch(tmp_path, runs, None), 1)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_agree_when_only_one_sees_the_nan(tmp_path):
    """The NaN gradient and the NaN shard are on rank 1 only: both ranks skip, both name the
    weight, both refuse the export (neither waits forever in a collective)."""
    runs = "local:0,fsdp:3" + (",deepspeed:2,deepspeed:3" if HAS_DS else "")
    _check(_launch(tmp_path, runs, 2), 2)
