"""SFT end to end: learning, export, packing, accumulation, resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from repulse.config.sections import OfflineConfig
from repulse.trainers import sft


def _cfg(toy, out: Path, **over) -> OfflineConfig:
    cfg = OfflineConfig()
    cfg.model.model_name_or_path = str(toy.llama)
    cfg.data.dataset = str(toy.sft)
    cfg.data.input_key, cfg.data.output_key = "input", "output"
    cfg.data.input_template = "User: {}\nAssistant: "
    cfg.data.max_len = 96
    cfg.train.batch_size, cfg.train.micro_batch_size = 8, 8
    cfg.train.max_steps = 6
    cfg.adam.lr = 3e-3
    cfg.optim.lr_warmup_ratio = 0.0
    cfg.ckpt.output_dir = str(out)
    cfg.logger.progress_bar = False
    for key, value in over.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in _metrics(out) if "loss" in r]


@pytest.mark.slow
def test_sft_halves_eval_loss_and_exports_identical_model(toy, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    cfg = _cfg(
        toy, out, train__max_steps=-1, train__max_epochs=2, train__batch_size=16, train__micro_batch_size=16
    )
    cfg.eval.dataset = str(toy.sft_eval)
    cfg.engine.packing_samples = True
    start = time.time()
    sft.run(cfg)
    assert time.time() - start < 240, "SFT quickstart must fit a CPU-minute budget"
    evals = [r["eval_loss"] for r in _metrics(out) if "eval_loss" in r]
    assert evals[-1] <= 0.5 * evals[0], evals
    assert (out / "config.yaml").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    from repulse.models.loading import load_causal_lm

    ours = load_causal_lm(str(out), trainable=False)
    assert torch.equal(reloaded(ids).logits, ours(ids).logits)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).eos_token is not None


def test_packed_and_padded_give_the_same_losses(toy, tmp_path):
    sft.run(_cfg(toy, tmp_path / "pad", train__max_steps=3))
    sft.run(_cfg(toy, tmp_path / "pack", train__max_steps=3, engine__packing_samples=True))
    padded, packed = _losses(tmp_path / "pad"), _losses(tmp_path / "pack")
    # same samples, same order, same update: only float summation order differs (fp32)
    assert padded == pytest.approx(packed, abs=1e-4)


def test_micro_batch_times_accumulation_gives_the_same_update(toy, tmp_path):
    """Losses within a relative 1e-4 and the same update (fp32; ``same_update``)."""
    from same_update import approx, assert_same_update

    sft.run(_cfg(toy, tmp_path / "m1", train__micro_batch_size=1, train__max_steps=2))
    sft.run(_cfg(toy, tmp_path / "m8", train__micro_batch_size=8, train__max_steps=2))
    assert _losses(tmp_path / "m1") == approx(_losses(tmp_path / "m8"))
    assert_same_update(toy.llama, tmp_path / "m1", tmp_path / "m8")


def _cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "repulse", *args], capture_output=True, text=True, timeout=300, **kw
    )


def _flags(toy, out: Path, steps: int) -> list[str]:
    return [
        "sft",
        "--model.model_name_or_path", str(toy.llama),
        "--data.dataset", str(toy.sft),
        "--data.input_key", "input", "--data.output_key", "output",
        "--data.max_len", "96",
        "--train.batch_size", "8", "--train.micro_batch_size", "4",
        "--train.max_steps", str(steps),
        "--adam.lr", "1e-3",
        "--ckpt.output_dir", str(out),
        "--ckpt.save_steps", "2",
        "--logger.progress_bar", "false",
    ]  # fmt: skip


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(toy, tmp_path):
    from safetensors.torch import load_file

    full = tmp_path / "full"
    assert _cli(_flags(toy, full, 8)).returncode == 0
    part = tmp_path / "part"
    proc = subprocess.Popen(
        [sys.executable, "-m", "repulse", *_flags(toy, part, 8)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpts = part / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not (ckpts / "step_4" / "trainer.json").exists():
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert (ckpts / "step_4" / "trainer.json").exists(), "the run never reached its second checkpoint"
    assert not any(p.name.endswith(".tmp") and (p / "trainer.json").exists() for p in ckpts.iterdir())
    resumed = _cli([*_flags(toy, part, 8), "--ckpt.load_enable"])
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_file(full / "model.safetensors"), load_file(part / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [r["step"] for r in _metrics(part) if "loss" in r]
    assert steps == list(range(1, 9))
    assert _losses(part) == _losses(full)


def _bad(tmp_path: Path, toy, *extra: str, data: str | None = None) -> subprocess.CompletedProcess:
    args = [
        "sft",
        "--model.model_name_or_path", str(toy.llama),
        "--data.dataset", data or str(toy.sft),
        "--data.output_key", "output",
        "--train.batch_size", "8", "--train.micro_batch_size", "8", "--train.max_steps", "1",
        "--ckpt.output_dir", str(tmp_path / "out"),
        *extra,
    ]  # fmt: skip
    return _cli(args)


def _assert_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    err = proc.stderr.strip()
    assert err.startswith("error:"), err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.mark.slow
def test_bad_input_gives_one_paragraph_errors(toy, tmp_path):
    missing = tmp_path / "missing.jsonl"
    _assert_clean_error(_bad(tmp_path, toy, data=str(missing)), "missing.jsonl")
    no_key = tmp_path / "nokey.jsonl"
    no_key.write_text('{"input": "a", "output": "b"}\n{"question": "c", "output": "d"}\n')
    _assert_clean_error(_bad(tmp_path, toy, data=str(no_key)), "input")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _assert_clean_error(_bad(tmp_path, toy, data=str(empty)), "empty")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"input": "a", "output": "b"}\n{"input": "c", "output": \n')
    _assert_clean_error(_bad(tmp_path, toy, data=str(broken)), "line 2")
    _assert_clean_error(_bad(tmp_path, toy, "--data.input_template", "no braces"), "--data.input_template")
    _assert_clean_error(_bad(tmp_path, toy, "--train.batch_sise", "8"), "--train.batch_size")
    _assert_clean_error(_bad(tmp_path, toy, "--data.max_len", "long"), "--data.max_len")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    _assert_clean_error(
        _bad(tmp_path, toy, "--ckpt.output_dir", str(blocker / "out")), "--ckpt.output_dir", "not writable"
    )


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("engine", ["fsdp", "deepspeed"])
def test_two_processes_reproduce_the_one_process_loss_curve(toy, tmp_path, engine):
    """``torchrun --nproc-per-node 2 repulse sft`` (fsdp, or deepspeed ZeRO-3) vs one local
    process: per-step loss and gradient norm within a relative 1e-4, and the same update (fp32;
    only the reduction order differs; ``same_update``)."""
    from test_rm import HAS_DS, assert_two_processes_match, cfg_file, torchrun

    if engine == "deepspeed" and not HAS_DS:
        pytest.skip("needs deepspeed")
    sft.run(_cfg(toy, tmp_path / "one", train__max_steps=3, train__micro_batch_size=4))
    two = _cfg(
        toy,
        tmp_path / "two",
        train__max_steps=3,
        train__micro_batch_size=4,
        engine__backend=engine,
        engine__zero_stage=3,
    )
    two.engine.param_dtype = "fp32"
    torchrun(["sft", "--config", cfg_file(two, tmp_path / "two.yaml")], cwd=tmp_path)
    assert_two_processes_match(toy.llama, tmp_path / "one", tmp_path / "two", ("loss", "grad_norm"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe",
    sorted((Path(__file__).resolve().parents[2] / "recipes" / "sft").glob("*.yaml")),
    ids=lambda p: p.stem,
)
def test_sft_recipes_run(toy, tmp_path, monkeypatch, recipe):
    from test_rm import run_recipe

    run_recipe(toy, tmp_path, "sft", recipe, monkeypatch)
