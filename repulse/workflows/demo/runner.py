"""Run the demo's RL runs, a few at a time, each in a worker process with one thread, and say
how far along the demo is after every finished run (elapsed and estimated remaining time), so
that a slow machine can be told from a hung one.

Each run: ``repulse.trainers.rl.run`` on an ``RLConfig`` built in code, its console output in
``<run>/log.txt``, then the exact evaluation of its final policy (``exact_summary.json``).  With
``resume``, a run whose directory already holds the same ``spec.json`` and an exact summary is
not run again.  The demo owns ``<out>/runs``: a run that is (re)trained starts from an empty
directory (an earlier or interrupted run's weights, proposal and summaries are removed first, so
nothing stale can be read as this run's), and :func:`prune_runs` removes run directories that
are not part of the current demo.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from repulse.workflows.demo.sweep import RunSpec, Setting

SPEC_FILE = "spec.json"


@dataclass(frozen=True)
class Job:
    """Everything a worker needs for one run (plain data: it crosses a process boundary)."""

    spec: RunSpec
    setting: Setting
    run_dir: str
    world: dict[str, str]  # lm, rm, prompt_file, table_file
    eta: float
    bad_words: tuple[str, ...]
    fingerprint: str  # identifies the world the run belongs to

    def record(self) -> dict[str, Any]:
        return {"run": asdict(self.spec), "setting": asdict(self.setting), "world": self.fingerprint}


_TABLES: dict[str, dict[str, Any]] = {}


def _table(path: str) -> dict[str, Any]:
    import torch

    if path not in _TABLES:
        _TABLES[path] = torch.load(path, weights_only=False)
    return _TABLES[path]


def run_job(job: Job) -> dict[str, Any]:
    """Train and evaluate one run (in a worker process, or inline); returns its exact summary."""
    import torch

    from repulse.trainers.rl import run, validate
    from repulse.workflows.demo.evaluate import evaluate_run
    from repulse.workflows.demo.sweep import rl_config

    torch.set_num_threads(1)
    start, cpu = time.perf_counter(), time.process_time()
    run_dir = Path(job.run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # not reused: start over (see the module docstring)
    run_dir.mkdir(parents=True, exist_ok=True)
    s = job.spec
    cfg = rl_config(
        Path(job.world["prompt_file"]), Path(job.world["lm"]), Path(job.world["rm"]), run_dir, job.setting,
        s.method, s.hp, s.seed, job.eta, list(job.bad_words),
    )  # fmt: skip
    validate(cfg)
    with (
        open(run_dir / "log.txt", "w") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        run(cfg)
    summary = evaluate_run(run_dir, _table(job.world["table_file"]), job.setting.kl_coef, s.seed)
    (run_dir / SPEC_FILE).write_text(json.dumps(job.record(), indent=1))
    timing = {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu}
    (run_dir / "timing.json").write_text(json.dumps(timing))
    return {**summary, **timing}


def finished(job: Job) -> dict[str, Any] | None:
    """The exact summary of ``job`` if an identical run already finished in its directory."""
    from repulse.workflows.demo.evaluate import EXACT_FILE

    d = Path(job.run_dir)
    try:
        if json.loads((d / SPEC_FILE).read_text()) == json.loads(json.dumps(job.record())):
            timing = json.loads((d / "timing.json").read_text()) if (d / "timing.json").is_file() else {}
            return {**json.loads((d / EXACT_FILE).read_text()), **timing, "reused": True}
    except (OSError, json.JSONDecodeError):
        return None
    return None


def prune_runs(root: Path, keep: list[Path]) -> list[Path]:
    """Remove every run directory under ``root`` (``<setting>/<method>/h<i>/seed<s>``) not in ``keep``,
    and the folders left empty; returns the removed ones.  ``root`` is the demo's own ``runs``."""
    if not root.is_dir():
        return []
    kept = {p.resolve() for p in keep}
    removed = []
    for run_dir in sorted(root.glob("*/*/*/*")):
        if run_dir.is_dir() and run_dir.resolve() not in kept:
            shutil.rmtree(run_dir)
            removed.append(run_dir)
    for folder, _dirs, _files in os.walk(root, topdown=False):  # children first
        if Path(folder) != root and not any(Path(folder).iterdir()):
            Path(folder).rmdir()
    return removed


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _init_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def run_all(
    jobs: list[Job],
    workers: int,
    resume: bool,
    log: Callable[[str], None],
    on_done: Callable[[Job, dict], str],
) -> dict[str, dict[str, Any]]:
    """Run every job (``workers`` at a time); ``on_done(job, summary)`` gives the run's line of
    numbers.  Returns {run name: summary}.  Prints one line per finished run with the demo's
    progress: runs done, elapsed time, and the remaining time extrapolated from the runs so far."""
    results: dict[str, dict[str, Any]] = {}
    todo = []
    for job in jobs:
        done = finished(job) if resume else None
        if done is not None:
            results[job.spec.name] = done
        else:
            todo.append(job)
    if results:
        log(f"{len(results)} run(s) reused from an earlier demo in the same directory (--resume)")
    total = len(todo)
    t0 = time.perf_counter()

    def report(job: Job, summary: dict[str, Any], k: int) -> None:
        elapsed = time.perf_counter() - t0
        remaining = elapsed / k * (total - k)
        log(
            f"run {k}/{total} {job.spec.name} ({summary['seconds']:.1f}s): {on_done(job, summary)}  "
            f"[elapsed {_clock(elapsed)}, ~{_clock(remaining)} left]"
        )

    if workers <= 1 or total <= 1:
        _init_worker()
        for k, job in enumerate(todo, 1):
            results[job.spec.name] = summary = run_job(job)
            report(job, summary, k)
        return results
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=get_context("spawn"), initializer=_init_worker
    ) as pool:
        pending: dict[Future, Job] = {pool.submit(run_job, job): job for job in todo}
        k = 0
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    job = pending.pop(fut)
                    k += 1
                    results[job.spec.name] = summary = fut.result()
                    report(job, summary, k)
        except BaseException:
            # one failed run fails the demo: do not train the queued runs before saying so
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return results
