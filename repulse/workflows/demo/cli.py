"""``repulse demo``: the RePULSe toy experiment (paper §4.2 and App. E.1) end to end, from nothing.

1. build the toy world: a word-level tokenizer, a tiny GPT-2 pretrained on text in which bad
   completions of "This man is a" are rare, a reward model (``repulse rm``), and the reward of
   every possible two-token response; η (a bad output is reward < η) is set from that table;
2. run REINFORCE (RLOO), reward-transformed REINFORCE, the p-proposal ablation and RePULSe, each
   at 4 hyper-parameter settings x the seeds, without and with a KL penalty (``repulse rl``
   in-process, 2 worker processes of one thread);
3. evaluate every final policy (and proposal) exactly: P(bad), average reward, KL, entropy, share
   of well-formed outputs;
4. write ``report.md`` (every number and verdict rendered from the runs), ``summary.json``
   (per-seed values, the sweep, and the claims the report makes), ``readme.md`` (a paragraph
   for the README), curves and frontiers as PNG and PDF.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import time
from pathlib import Path

from repulse.errors import UserError
from repulse.run.dirs import lock_output_dir, prepare_output_dir
from repulse.toy import demo_corpus as corpus

DEFAULT_SEEDS = (1, 2, 3, 4, 5)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{self.prog}: {message} (see '{self.prog} --help').")


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="repulse demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument(
        "--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS), metavar="SEED",
        help="the RL seeds, each run for every method and setting (default: 1 2 3 4 5)",
    )  # fmt: skip
    p.add_argument(
        "--rarity", type=float, default=corpus.DEFAULT_RARITY,
        help=f"share of the pretraining sentences '<subject> is a ...' that end in a bad completion "
        f"(default {corpus.DEFAULT_RARITY:g}); the LM's starting P(bad) follows it and is reported",
    )  # fmt: skip
    p.add_argument(
        "--quick", action="store_true",
        help="a small world, short runs and only each method's headline setting (for tests; not the experiment)",
    )  # fmt: skip
    p.add_argument("--workers", type=int, default=2, help="RL runs at a time, one thread each (default 2)")
    p.add_argument(
        "--resume", action="store_true",
        help="reuse the world and the finished runs already in --out when their recorded specs match",
    )  # fmt: skip
    p.add_argument(
        "--claims-from", metavar="SUMMARY", default=None,
        help="also check the claims of another demo's summary.json against this run's seeds (report section)",
    )  # fmt: skip
    p.add_argument(
        "--confirm-on", metavar="SUMMARY", nargs="+", default=None,
        help="summary.json of the same demo on other seeds or another --rarity (each run with --claims-from "
        "this one's): a comparison is claimed (report, README, 'claims') only if it holds there too",
    )  # fmt: skip
    p.add_argument(
        "--readme", metavar="SUMMARY", default=None,
        help="print the README paragraph rendered from a finished demo's summary.json and exit (runs nothing)",
    )  # fmt: skip
    return p


MARKER = "demo.json"  # written into --out when a demo starts: the directory is a demo's


def _check_out(out: Path) -> None:
    """--out must be new, empty, or a demo's own directory: the demo replaces its world and runs, so
    it refuses a directory that holds anything else (another command's outputs are never removed)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory.")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if (out / MARKER).is_file() or (out / "world" / "world.json").is_file():
        return
    raise UserError(
        f"--out {out}: the directory holds files that no demo wrote (no {MARKER}); the demo replaces "
        "what is in its output directory, so give a new or empty directory, or a demo's own."
    )


def _check(args: argparse.Namespace) -> None:
    if len(set(args.seeds)) != len(args.seeds):
        raise UserError(f"--seeds {' '.join(map(str, args.seeds))}: each seed once.")
    if len(args.seeds) < 2:
        raise UserError("--seeds: at least 2 seeds (the report's confidence intervals are over seeds).")
    if not 0.0 <= args.rarity < 0.5:
        raise UserError(f"--rarity {args.rarity:g}: must be in [0, 0.5).")
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: must be at least 1.")
    paths = [("--claims-from", args.claims_from), ("--readme", args.readme)]
    paths += [("--confirm-on", path) for path in args.confirm_on or []]
    for flag, path in paths:
        if path and not Path(path).is_file():
            raise UserError(f"{flag} {path}: no such file.")


SUMMARY_KEYS = ("settings", "claims", "seeds", "rarity", "world")


def _read_summary(flag: str, path: str, needs: tuple[str, ...] = SUMMARY_KEYS) -> dict:
    """A demo's summary.json with the top-level keys ``flag`` reads (else a UserError naming it)."""
    try:
        summary = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{flag} {path}: not a readable JSON file ({exc}).") from None
    if not isinstance(summary, dict) or not set(needs) <= set(summary):
        raise UserError(f"{flag} {path}: not a demo's summary.json (it needs the keys {', '.join(needs)}).")
    return summary


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.readme:
        from repulse.workflows.demo.verdicts import readme_paragraph

        defaults = parser().parse_args([])
        given = [k for k, v in vars(args).items() if k != "readme" and v != getattr(defaults, k)]
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise UserError(
                f"--readme prints a finished demo's paragraph and runs nothing: {flags} would be ignored."
            )
        print(readme_paragraph(_read_summary("--readme", args.readme)))
        return 0
    _check(args)
    out = Path(args.out)
    _check_out(out)
    other = _read_summary("--claims-from", args.claims_from, ("claims",)) if args.claims_from else None
    confirm = [_read_summary("--confirm-on", path) for path in args.confirm_on or []]
    for path, c in zip(args.confirm_on or [], confirm):
        if bool(c.get("quick")) != args.quick:
            raise UserError(
                f"--confirm-on {path}: a {'quick' if c.get('quick') else 'full'} demo cannot confirm the claims of a "
                f"{'quick' if args.quick else 'full'} one (other settings and grids)."
            )
    import torch

    # one thread: two OpenMP threads per process on a shared 2-core machine spin and slow every step
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    load_start = os.getloadavg()
    prepare_output_dir(out, "--out")
    lock = lock_output_dir(out, "--out")  # one demo at a time in a directory
    (out / MARKER).write_text(
        json.dumps({"argv": argv, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n"
    )
    try:
        return _run(args, out, other, confirm, t0, load_start)
    finally:
        lock.release()


def _run(
    args: argparse.Namespace, out: Path, other: dict | None, confirm: list[dict], t0: float,
    load_start: tuple[float, float, float],
) -> int:  # fmt: skip
    """The demo proper, in a locked --out: the world, the runs, the report."""
    from repulse.workflows.demo.report import summarise_world, write_outputs
    from repulse.workflows.demo.runner import Job, prune_runs, run_all
    from repulse.workflows.demo.sweep import all_runs, settings
    from repulse.workflows.demo.world import WorldSpec, build_world

    def log(msg: str) -> None:
        print(f"[demo {_clock(time.perf_counter() - t0)}] {msg}", flush=True)

    spec = WorldSpec.quick(args.rarity) if args.quick else WorldSpec(rarity=args.rarity)
    log(f"1/3 the toy world (rarity {args.rarity:g}): tokenizer, LM, reward model, reward table")
    world = build_world(out, spec, log=log, reuse=args.resume)
    facts = summarise_world(world)
    sets = settings(args.quick)
    n = next(iter(sets.values())).samples_per_step
    log(
        f"   P(bad) of the pretrained LM {facts['p0_bad']:.2e} (x {n} samples per step = {facts['p0_bad'] * n:.3f}); "
        f"eta {world.eta:.2f}; {facts['n_responses']:,} responses scored"
    )
    specs = all_runs(sets, args.seeds, only_headline=args.quick)
    world_paths = {
        "lm": str(world.lm), "rm": str(world.rm), "prompt_file": str(world.prompt_file),
        "table_file": str(world.table_file),
    }  # fmt: skip
    if not args.resume and (out / "runs").exists():
        log(
            f"   removing the runs of an earlier demo in {out / 'runs'} (--resume would reuse the finished ones)"
        )
    jobs = [
        Job(
            s,
            sets[s.setting],
            str(out / "runs" / s.name),
            world_paths,
            world.eta,
            tuple(world.bad_words),
            facts["fingerprint"],
        )
        for s in specs
    ]
    earlier = _earlier_measurement(out) if args.resume else None
    # the runs directory holds exactly this demo's runs (plots of it show nothing else)
    prune_runs(out / "runs", [Path(j.run_dir) for j in jobs] if args.resume else [])
    log(
        f"2/3 RL: {len(jobs)} runs ({len(sets)} settings x 4 methods x "
        f"{'1' if args.quick else '4'} hyper-parameter settings x {len(args.seeds)} seeds), {args.workers} at a time"
    )

    def line(job, s) -> str:
        extra = f"  q P(bad) {s['q_p_bad']:.2e}" if "q_p_bad" in s else ""
        return f"P(bad) {s['p_bad']:.2e}  reward {s['avg_reward']:.2f}  well-formed {s['nondegenerate']:.3f}{extra}"

    results = run_all(jobs, args.workers, args.resume, log, line)
    log("3/3 report: summary.json, report.md, readme.md, figures")
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    reused = sum(1 for r in results.values() if r.get("reused"))
    timing = {
        "wall_seconds": time.perf_counter() - t0,
        "cpu_seconds": cpu,
        "reused_runs": reused,
        "run_cpu_seconds": sum(r.get("cpu_seconds", 0.0) for r in results.values()),
        "load_average_start": list(load_start),
        "load_average_end": list(os.getloadavg()),
    }
    # the time of the experiment: this run's when it trained every run, else (every run reused) the
    # measurement of the demo that trained them, carried over; with a mix, none
    if reused == 0:
        timing["measured"] = {
            k: timing[k] for k in ("wall_seconds", "cpu_seconds", "load_average_start", "load_average_end")
        }
    elif reused == len(results) and earlier is not None:
        timing["measured"] = earlier
    paths = write_outputs(out, world, facts, sets, args, jobs, results, timing, other, confirm)
    timing["wall_seconds"] = time.perf_counter() - t0
    log(f"done in {_clock(timing['wall_seconds'])} (CPU {timing['cpu_seconds']:.0f} s): {paths['report']}")
    return 0


def _earlier_measurement(out: Path) -> dict | None:
    """The timing of the demo that trained the runs in ``out`` (its summary.json's), if it has one."""
    try:
        timing = json.loads((out / "summary.json").read_text())["timing"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if "measured" in timing:
        return timing["measured"]
    if timing.get("reused_runs") == 0:  # a summary written before "measured" was recorded
        return {k: timing[k] for k in ("wall_seconds", "cpu_seconds") if k in timing}
    return None


def _clock(seconds: float) -> str:
    seconds = max(0, int(math.floor(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s"
