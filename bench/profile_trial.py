"""Where does a trial's time go?  Sample a benchmark worker with py-spy and summarise.

Usage (inside bench/.venv; py-spy is installed by setup.sh):

    bench/.venv/bin/python bench/profile_trial.py sft_packed      # both sides of one SFT case
    bench/.venv/bin/python bench/profile_trial.py grpo --impl repulse

Writes ``bench/work/profiles/<case>_<impl>.txt`` (py-spy's collapsed stacks, loadable by
speedscope or flamegraph.pl) and prints, for each side, the functions with the largest
inclusive share of the samples taken inside the training loop. Why inclusive shares inside the
loop: start-up (imports, model loading, tokenization) is excluded from the benchmark numbers,
so it is excluded here too.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

# Frames that mark "inside the training loop" on each side.
LOOP_ROOTS = {
    "repulse": ("fit (repulse/trainers/fit.py", "run (repulse/trainers/rl/loop.py"),
    "trl": ("_inner_training_loop (transformers/trainer.py",),
}


def _frame_key(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)``: merge a function's lines."""
    if " (" not in frame:
        return frame
    func, rest = frame.split(" (", 1)
    return f"{func} ({rest.split(':')[0].split('/')[-1]})"


def summarize(raw: Path, roots: tuple[str, ...], top: int) -> list[tuple[float, str]]:
    """Inclusive share of each function among the samples under one of ``roots``."""
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        if not line.strip():
            continue
        stack, n_str = line.rsplit(" ", 1)
        frames = stack.split(";")
        starts = [i for i, f in enumerate(frames) if any(r in f for r in roots)]
        if not starts:
            continue
        n = int(n_str)
        total += n
        seen: set[str] = set()
        for f in frames[starts[0] :]:
            key = _frame_key(f)
            if key not in seen:
                seen.add(key)
                incl[key] += n
    if not total:
        return []
    return [(100.0 * v / total, k) for k, v in incl.most_common(top)]


def main(argv: list[str] | None = None) -> int:
    harness.require_bench_env()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "case", help="a case name of bench_sft / bench_pref / bench_rl (e.g. sft_packed, dpo, grpo)"
    )
    p.add_argument("--impl", default=None, help="repulse or trl (default: both)")
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--timeout", type=float, default=600)
    args = p.parse_args(argv)
    pyspy = shutil.which("py-spy") or str(harness.VENV / "bin" / "py-spy")
    if not Path(pyspy).exists():
        sys.stderr.write("error: py-spy is not installed in bench/.venv; re-run bench/setup.sh.\n")
        return 2
    import bench_pref
    import bench_rl
    import bench_sft

    assets = harness.toy_assets()
    ns = argparse.Namespace(quick=False)
    cases = {c.name: c for m in (bench_sft, bench_pref, bench_rl) for c in m.build_cases(ns, assets)}
    if args.case not in cases:
        sys.stderr.write(f"error: unknown case {args.case!r}; choose one of {', '.join(sorted(cases))}.\n")
        return 2
    case = cases[args.case]
    out_dir = harness.WORK / "profiles"
    out_dir.mkdir(parents=True, exist_ok=True)
    for impl, cmd in case.commands.items():
        if args.impl and impl != args.impl:
            continue
        raw = out_dir / f"{case.name}_{impl}.txt"
        full = [pyspy, "record", "-r", str(args.rate), "-f", "raw", "-o", str(raw), "--", *cmd]
        env = case.env.get(impl)
        try:
            harness.run_trial(full, args.timeout, env=env)
        except harness.TrialError as exc:
            print(f"[profile] {impl}: {exc}")
            continue
        print(f"\n[profile] {case.name} / {impl}: inclusive share of samples in the training loop ({raw})")
        for share, name in summarize(raw, LOOP_ROOTS[impl], args.top):
            print(f"  {share:5.1f}%  {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
