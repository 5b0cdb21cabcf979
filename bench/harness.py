"""Shared machinery of the side-by-side benchmarks (repulse vs TRL).

Why this shape:

- **One trial = one fresh process.** Model loading, imports, allocator state and thread pools
  never leak from one trial into the next, and a hung trial is killed by a timeout instead of
  hanging the whole run.
- **The same clock on both sides.** A trial records a timestamp at the end of every optimizer
  step (repulse: a wrapper around the engine's ``step``; TRL: a ``TrainerCallback.on_step_end``)
  and counts the tokens fed to the trained model (a forward pre-hook on its input embedding,
  non-pad ids only). Throughput is then ``units of steps W+1..W+N / (t[W+N] - t[W])``: model
  loading, data preparation, the first (warm-up) steps and the final export are excluded on
  both sides, and everything between two optimizer steps (collation, forward, backward,
  optimizer, logging) is included on both sides.
- **Interleaving.** The 2 CPU cores are shared with other work, so the speed of the machine
  drifts during a run. Trials alternate (ours, TRL, ours, TRL, ...) and we report medians and
  the per-round paired ratios, never a single measurement.

This module is imported by the bench drivers (``bench_*.py``) and by the worker processes
(``repulse_worker.py``, ``trl_worker.py``). It only imports the standard library at top level
so a missing ``bench/.venv`` gives a clear message instead of an ImportError.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
VENV = BENCH_DIR / ".venv"
WORK = BENCH_DIR / "work"
RESULTS = BENCH_DIR / "results"
TRIAL_OUT_ENV = "BENCH_TRIAL_OUT"


# ----------------------------------------------------------------------------- environment


def require_bench_env() -> None:
    """Exit with a one-paragraph message unless we run inside bench/.venv with TRL installed.

    Why: TRL is deliberately *not* a repulse dependency; it only exists in bench/.venv, and
    running a driver with the project venv would fail deep inside a worker.
    """
    problems = []
    if not (VENV / "bin" / "python").exists():
        problems.append(f"{VENV} does not exist")
    elif Path(sys.prefix).resolve() != VENV.resolve():
        problems.append(f"this is {sys.executable}, not {VENV}/bin/python")
    else:
        import importlib.util

        for mod in ("trl", "repulse", "torch", "transformers"):
            if importlib.util.find_spec(mod) is None:
                problems.append(f"module '{mod}' is not installed in {VENV}")
    if problems:
        sys.stderr.write(
            "error: the benchmarks run inside bench/.venv (repulse + TRL side by side): "
            + "; ".join(problems)
            + f". Create it with `bash {BENCH_DIR / 'setup.sh'}`, then run "
            f"`{VENV}/bin/python {Path(sys.argv[0]).name}` (or `bash {BENCH_DIR / 'run_all.sh'}`).\n"
        )
        raise SystemExit(2)


def toy_assets(root: Path | None = None) -> Any:
    """The shared toy model and data (built once, reused: ``build_all`` is idempotent)."""
    from repulse.toy import build_all

    return build_all(root or WORK / "toy")


def machine_info() -> dict[str, Any]:
    """What a reader needs to interpret the numbers: cores, load, library versions, date."""
    import importlib.metadata as md

    versions = {}
    for name in ("torch", "transformers", "trl", "accelerate", "datasets", "deepspeed", "repulse"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    mem_gib = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    cpu_model = None
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu_model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "mem_gib": mem_gib,
        "loadavg_1_5_15": list(load) if load else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


# ----------------------------------------------------------------------------- in-trial clock


class StepClock:
    """Timestamps at optimizer-step ends and the tokens counted up to each of them.

    One instance per trial process; both sides feed it the same way, so a ratio compares the
    same quantity.
    """

    def __init__(self, pad_id: int | None = None):
        self.pad_id = pad_id
        self.t0 = time.perf_counter()
        self.step_ends: list[float] = []
        self.cpu_at_step: list[float] = []  # this process's CPU seconds (all its threads)
        self.tokens_at_step: list[int] = []
        self.tokens = 0
        self._hooked: set[int] = set()

    def mark_step(self) -> None:
        self.step_ends.append(time.perf_counter() - self.t0)
        self.cpu_at_step.append(time.process_time())
        self.tokens_at_step.append(self.tokens)

    def count_tokens_of(self, model: Any) -> None:
        """Count non-pad ids entering ``model``'s input embedding (every forward, train or not).

        Why the embedding and not the model's ``forward``: a trainer may call the backbone and
        the head separately (chunked log-probs), but every forward goes through the embedding.
        """
        emb = _input_embedding(model)
        if emb is None or id(emb) in self._hooked:
            return
        self._hooked.add(id(emb))

        def hook(_module: Any, args: tuple) -> None:
            if not args or not hasattr(args[0], "numel"):
                return
            ids = args[0]
            if not self._counting:
                return
            n = int((ids != self.pad_id).sum()) if self.pad_id is not None else int(ids.numel())
            self.tokens += n

        emb.register_forward_pre_hook(hook)

    # Generation (RL) runs the embedding once per new token: the RL benches count samples, and
    # switch token counting off so the hook costs nothing there.
    _counting = True

    def disable_token_counting(self) -> None:
        self._counting = False

    def result(self, **extra: Any) -> dict[str, Any]:
        return {
            "step_ends": self.step_ends,
            "cpu_at_step": self.cpu_at_step,
            "tokens_at_step": self.tokens_at_step,
            "peak_rss_mib": peak_rss_mib(),
            **extra,
        }


def _input_embedding(model: Any) -> Any:
    """The token embedding of an HF model, or of a custom wrapper around one."""
    try:
        emb = model.get_input_embeddings()
        if emb is not None:
            return emb
    except (AttributeError, NotImplementedError):
        pass
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            return module
    return None


def peak_rss_mib() -> float:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_trial_result(payload: dict[str, Any], rank: int = 0) -> None:
    """Write a worker's result where the driver told it to (``$BENCH_TRIAL_OUT``, one file per rank)."""
    target = os.environ.get(TRIAL_OUT_ENV)
    if not target:
        print(json.dumps(payload)[:2000])
        return
    path = Path(target if rank == 0 else f"{target}.rank{rank}")
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload))
    tmp.rename(path)


# ----------------------------------------------------------------------------- driver side


class TrialError(RuntimeError):
    """A worker failed, timed out or wrote no result; the message carries its stderr tail."""


@dataclass
class Trial:
    """One measured run of one implementation on one workload."""

    impl: str
    round: int
    throughput: float | None = None  # units / s over the timed steps
    units_per_step: float | None = None
    tokens_per_step: float | None = None
    step_s_median: float | None = None
    peak_rss_mib: list[float] = field(default_factory=list)  # one per process
    wall_s: float | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def run_trial(
    cmd: Sequence[str],
    timeout_s: float,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    ranks: int = 1,
) -> list[dict[str, Any]]:
    """Run one worker command in a fresh process; return each rank's JSON result.

    Raises ``TrialError`` with the tail of the worker's output on a non-zero exit, a timeout
    (the whole process group is killed) or a missing result file.
    """
    with tempfile.TemporaryDirectory(dir=WORK if WORK.exists() else None) as tmp:
        out = Path(tmp) / "trial.json"
        full_env = {**os.environ, **(env or {}), TRIAL_OUT_ENV: str(out)}
        full_env.setdefault("TOKENIZERS_PARALLELISM", "false")
        threads = os.environ.get("BENCH_THREADS")
        if threads:
            # Same intra-op thread count for every worker (see driver_parser --threads).
            full_env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        log_path = Path(tmp) / "trial.log"
        t0 = time.perf_counter()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                list(cmd),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=str(cwd or BENCH_DIR),
                start_new_session=True,  # so a timeout can kill torchrun *and* its workers
            )
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise TrialError(
                    f"timed out after {timeout_s:.0f}s: {' '.join(cmd)}\n{_tail(log_path)}"
                ) from None
        wall = time.perf_counter() - t0
        if rc != 0:
            raise TrialError(f"exit status {rc}: {' '.join(cmd)}\n{_tail(log_path)}")
        results = []
        for r in range(ranks):
            path = out if r == 0 else Path(f"{out}.rank{r}")
            if not path.exists():
                raise TrialError(f"no result from rank {r}: {' '.join(cmd)}\n{_tail(log_path)}")
            data = json.loads(path.read_text())
            data["wall_s"] = wall
            results.append(data)
        return results


def _kill_group(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    # progress bars and weight-loading bars are noise in an error report
    lines = [ln for ln in lines if "it/s]" not in ln and "s/it]" not in ln]
    return "\n".join(lines[-n:])


def summarize(
    results: list[dict[str, Any]], warmup: int, units_per_step: float | None, unit: str
) -> dict[str, Any]:
    """Throughput over the timed steps of one trial (all ranks' tokens summed).

    ``units_per_step`` is the fixed number of samples / pairs / completions per optimizer step;
    ``None`` means the unit is tokens, counted by the embedding hook.
    """
    main = results[0]
    ends = main["step_ends"]
    if len(ends) <= warmup + 1:
        raise TrialError(f"only {len(ends)} optimizer steps recorded; need more than warmup={warmup} + 1")
    elapsed = ends[-1] - ends[warmup]
    timed = len(ends) - 1 - warmup
    durations = [b - a for a, b in zip(ends[warmup:], ends[warmup + 1 :])]
    tokens = sum(r["tokens_at_step"][-1] - r["tokens_at_step"][warmup] for r in results)
    out = {
        "timed_steps": timed,
        "elapsed_s": elapsed,
        "step_s_median": statistics.median(durations),
        "tokens_per_step": tokens / timed,
        "tokens_per_s": tokens / elapsed,
    }
    if units_per_step is None:
        out["throughput"] = out["tokens_per_s"]
        out["units_per_step"] = out["tokens_per_step"]
    else:
        out["throughput"] = units_per_step * timed / elapsed
        out["units_per_step"] = units_per_step
    # Robust variant: per-step units over the *median* step time. It discounts steps that another
    # process on the machine slowed down, but also periodic costs of the trainer itself; the
    # headline number is the plain one above, this one is kept to show how noisy a trial was.
    out["throughput_median_step"] = out["units_per_step"] / out["step_s_median"]
    # CPU-time variant (rank 0's process): units per CPU-second of the timed window. On a machine
    # shared with other jobs a process waits for a core without burning CPU time, so with one
    # thread per process this measures the work done, not the load; it misses time spent in
    # other processes (torchrun ranks > 0) and counts spinning threads, so it is a cross-check.
    cpu = main.get("cpu_at_step") or []
    if len(cpu) == len(ends) and cpu[-1] > cpu[warmup]:
        out["cpu_s_per_step"] = (cpu[-1] - cpu[warmup]) / timed
        out["throughput_cpu"] = out["units_per_step"] / out["cpu_s_per_step"]
    out["unit"] = unit
    return out


@dataclass
class Case:
    """One comparison: a workload run by several implementations (``commands[impl]``)."""

    name: str
    unit: str  # "tokens/s", "pairs/s", "samples/s"
    commands: dict[str, list[str]]
    units_per_step: float | None  # None: count tokens
    warmup: int
    ranks: dict[str, int] = field(default_factory=dict)
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    baseline: str = "trl"
    workload: dict[str, Any] = field(default_factory=dict)
    goal: float | None = None  # the target ratio ours / baseline


def run_cases(
    cases: list[Case], rounds: int, timeout_s: float, log: Callable[[str], None] = print
) -> list[dict]:
    """Run every case ``rounds`` times, interleaving implementations inside each round.

    Order within a round: case 1 (ours, trl), case 2 (ours, trl), ... so consecutive trials of
    the two implementations are seconds apart and see the same machine load.
    """
    trials: dict[str, list[Trial]] = {c.name: [] for c in cases}
    for rnd in range(rounds):
        for case in cases:
            for impl, cmd in case.commands.items():
                trial = Trial(impl=impl, round=rnd)
                t0 = time.perf_counter()
                try:
                    res = run_trial(cmd, timeout_s, env=case.env.get(impl), ranks=case.ranks.get(impl, 1))
                    s = summarize(res, case.warmup, case.units_per_step, case.unit)
                    trial.throughput = s["throughput"]
                    trial.units_per_step = s["units_per_step"]
                    trial.tokens_per_step = s["tokens_per_step"]
                    trial.step_s_median = s["step_s_median"]
                    trial.peak_rss_mib = [r["peak_rss_mib"] for r in res]
                    trial.extra = {k: v for k, v in s.items() if k not in asdict(trial)}
                    trial.extra.update(res[0].get("extra", {}))
                    msg = f"{trial.throughput:,.1f} {case.unit}"
                except TrialError as exc:
                    trial.error = str(exc)
                    msg = "FAILED: " + str(exc).splitlines()[0]
                trial.wall_s = time.perf_counter() - t0
                trials[case.name].append(trial)
                log(
                    f"[bench] round {rnd + 1}/{rounds} {case.name:<24} {impl:<8} {msg}  ({trial.wall_s:.0f}s)"
                )
    return [_case_summary(c, trials[c.name]) for c in cases]


def per_round_summary(per_round: list[float]) -> dict[str, float] | None:
    """The median of paired per-round ratios and their range (None without a round)."""
    if not per_round:
        return None
    return {
        "ratio_of_medians": statistics.median(per_round),
        "paired_min": min(per_round),
        "paired_max": max(per_round),
    }


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _case_summary(case: Case, trials: list[Trial]) -> dict[str, Any]:
    impls: dict[str, Any] = {}
    for impl in case.commands:
        mine = [t for t in trials if t.impl == impl]
        ok = [t for t in mine if t.error is None]
        tp = [t.throughput for t in ok if t.throughput is not None]
        robust = [t.extra["throughput_median_step"] for t in ok if "throughput_median_step" in t.extra]
        impls[impl] = {
            "median": _median(tp),
            "median_step_based": _median(robust),
            "min": min(tp) if tp else None,
            "max": max(tp) if tp else None,
            "spread_pct": (100.0 * (max(tp) - min(tp)) / _median(tp))
            if len(tp) > 1 and _median(tp)
            else None,
            "units_per_step": _median([t.units_per_step for t in ok if t.units_per_step is not None]),
            "tokens_per_step": _median([t.tokens_per_step for t in ok if t.tokens_per_step is not None]),
            "step_s_median": _median([t.step_s_median for t in ok if t.step_s_median is not None]),
            "peak_rss_mib_max": max((max(t.peak_rss_mib) for t in ok if t.peak_rss_mib), default=None),
            "n_ok": len(ok),
            "n_failed": len(mine) - len(ok),
            "errors": sorted({t.error for t in mine if t.error})[:2],
        }
    out: dict[str, Any] = {
        "name": case.name,
        "unit": case.unit,
        "workload": case.workload,
        "warmup_steps": case.warmup,
        "goal_ratio": case.goal,
        "impls": impls,
        "trials": [asdict(t) for t in trials],
        "commands": {k: " ".join(v) for k, v in case.commands.items()},
    }
    base = impls.get(case.baseline)
    if base is not None:
        for impl, s in impls.items():
            if impl == case.baseline or s["median"] is None or not base["median"]:
                continue
            paired = []
            for rnd in sorted({t.round for t in trials}):
                a = [t for t in trials if t.impl == impl and t.round == rnd and t.throughput]
                b = [t for t in trials if t.impl == case.baseline and t.round == rnd and t.throughput]
                if a and b:
                    paired.append(a[0].throughput / b[0].throughput)
            robust = (
                s["median_step_based"] / base["median_step_based"]
                if s["median_step_based"] and base["median_step_based"]
                else None
            )
            out.setdefault("ratios", {})[f"{impl}/{case.baseline}"] = {
                "ratio_of_medians": s["median"] / base["median"],
                "ratio_step_based": robust,
                "paired_median": _median(paired),
                "paired_min": min(paired) if paired else None,
                "paired_max": max(paired) if paired else None,
            }
    return out


def write_results(
    name: str, cases: list[dict], config: dict[str, Any], notes: list[str] | None = None
) -> Path:
    """Write ``bench/results/<name>.json`` (atomically) and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "machine": machine_info(),
        "config": config,
        "cases": cases,
        "notes": notes or [],
    }
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.rename(path)
    return path


def print_summary(cases: list[dict]) -> None:
    for c in cases:
        parts = []
        for impl, s in c["impls"].items():
            med = "n/a" if s["median"] is None else f"{s['median']:,.1f}"
            parts.append(f"{impl} {med}")
        ratio = ""
        for key, r in c.get("ratios", {}).items():
            ratio += f"  {key} = {r['ratio_of_medians']:.2f}x"
            if r["paired_min"] is not None:
                ratio += f" (paired {r['paired_min']:.2f}-{r['paired_max']:.2f})"
        print(f"[bench] {c['name']:<24} {c['unit']:<10} " + ", ".join(parts) + ratio, flush=True)


def driver_parser(description: str, rounds: int, timeout: float):
    """The flags every driver accepts; why: identical knobs make run_all.sh uniform."""
    import argparse

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--rounds", type=int, default=rounds, help="interleaved rounds (median over these)")
    p.add_argument("--timeout", type=float, default=timeout, help="seconds per trial before it is killed")
    p.add_argument("--quick", action="store_true", help="1 round, fewer steps: a smoke test, not a result")
    p.add_argument("--only", default=None, help="comma list of case names to run")
    p.add_argument("--name", default=None, help="results file name (default: the benchmark's)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads per worker process (OMP_NUM_THREADS), the same for both sides; "
        "0 leaves torch's default. Default 1: on a small shared machine, OpenMP threads that spin "
        "while other processes hold the cores make step times swing by 3-10x.",
    )
    return p


def drive(
    name: str,
    description: str,
    build_cases: Callable[[Any, Any], list[Case]],
    argv: list[str] | None = None,
    rounds: int = 5,
    timeout: float = 600,
    notes: list[str] | None = None,
) -> int:
    """The whole life of a driver: check the env, build assets and cases, run, write the JSON.

    Exit status 1 when any implementation failed every trial (the JSON still records why).
    """
    require_bench_env()
    args = driver_parser(description, rounds, timeout).parse_args(argv)
    if args.quick:
        args.rounds = 1
    if args.threads > 0:
        os.environ["BENCH_THREADS"] = str(args.threads)
    assets = toy_assets()
    cases = build_cases(args, assets)
    if args.only:
        keep = set(args.only.split(","))
        cases = [c for c in cases if c.name in keep]
    summary = run_cases(cases, args.rounds, args.timeout)
    print_summary(summary)
    path = write_results(
        args.name or (f"{name}_quick" if args.quick else name),
        summary,
        {"rounds": args.rounds, "timeout_s": args.timeout, "quick": args.quick, "threads": args.threads},
        notes,
    )
    print(f"[bench] wrote {path}", flush=True)
    return 0 if all(s["n_ok"] for c in summary for s in c["impls"].values()) else 1


def python_cmd() -> list[str]:
    """The interpreter workers run under (this one: bench/.venv)."""
    return [sys.executable]
