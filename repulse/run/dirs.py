"""A run's output directory: created, proven writable, and owned by one run at a time.

Ownership has two parts:

* a lock: ``<output_dir>/.repulse.lock`` held with ``fcntl.flock`` on an open file
  descriptor for as long as the run lives. The kernel drops the lock when the process
  ends, however it ends, so a killed run never leaves a stale lock; the file names the
  holder (pid, host, start time) so a second run can say who is in the way.
  Under a launcher only rank 0 takes it (``repulse.run.start``);
* the outputs of an earlier run (its config, metrics, model files, checkpoints) are not
  silently replaced: a new run into such a directory is refused unless it resumes
  (``--ckpt.load_enable``) or is told to start over (``--ckpt.overwrite``, which removes
  the earlier checkpoints, weights and metrics first).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from repulse.errors import UserError

LOCK_FILE = ".repulse.lock"

# what an earlier training run leaves at the top of its output directory besides weights
RUN_CONFIG, RUN_RESULTS = "config.yaml", ("metrics.jsonl",)
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "adapter_model.*")

F = TypeVar("F", bound=Callable[..., Any])


def prepare_output_dir(path: str | Path, flag: str = "--ckpt.output_dir") -> Path:
    """Create the output directory and prove it is writable, before any work is done."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_test_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"{flag} {path}: the output directory is not writable ({exc.strerror or exc})."
        ) from None
    return out


# --------------------------------------------------------------------------- the lock


class OutputLock:
    """An exclusive ``flock`` on ``<directory>/.repulse.lock``, held until :meth:`release` or process exit."""

    def __init__(self, directory: Path, flag: str):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self.flag = flag
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``UserError`` naming the holder.

        The file is removed on release; a process that opened it just before then would hold a
        lock on a file no longer in the directory, so after locking we check that the path still
        names the file we locked, and try again if not.
        """
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_holder(fd)
                os.close(fd)
                raise UserError(
                    f"{self.flag} {self.directory} is in use by another run ({holder}); two runs writing one "
                    "directory would mix their metrics and checkpoints. Wait for it to finish, stop it, or "
                    "choose another directory."
                ) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(holder) + "\n").encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still locked: nobody can be holding this file
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "a process that is starting"
    text = f"pid {info.get('pid', '?')} on host {info.get('host', '?')}"
    if info.get("since"):
        text += f", since {info['since']}"
    return text


_HELD: dict[str, OutputLock] = {}


def lock_output_dir(directory: str | Path, flag: str = "--ckpt.output_dir") -> OutputLock:
    """Lock ``directory`` for this process (again: the lock it already holds)."""
    key = os.path.realpath(directory)
    held = _HELD.get(key)
    if held is not None and held.fd is not None:
        return held
    lock = OutputLock(Path(directory), flag)
    lock.acquire()
    _HELD[key] = lock
    return lock


def releases_output_dirs(fn: F) -> F:
    """Decorate a command's ``run``: the output directories it locked are released when it returns
    or raises (a later run in the same process, or another process, may then use them)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before = set(_HELD)
        try:
            return fn(*args, **kwargs)
        finally:
            for key in set(_HELD) - before:
                _HELD.pop(key).release()

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------- earlier outputs


def checkpoint_dirs(ckpt_dir: Path) -> list[Path]:
    """The finished and unfinished ``step_N`` directories under ``ckpt_dir``."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step_"))


def _weights(out: Path) -> list[Path]:
    return sorted({p for pattern in WEIGHT_PATTERNS for p in out.glob(pattern) if p.is_file()})


def earlier_outputs(out: Path, config: str, results: Iterable[str], ckpt_dir: Path | None) -> list[str]:
    """What an earlier run left in ``out`` that a new one would replace, or [] when it left no result.

    Results are the non-empty ``results`` files, model weights and checkpoints (``ckpt_dir``; None
    for commands without checkpoints). A ``config`` alone is what a run that failed before its
    first result leaves behind: nothing is lost by replacing it, and refusing would block the
    corrected retry.
    """
    found = [name for name in results if (out / name).is_file() and (out / name).stat().st_size > 0]
    if ckpt_dir is not None:
        found += [p.name for p in _weights(out)]
        steps = checkpoint_dirs(ckpt_dir)
        if steps:
            found.append(f"{len(steps)} checkpoint(s) in {ckpt_dir}")
    if found and (out / config).is_file():
        found.insert(0, config)
    return found


def remove_earlier_outputs(out: Path, results: Iterable[str], ckpt_dir: Path | None) -> list[str]:
    """``--ckpt.overwrite``: delete an earlier run's checkpoints, weights and ``results`` (its config is
    rewritten by the new run); returns what was removed."""
    removed: list[str] = []
    for name in results:
        if (out / name).is_file():
            (out / name).unlink()
            removed.append(name)
    if ckpt_dir is not None:
        for p in _weights(out):
            p.unlink()
            removed.append(p.name)
        for p in checkpoint_dirs(ckpt_dir):
            shutil.rmtree(p)
            removed.append(str(p))
    return removed
