"""SFT end to end: learning, export, packing, accumulation, resume, bad input, the seed
commands as copied, and the fit loop's outputs (TensorBoard, checkpoint rotation, eval
cadence, progress bar)."""

from __future__ import annotations

import json
import math
import os
import re
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

    saved, source = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(toy.llama)
    assert saved.get_vocab() == source.get_vocab()
    assert (saved.eos_token, saved.chat_template) == (source.eos_token, source.chat_template)
    text = "User: what is three plus two?\nAssistant: five."
    assert saved(text)["input_ids"] == source(text)["input_ids"]


def test_packed_and_padded_give_the_same_losses(toy, tmp_path):
    """On data of mixed lengths (every fourth sample four joined) packing puts several
    samples in one row: the trained model sees at most 3/4 of the padded run's rows and fewer
    positions, and every step's loss is the padded run's within 1e-4 (fp32; same samples, same
    order, same update: only the float summation order differs)."""
    from packing import TrainedForwards, assert_packed_fewer, mixed_length_sft

    data = str(mixed_length_sft(toy.sft, tmp_path / "mixed.jsonl", n=24))
    with TrainedForwards() as padded_fw:
        sft.run(_cfg(toy, tmp_path / "pad", train__max_steps=3, data__dataset=data))
    with TrainedForwards() as packed_fw:
        sft.run(
            _cfg(toy, tmp_path / "pack", train__max_steps=3, data__dataset=data, engine__packing_samples=True)
        )
    assert_packed_fewer(padded_fw, packed_fw, rows_per_forward=8)
    padded, packed = _losses(tmp_path / "pad"), _losses(tmp_path / "pack")
    assert len(padded) == 3
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


def _flags(toy, out: Path, steps: int, save_steps: int) -> list[str]:
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
        "--ckpt.save_steps", str(save_steps),
        "--logger.progress_bar", "false",
    ]  # fmt: skip


def _logged_steps(out: Path) -> list[int]:
    """Steps of the complete lines of a metrics.jsonl that a live run may be appending to."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().split("\n")[:-1]:  # the last piece may be a line being written
        try:
            steps.append(json.loads(line)["step"])
        except (ValueError, KeyError):
            pass
    return steps


def _last_checkpoint(ckpts: Path) -> int:
    done = [
        int(p.parent.name.split("_")[1])
        for p in ckpts.glob("step_*/trainer.json")
        if "." not in p.parent.name
    ]
    return max(done, default=0)


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(toy, tmp_path):
    """SIGKILL a 12-step run (checkpoints every 4 steps) while it is still training, after step_4
    is on disk *and* steps past it are in metrics.jsonl; resume with ``--ckpt.load_enable``.

    Before the resume: the process was killed by the signal (not finished), no final model was
    written, no half-written checkpoint looks finished, and metrics.jsonl holds steps the resume
    will redo. After it: final weights and per-step losses equal an uninterrupted run's bit for
    bit, and metrics.jsonl holds steps 1..12 exactly once each (the lines past the checkpoint
    are dropped, not repeated)."""
    from safetensors.torch import load_file

    n, every = 12, 4
    full = tmp_path / "full"
    done = _cli([*_flags(toy, full, n, every)])
    assert done.returncode == 0, done.stderr[-3000:]
    part = tmp_path / "part"
    proc = subprocess.Popen(
        [sys.executable, "-m", "repulse", *_flags(toy, part, n, every)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpts = part / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if _last_checkpoint(ckpts) >= every and max(_logged_steps(part), default=0) > _last_checkpoint(ckpts):
            break
        time.sleep(0.01)
    still_running = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert still_running, "the run ended (or timed out) before it could be killed mid-training"
    assert proc.returncode == -signal.SIGKILL
    assert not (part / "model.safetensors").exists(), "killed runs must not leave a final model"
    assert not any(p.name.endswith(".tmp") and (p / "trainer.json").exists() for p in ckpts.iterdir())
    resume_from = _last_checkpoint(ckpts)
    before = _logged_steps(part)
    assert resume_from >= every and max(before) > resume_from, (resume_from, before)
    assert before == list(range(1, max(before) + 1))

    resumed = _cli([*_flags(toy, part, n, every), "--ckpt.load_enable"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {ckpts / f'step_{resume_from}'} at step {resume_from}" in resumed.stdout
    a, b = load_file(full / "model.safetensors"), load_file(part / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["step"] for r in _metrics(part)] == list(range(1, n + 1))  # none repeated or missing
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
    assert err.startswith("error:") and "\n\n" not in err, err
    flat = " ".join(err.split())  # the CLI wraps the paragraph at 100 columns
    for needle in needles:
        assert needle in flat, (needle, err)


@pytest.mark.slow
def test_bad_input_gives_one_paragraph_errors(toy, tmp_path):
    missing = tmp_path / "missing.jsonl"
    _assert_clean_error(_bad(tmp_path, toy, data=str(missing)), "missing.jsonl")
    no_key = tmp_path / "nokey.jsonl"
    no_key.write_text('{"input": "a", "output": "b"}\n{"question": "c", "output": "d"}\n')
    # 1-based like the malformed-JSON line numbers, with the file and line
    _assert_clean_error(_bad(tmp_path, toy, data=str(no_key)), "row 2 (", "nokey.jsonl, line 2)", "'input'")
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
    from test_rm import assert_two_processes_match, cfg_file, needs_deepspeed, torchrun

    if engine == "deepspeed":
        needs_deepspeed()
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


# --------------------------------------------------------------------------- seed commands, as copied


def _seed_argv(name: str, toy, data: Path) -> tuple[list[str], Path]:
    """The seed command ``name`` split as bash would, launcher stripped (``repulse sft``), the
    Hub model and data names swapped for toy paths, the wandb key dropped; and its output dir."""
    config_tests = str(Path(__file__).resolve().parents[1] / "config")
    if config_tests not in sys.path:
        sys.path.insert(0, config_tests)
    from seed_commands import SEED_COMMANDS
    from test_legacy import shell_split

    from repulse.config.legacy import split_launcher

    (seed,) = [c for c in SEED_COMMANDS if c.name == name]
    command, argv = split_launcher(shell_split(seed.text))
    assert command == "sft"
    swap = {
        "--pretrain": toy.llama,
        "--model.model_name_or_path": toy.llama,
        "--dataset": data,
        "--data.dataset": data,
    }
    argv = [str(swap[argv[i - 1]]) if i and argv[i - 1] in swap else a for i, a in enumerate(argv)]
    assert sum(a in swap for a in argv) == 2, "a model and a data set to swap"
    for key in ("--use_wandb", "--logger.wandb.key"):  # an account key, like the Hub names
        if key in argv:
            i = argv.index(key)
            del argv[i : i + 2]
    out = argv[argv.index("--save_path" if "--save_path" in argv else "--ckpt.output_dir") + 1]
    return argv, Path(out)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["readme_sft", "v0102_sft", "v0102_sft_muon"])
def test_sft_seed_command_runs_to_completion(toy, tmp_path, name):
    """The old-flat-form (RePULSe README) and 0.10.2-form SFT seed commands, run as
    ``python -m repulse sft <the seed's flags>`` in a fresh directory (its relative
    ``./checkpoint/...`` output path as written), with toy model/data and two steps appended
    (``--train.batch_size 4 --train.micro_batch_size 2 --train.max_steps 2``).

    Checks: exit 0; the resolved config.yaml holds the seed's values under our names (keys,
    template, packing, ZeRO stage and the DeepSpeed engine it selects, bf16, learning rate(s)),
    so the translation reached the run; metrics.jsonl has steps 1 and 2 with finite losses and the seed's peak learning rate at step 2
    (warmup: 0 at step 1); the exported directory loads with ``AutoModelForCausalLM`` /
    ``AutoTokenizer`` as a bf16 Llama with the toy model's tensors and gives finite logits."""
    import yaml
    from safetensors.torch import load_file
    from test_rm import HAS_DS
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not HAS_DS:
        pytest.skip("the seed's --zero_stage selects DeepSpeed, which is not installed")
    rows = [json.loads(line) for line in toy.sft.read_text().splitlines()[:16]]
    data = tmp_path / "openorca.jsonl"  # OpenOrca's columns
    data.write_text(
        "".join(json.dumps({"question": r["input"], "response": r["output"]}) + "\n" for r in rows)
    )
    argv, out = _seed_argv(name, toy, data)
    shrink = ["--train.batch_size", "4", "--train.micro_batch_size", "2", "--train.max_steps", "2",
              "--logger.progress_bar", "false"]  # fmt: skip
    proc = _cli(["sft", *argv, *shrink], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / out
    assert "translated" in proc.stderr  # the seed's names were rewritten, with a note

    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (cfg["data"]["input_key"], cfg["data"]["output_key"]) == ("question", "response")
    assert cfg["data"]["dataset"] == str(data) and cfg["model"]["model_name_or_path"] == str(toy.llama)
    assert cfg["engine"]["packing_samples"] is True and cfg["engine"]["zero_stage"] == 2
    assert cfg["engine"]["backend"] == "deepspeed"  # OpenRLHF's engine, chosen by the seed's ZeRO flag
    assert cfg["engine"]["param_dtype"] == "bf16" and cfg["model"]["gradient_checkpointing_enable"] is True
    assert cfg["adam"]["lr"] == 5e-6
    if name != "v0102_sft_muon":
        assert cfg["data"]["input_template"] == "User: {}\nAssistant: "  # $'...' decoded: a real newline
    else:
        assert cfg["optim"]["name"] == "muon" and cfg["muon"]["lr"] == 0.02

    logged = [r for r in _metrics(out) if "loss" in r]
    assert [r["step"] for r in logged] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in logged)
    assert logged[0]["lr"] == 0.0 and logged[1]["lr"] == pytest.approx(5e-6, rel=1e-9)
    if name == "v0102_sft_muon":
        assert logged[1]["muon_lr"] == pytest.approx(0.02, rel=1e-9)

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.architectures == ["LlamaForCausalLM"] and model.dtype == torch.bfloat16
    assert set(load_file(out / "model.safetensors")) == set(load_file(toy.llama / "model.safetensors"))
    tok = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tok("User: hello\nAssistant: ")["input_ids"]])
    assert torch.isfinite(model(ids).logits.float()).all()


# --------------------------------------------------------------------------- fit-loop outputs


def test_tensorboard_events_hold_every_logged_step(toy, tmp_path):
    """``--logger.tensorboard_dir``: the event files, read back with TensorBoard's own
    ``EventAccumulator``, hold a ``loss`` (and ``lr``, ``grad_norm``) scalar at exactly the steps
    metrics.jsonl logged (every 2 steps, plus the last), with the same values (TensorBoard stores
    float32: relative 1e-6)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, tb = tmp_path / "run", tmp_path / "tb"
    sft.run(_cfg(toy, out, train__max_steps=5, logger__logging_steps=2, logger__tensorboard_dir=str(tb)))
    logged = [r for r in _metrics(out) if "loss" in r]
    assert [r["step"] for r in logged] == [2, 4, 5]
    acc = EventAccumulator(str(tb))
    acc.Reload()
    assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(acc.Tags()["scalars"])
    for tag in ("loss", "lr", "grad_norm"):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [2, 4, 5], tag
        assert [e.value for e in events] == pytest.approx([r[tag] for r in logged], rel=1e-6), tag


def test_checkpoint_rotation_keeps_the_last_max_num(toy, tmp_path):
    """``--ckpt.save_steps 1 --ckpt.max_num 2`` over 5 steps: checkpoints are written after
    steps 1-4 (the final state is the exported model), and only ``step_3`` and ``step_4`` remain,
    each complete (``trainer.json`` naming its step, engine state present); no ``.tmp`` directory
    is left behind."""
    out = tmp_path / "run"
    sft.run(_cfg(toy, out, train__max_steps=5, ckpt__save_steps=1, ckpt__max_num=2))
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_3", "step_4"]
    for step in (3, 4):
        assert json.loads((ckpts / f"step_{step}" / "trainer.json").read_text())["step"] == step
        assert (ckpts / f"step_{step}" / "model" / "model.safetensors").is_file()
    assert not list(out.rglob("*.tmp"))
    assert (out / "model.safetensors").is_file()


def test_eval_cadence(toy, tmp_path):
    """Eval rows (``eval_loss``) are logged before training (step 0), every ``--eval.steps``
    steps and after the last step: 0, 2, 4, 5 for 5 steps with ``--eval.steps 2``. With the
    default ``-1``: once per epoch (16 samples / batch 8 = 2 steps an epoch, 2 epochs: 0, 2, 4).
    The last row evaluates the final weights: it differs from the one before it."""
    out = tmp_path / "k2"
    sft.run(_cfg(toy, out, train__max_steps=5, eval__steps=2, eval__dataset=str(toy.sft_eval)))
    evals = [r for r in _metrics(out) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [0, 2, 4, 5]
    assert evals[-1]["eval_loss"] != evals[-2]["eval_loss"] and evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    out = tmp_path / "epochs"
    sft.run(
        _cfg(
            toy,
            out,
            train__max_steps=-1,
            train__max_epochs=2,
            data__max_samples=16,
            eval__dataset=str(toy.sft_eval),
        )
    )
    assert [r["step"] for r in _metrics(out) if "eval_loss" in r] == [0, 2, 4]
    assert [r["step"] for r in _metrics(out) if "loss" in r] == [1, 2, 3, 4]


@pytest.mark.slow
def test_piped_output_has_one_plain_line_per_logging_step_and_files_share_a_mode(toy, tmp_path):
    """stdout not a terminal (CI, nohup, a pipe): one plain line per logging step - every 2 steps
    and the last - with step/total, the loss, lr and tok/s of that step's metrics.jsonl row
    (``.4g``), throughput, elapsed time and ETA; no ANSI escape anywhere in stdout or stderr.
    Every saved file (weights included: safetensors writes them 0600) has the umask's mode."""
    out = tmp_path / "run"
    flags = [a for a in _flags(toy, out, 5, 2) if a not in ("--logger.progress_bar", "false")]
    proc = _cli([*flags, "--logger.logging_steps", "2"], env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\x1b[" not in proc.stdout and "\x1b[" not in proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if " sft step " in ln]
    logged = {r["step"]: r for r in _metrics(out)}
    assert [int(re.search(r"step (\d+)/5 ", ln).group(1)) for ln in lines] == [2, 4, 5] == sorted(logged)
    for line in lines:
        step, loss, lr, tok_s = re.fullmatch(
            r"\[repulse\] sft step (\d+)/5  loss (\S+)  lr (\S+)  tok/s (\S+)  \S+ steps/s  "
            r"elapsed \d+:\d\d  ETA \d+:\d\d",
            line,
        ).groups()
        row = logged[int(step)]
        assert (loss, lr, tok_s) == (f"{row['loss']:.4g}", f"{row['lr']:.4g}", f"{row['tokens_per_s']:.4g}")
    modes = {p.relative_to(out): p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()}
    assert Path("model.safetensors") in modes and Path("checkpoints/step_4/model/model.safetensors") in modes
    assert len(set(modes.values())) == 1, modes


def test_resume_drops_metrics_past_the_checkpoint_and_torn_lines(tmp_path):
    """``MetricsLog`` on resume from step 3 keeps steps 0..3 of metrics.jsonl and drops later
    steps and a line cut short by a kill (no newline, not JSON), so appending continues cleanly."""
    from repulse.config.sections import LoggerSection
    from repulse.run.metrics import MetricsLog

    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in range(0, 6)]
    path.write_text("\n".join(lines) + "\n" + '{"step": 6, "lo')
    log = MetricsLog(tmp_path, LoggerSection(), None, True, resume_step=3)
    log.log(4, {"loss": 2.0})
    log.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4] and rows[-1]["loss"] == 2.0
