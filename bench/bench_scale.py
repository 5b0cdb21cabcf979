"""repulse SFT scaling on one machine: tokens/s and peak memory, 1 process vs 2 processes.

Run inside bench/.venv: ``bench/.venv/bin/python bench/bench_scale.py [--rounds 3] [--quick]``.
Writes ``bench/results/scale.json``.

Variants (same model, data, packing, global batch of samples, micro-batch per process, steps):

- ``1proc``: ``repulse sft`` on the local engine, one process (gradient accumulation 2);
- ``fsdp_2proc``: ``python -m torch.distributed.run --standalone --nproc-per-node 2 ... sft
  --engine.backend fsdp`` (FSDP2 over gloo), no accumulation;
- ``ds_zero3_2proc``: the same with ``--engine.backend deepspeed --engine.zero_stage 3``.

Launch: each variant runs ``bench/repulse_worker.py`` - ``repulse.cli.main``, what ``python -m
repulse`` runs, plus the benchmark clock - under ``torch.distributed.run``. tokens/s sums the
tokens of both ranks over rank 0's timed window; peak memory is each process's own max RSS
(``getrusage``), reported per rank. Every process gets the same thread count (``--threads``,
default 1), so on a 2-core machine 2 processes may use twice the cores of 1 process: the
ratio is the speed-up available from the second core through data parallelism, not a
per-core efficiency.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


def sft_args(w: dict, out: Path, micro: int) -> list[str]:
    return [
        str(harness.BENCH_DIR / "repulse_worker.py"), "sft",
        "--model.model_name_or_path", w["model"],
        "--data.dataset", w["data"],
        "--data.input_key", "input",
        "--data.output_key", "output",
        "--data.max_len", str(w["max_len"]),
        "--train.batch_size", str(w["batch_size"]),
        "--train.micro_batch_size", str(micro),
        "--train.max_steps", str(w["warmup"] + w["steps"]),
        "--train.max_epochs", "100000",
        "--train.seed", str(w["seed"]),
        "--adam.lr", str(w["lr"]),
        "--engine.param_dtype", "fp32",
        "--engine.packing_samples",
        "--ckpt.output_dir", str(out),
        "--ckpt.overwrite",  # every round reuses the directory
        "--logger.progress_bar", "false",
    ]  # fmt: skip


def torchrun(nproc: int) -> list[str]:
    # --standalone picks a free rendezvous port: other jobs on the machine may hold 29500.
    return harness.python_cmd() + ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]


def build_cases(args, assets) -> list[harness.Case]:
    warmup, steps = (2, 5) if args.quick else (3, 20)
    w = {
        "model": str(assets.llama),
        "data": str(assets.sft),
        "max_len": 128,
        "batch_size": 128,  # samples per optimizer step, all processes
        "micro_batch_size": 64,  # samples per forward per process (one packed row)
        "lr": 5e-6,
        "seed": 42,
        "warmup": warmup,
        "steps": steps,
    }
    work = harness.WORK / "scale"
    micro = w["micro_batch_size"]
    commands = {
        "1proc": harness.python_cmd() + sft_args(w, work / "1proc", micro),
        "fsdp_2proc": torchrun(2) + sft_args(w, work / "fsdp", micro) + ["--engine.backend", "fsdp"],
        "ds_zero3_2proc": torchrun(2)
        + sft_args(w, work / "ds3", micro)
        + ["--engine.backend", "deepspeed", "--engine.zero_stage", "3"],
    }
    return [
        harness.Case(
            name="sft_scale",
            unit="tokens/s",
            commands=commands,
            units_per_step=None,
            warmup=warmup,
            ranks={"1proc": 1, "fsdp_2proc": 2, "ds_zero3_2proc": 2},
            baseline="1proc",
            workload={**w, "packing": True},
        )
    ]


def main(argv: list[str] | None = None) -> int:
    return harness.drive("scale", __doc__.splitlines()[0], build_cases, argv, rounds=3)


if __name__ == "__main__":
    raise SystemExit(main())
