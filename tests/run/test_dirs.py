"""Output directories are owned: one run at a time (a lock a dead process cannot leave behind),
an earlier run's outputs are not replaced silently, a resume says what changes - or refuses
before writing anything - and applies a new learning rate; stale ``step_N.tmp`` go."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from repulse.config.sections import OfflineConfig
from repulse.errors import UserError
from repulse.run.dirs import LOCK_FILE, lock_output_dir, releases_output_dirs
from repulse.run.start import claim_output_dir
from repulse.trainers import sft

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


HOLDER = """
import sys
from repulse.run.dirs import lock_output_dir
lock_output_dir(sys.argv[1])
print("locked", flush=True)
sys.stdin.readline()
"""


def _holder(directory: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_live_holder_is_named_and_a_killed_one_leaves_no_stale_lock(tmp_path):
    """Another process holds the lock: taking it fails naming that process's pid and host. After
    it is SIGKILLed (no clean-up runs) the lock is free at once."""
    out = tmp_path / "run"
    out.mkdir()
    proc = _holder(out)
    try:
        with pytest.raises(UserError) as err:
            releases_output_dirs(lambda: lock_output_dir(out))()
        text = " ".join(str(err.value).split())
        assert f"pid {proc.pid} on host {socket.gethostname()}" in text and "in use by another run" in text
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert (out / LOCK_FILE).exists()  # the file stays; the kernel dropped the lock with the process
    lock = releases_output_dirs(lambda: lock_output_dir(out))
    lock()
    assert not (out / LOCK_FILE).exists()  # released on return (and its file removed)


def test_lock_is_reentrant_in_a_process_and_released_by_the_command(tmp_path):
    out = tmp_path / "run"
    out.mkdir()

    @releases_output_dirs
    def command():
        first = lock_output_dir(out)
        assert lock_output_dir(out) is first
        info = json.loads((out / LOCK_FILE).read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        raise RuntimeError("the command fails")

    with pytest.raises(RuntimeError):
        command()
    assert not (out / LOCK_FILE).exists()
    proc = _holder(out)  # another process can take it now
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def _flags(toy, out: Path) -> list[str]:
    return [
        "sft",
        "--model.model_name_or_path", str(toy.llama),
        "--data.dataset", str(toy.sft),
        "--data.input_key", "input", "--data.output_key", "output",
        "--train.batch_size", "8", "--train.micro_batch_size", "8", "--train.max_steps", "2",
        "--ckpt.output_dir", str(out),
    ]  # fmt: skip


@pytest.mark.slow
def test_a_second_process_into_a_locked_directory_is_refused(toy, tmp_path):
    """``repulse sft`` (a real second process) into a directory another run holds: exit 2, one
    paragraph naming the holder, and nothing written (no config.yaml)."""
    out = tmp_path / "run"
    out.mkdir()
    proc = _holder(out)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "repulse", *_flags(toy, out)],
            capture_output=True, text=True, timeout=300, env=_env(),
        )  # fmt: skip
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
    text = " ".join(run.stderr.split())
    assert f"--ckpt.output_dir {out} is in use by another run (pid {proc.pid} on host" in text
    assert not (out / "config.yaml").exists()


@pytest.mark.slow
@pytest.mark.distributed
def test_with_two_ranks_every_rank_ends_when_rank0_is_refused(toy, tmp_path):
    """Two ranks of one gloo job (started as torchrun would, but each with its own exit status),
    the directory locked elsewhere: rank 0 is refused and tells rank 1, so both end with status 2
    promptly - neither waits for the other - rank 0 printing the paragraph, rank 1 nothing (and
    no traceback)."""
    out = tmp_path / "run"
    out.mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    holder = _holder(out)
    ranks = []
    try:
        for rank in (0, 1):
            env = {**_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}  # fmt: skip
            ranks.append(
                subprocess.Popen(
                    [sys.executable, "-m", "repulse", *_flags(toy, out)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=env,
                )  # fmt: skip
            )
        results = [proc.communicate(timeout=240) for proc in ranks]
    finally:
        for proc in ranks:
            if proc.poll() is None:
                proc.kill()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert [proc.returncode for proc in ranks] == [2, 2], [r[1][-2000:] for r in results]
    assert "is in use by another run" in " ".join(results[0][1].split())
    assert "Traceback" not in results[0][1] + results[1][1] and "in use" not in results[1][1]
    assert not (out / "config.yaml").exists()


def test_evaluation_outputs_are_claimed_too(tmp_path):
    """eval-tail / gcg: a config file alone (a run that failed at start-up) is replaced; results are
    not, unless --ckpt.overwrite."""
    out = tmp_path / "ev"
    out.mkdir()
    (out / "tail_config.yaml").write_text("x: 1\n")
    claim = releases_output_dirs(claim_output_dir)
    claim(out, "tail_config.yaml", ("tail_summary.json",), overwrite=False)
    (out / "tail_summary.json").write_text("{}")
    with pytest.raises(
        UserError, match=r"already holds tail_config.yaml, tail_summary.json .*--ckpt.overwrite"
    ):
        claim(out, "tail_config.yaml", ("tail_summary.json",), overwrite=False)
    claim(out, "tail_config.yaml", ("tail_summary.json",), overwrite=True)


# --------------------------------------------------------------------------- runs in one directory


def _cfg(toy, out: Path, **over) -> OfflineConfig:
    cfg = OfflineConfig()
    cfg.model.model_name_or_path = str(toy.llama)
    cfg.data.dataset = str(toy.sft)
    cfg.data.input_key, cfg.data.output_key = "input", "output"
    cfg.data.max_len = 96
    cfg.train.batch_size = cfg.train.micro_batch_size = 8
    cfg.train.max_steps = 3
    cfg.adam.lr = 1e-3
    cfg.optim.lr_scheduler, cfg.optim.lr_warmup_ratio = "constant", 0.0
    cfg.ckpt.output_dir = str(out)
    cfg.ckpt.save_steps = 2
    cfg.logger.progress_bar = False
    for key, value in over.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def finished(toy, tmp_path_factory) -> Path:
    """A finished 3-step run with a checkpoint at step 2 (copied by each test that changes it)."""
    out = tmp_path_factory.mktemp("owned") / "run"
    sft.run(_cfg(toy, out))
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.slow
def test_another_runs_directory_is_refused_unless_overwrite(toy, tmp_path, finished):
    out = _copy(finished, tmp_path / "run")
    metrics, config = (out / "metrics.jsonl").read_bytes(), (out / "config.yaml").read_bytes()
    with pytest.raises(UserError) as err:
        sft.run(_cfg(toy, out, train__max_steps=2, ckpt__save_steps=-1))
    text = " ".join(str(err.value).split())
    assert (
        "holds another run's outputs (config.yaml, metrics.jsonl, model.safetensors, 1 checkpoint(s)" in text
    )
    assert "--ckpt.load_enable" in text and "--ckpt.overwrite" in text
    assert (out / "metrics.jsonl").read_bytes() == metrics and (out / "config.yaml").read_bytes() == config
    sft.run(_cfg(toy, out, train__max_steps=2, ckpt__save_steps=-1, ckpt__overwrite=True))
    assert [r["step"] for r in _metrics(out)] == [1, 2]
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())
    with pytest.raises(UserError, match="give one of them"):
        sft.run(_cfg(toy, out, ckpt__overwrite=True, ckpt__load_enable=True))


@pytest.mark.slow
def test_a_run_that_failed_at_start_up_does_not_block_the_retry(toy, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(UserError, match="missing.jsonl"):
        sft.run(_cfg(toy, out, data__dataset=str(tmp_path / "missing.jsonl")))
    assert (out / "config.yaml").exists()
    sft.run(_cfg(toy, out, train__max_steps=1, ckpt__save_steps=-1))
    assert [r["step"] for r in _metrics(out)] == [1]


@pytest.mark.slow
@pytest.mark.parametrize(
    "flag,value",
    [("model__model_name_or_path", "gpt2"), ("engine__backend", "fsdp"), ("optim__name", "muon")],
)
def test_a_refused_resume_changes_nothing(toy, tmp_path, finished, flag, value):
    out = _copy(finished, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    if value == "gpt2":
        value = str(toy.gpt2)
    with pytest.raises(UserError) as err:
        sft.run(_cfg(toy, out, ckpt__load_enable=True, **{flag: value}))
    text = " ".join(str(err.value).split())
    assert (
        text.startswith("--ckpt.load_enable: cannot resume from") and f"--{flag.replace('__', '.')} " in text
    )
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


@pytest.mark.slow
def test_resume_reports_and_applies_a_changed_learning_rate(toy, tmp_path, finished, capsys):
    """The saved optimizer and scheduler state carry the old lr; the resume must train with the new
    one (constant schedule: exactly the new value) and say so, field by field."""
    out = _copy(finished, tmp_path / "run")
    capsys.readouterr()
    sft.run(_cfg(toy, out, ckpt__load_enable=True, adam__lr=4e-3, train__max_steps=5))
    console = capsys.readouterr().out
    # the copy lives elsewhere than the run it was copied from: its output_dir differs too
    assert f"resuming the run in {out} from {out / 'checkpoints' / 'step_2'}; 3 setting(s) differ" in console
    assert f"  --ckpt.output_dir: '{finished}' -> '{out}'\n" in console
    assert "  --train.max_steps: 3 -> 5 (applies from step 3 on)" in console
    assert "  --adam.lr: 0.001 -> 0.004 (applies from step 3 on)" in console
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["lr"] for r in rows] == [1e-3, 1e-3, 4e-3, 4e-3, 4e-3]
    assert "lr: 0.004" in (out / "config.yaml").read_text()


@pytest.mark.slow
def test_a_stale_tmp_checkpoint_is_removed_and_never_loaded(toy, tmp_path, finished, capsys):
    out = _copy(finished, tmp_path / "run")
    stale = out / "checkpoints" / "step_3.tmp"
    stale.mkdir()
    (stale / "trainer.json").write_text('{"step": 3}')
    sft.run(_cfg(toy, out, ckpt__load_enable=True))
    console = capsys.readouterr().out
    assert f"removed {stale}" in console
    assert f"resumed from {out / 'checkpoints' / 'step_2'} at step 2" in console
    assert not stale.exists()
    assert [r["step"] for r in _metrics(out)] == [1, 2, 3]
