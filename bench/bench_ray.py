"""Phase timings of an RL step on Ray vs in one process, on the toy.

Where does a step's time go when the roles move into Ray actors? Same workload every case:
GRPO on the toy Llama (~1.3M parameters), 8 prompts x 4 samples x 16 new tokens per step, one
optimizer step per rollout, the e-fraction reward function (computed by the controller).

  local      one process, every role in it (`repulse rl`)
  ray        one policy actor that samples itself (its hf engine shares the trained module)
  ray+engine the policy actor and one rollout-engine actor holding a copy of the weights, which
             arrive over gloo after every update (disaggregated)
  ray+async  as ray+engine with --train.async_enable --train.async_queue_size 1: the engine draws
             step t+1 while step t trains

Phases per step (medians over the steps after the first --warmup), from metrics.jsonl:
generation (``time_generate``: sampling, as the controller sees it), reward (``time_reward``),
training (``time_experience`` + ``time_train``), sync (``time_sync``: weights into the engines, or
the version bump), step (``time_step``: wall clock of the whole step) and samples/s. In the
async case the generation runs beside the training, so step < the sum of the phases; the time
the loop waited for a rollout is ``time_rollout_wait``.

Usage: python bench/bench_ray.py [--steps 12] [--warmup 2] [--out bench/results/ray.json]
Needs the ray extra (``pip install 'repulse[ray]'``); starts a local Ray cluster per Ray case.
Every process runs one OpenMP thread (the machines are shared; see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "local": [],
    "ray": ["--launch.backend", "ray"],
    "ray+engine": ["--launch.backend", "ray", "--vllm.num_engines", "1", "--vllm.sync_backend", "gloo"],
    "ray+async": ["--launch.backend", "ray", "--vllm.num_engines", "1", "--vllm.sync_backend", "gloo",
                  "--train.async_enable", "--train.async_queue_size", "1", "--algo.rollout_is.mode", "tis"],
}  # fmt: skip
PHASES = {
    "generation": ("time_generate",),
    "reward": ("time_reward",),
    "training": ("time_experience", "time_train"),
    "sync": ("time_sync",),
    "wait": ("time_rollout_wait",),
    "step": ("time_step",),
    "samples_per_s": ("samples_per_s",),
}


def workload(toy, out: Path, steps: int) -> list[str]:
    reward = ROOT / "tests" / "trainers" / "rl_reward_funcs.py"
    return [
        "--actor.model_name_or_path", str(toy.llama), "--reward.remote_url", str(reward),
        "--data.prompt_dataset", str(toy.prompts), "--data.max_len", "64",
        "--rollout.batch_size", "8", "--rollout.n_samples_per_prompt", "4", "--rollout.micro_batch_size", "32",
        "--rollout.max_new_tokens", "16", "--train.batch_size", "32", "--train.micro_batch_size", "32",
        "--train.max_steps", str(steps), "--train.num_episodes", "8", "--algo.advantage.estimator", "group_norm", "--algo.kl.init_coef", "0",
        "--actor.adam.lr", "1e-2", "--ckpt.output_dir", str(out), "--logger.progress_bar", "false",
        "--launch.local_num_cpus", "4", "--launch.cpus_per_device", "0.5",
    ]  # fmt: skip


def run_case(name: str, toy, root: Path, steps: int, warmup: int) -> dict:
    out = root / name.replace("+", "_")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    args = workload(toy, out, steps) + CASES[name]
    if name == "local":  # the launch knobs warn without Ray; leave them out
        args = args[: args.index("--launch.local_num_cpus")]
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "repulse", "rl", *args], env=env, capture_output=True,
                          text=True, timeout=1800)  # fmt: skip
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-4000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time_step" in r][warmup:]
    result = {"case": name, "steps_timed": len(rows), "wall_s": wall}
    for phase, keys in PHASES.items():
        if all(k in rows[0] for k in keys):
            result[phase] = statistics.median(sum(r[k] for k in keys) for r in rows)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--only", default=",".join(CASES))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "ray.json"))
    args = ap.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    from repulse.toy import build_all

    results = []
    with tempfile.TemporaryDirectory(prefix="bench_ray") as tmp:
        toy = build_all(Path(tmp) / "toy")
        for name in args.only.split(","):
            print(f"=== {name}", flush=True)
            results.append(run_case(name, toy, Path(tmp), args.steps, args.warmup))
            print(json.dumps(results[-1]), flush=True)
    from harness import machine_info
    from report import render_ray

    config = {"steps": args.steps, "warmup": args.warmup, "rounds": 1, "threads": 1}
    data = {"machine": machine_info(), "config": config, "cases": results}
    Path(args.out).write_text(json.dumps(data, indent=1) + "\n")
    print("\n".join(render_ray(data)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
