"""Preference training pairs/s: repulse RM vs TRL ``RewardTrainer``; repulse DPO vs TRL ``DPOTrainer``.

Run inside bench/.venv: ``bench/.venv/bin/python bench/bench_pref.py [--rounds 5] [--quick]``.
Writes ``bench/results/pref.json``.

Both sides train the same toy Llama (fp32, sdpa) on the same rows of ``pairs.jsonl``, tokenized
by repulse's ``PreferenceDataset`` (TRL receives ``chosen_ids``/``rejected_ids``, and for DPO the
shared prompt ids plus the two completions), with the same global batch of pairs, micro-batch and
optimizer steps. pairs/s = pairs per step x timed steps / time between the ends of the first and
last timed optimizer steps. DPO's reference model is the policy's starting weights on both sides
(TRL default: a copy of the model; repulse default: ``ref.model_name_or_path`` = the policy).

Cases: ``rm`` and ``dpo`` (padded, both sides); ``rm_packed`` (repulse ``--engine.packing_samples``
vs TRL's RewardTrainer, which has no packing: its padded run is the baseline) and ``dpo_packed``
(repulse packing vs TRL ``padding_free=True``). On these pairs ``rm`` and ``rm_packed`` do the same
work on the repulse side: a shared-prompt segment (prompt once, both tails) is 16-24 tokens and a
packed row is as long as the micro-batch's longest segment, so no two segments fit one row (2 x 16
> 24) and both collate to the same 16-row batch; the two cases' gap is the machine's noise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


def repulse_cmd(kind: str, w: dict, out: Path) -> list[str]:
    cmd = harness.python_cmd() + [
        str(harness.BENCH_DIR / "repulse_worker.py"), kind,
        "--model.model_name_or_path", w["model"],
        "--data.dataset", w["data"],
        "--data.prompt_key", "prompt",
        "--data.chosen_key", "chosen",
        "--data.rejected_key", "rejected",
        "--data.max_len", str(w["max_len"]),
        "--train.batch_size", str(w["batch_size"]),
        "--train.micro_batch_size", str(w["micro_batch_size"]),
        "--train.max_steps", str(w["warmup"] + w["steps"]),
        "--train.max_epochs", "100000",
        "--train.seed", str(w["seed"]),
        "--adam.lr", str(w["lr"]),
        "--engine.param_dtype", "fp32",
        "--ckpt.output_dir", str(out),
        "--ckpt.overwrite",  # every round reuses the directory
        "--logger.progress_bar", "false",
    ]  # fmt: skip
    if kind == "dpo":
        cmd += ["--model.beta", str(w["beta"])]
    if w.get("packing"):
        cmd.append("--engine.packing_samples")
    return cmd


def trl_cmd(kind: str, w: dict, out: Path) -> list[str]:
    return harness.python_cmd() + [
        str(harness.BENCH_DIR / "trl_worker.py"),
        "reward" if kind == "rm" else "dpo",
        json.dumps({**w, "output_dir": str(out)}),
    ]


def build_cases(args, assets) -> list[harness.Case]:
    warmup, steps = (2, 5) if args.quick else (3, 20)
    max_len = 128
    w = {
        "model": str(assets.llama),
        "data": str(assets.pairs),
        "max_len": max_len,
        "batch_size": 32,
        "micro_batch_size": 16,
        "lr": 5e-6,
        "beta": 0.1,
        "seed": 42,
        "warmup": warmup,
        "steps": steps,
        "packing": False,
        "data_section": {
            "prompt_key": "prompt",
            "chosen_key": "chosen",
            "rejected_key": "rejected",
            "max_len": max_len,
        },
    }
    packed = {**w, "packing": True}
    work = harness.WORK / "pref"
    cases = []
    for kind in ("rm", "dpo"):
        cases.append(
            harness.Case(
                name=kind,
                unit="pairs/s",
                commands={
                    "repulse": repulse_cmd(kind, w, work / f"repulse_{kind}"),
                    "trl": trl_cmd(kind, w, work / f"trl_{kind}"),
                },
                units_per_step=float(w["batch_size"]),
                warmup=warmup,
                workload=w,
                goal=1.5,
            )
        )
        cases.append(
            harness.Case(
                name=f"{kind}_packed",
                unit="pairs/s",
                commands={
                    "repulse": repulse_cmd(kind, packed, work / f"repulse_{kind}_packed"),
                    # TRL's RewardTrainer cannot pack: its padded run is the baseline.
                    "trl": trl_cmd(kind, packed if kind == "dpo" else w, work / f"trl_{kind}_packed"),
                },
                units_per_step=float(w["batch_size"]),
                warmup=warmup,
                workload={
                    **packed,
                    "trl_mode": "padding_free=True"
                    if kind == "dpo"
                    else "padded (RewardTrainer cannot pack)",
                },
                goal=1.5,
            )
        )
    return cases


def main(argv: list[str] | None = None) -> int:
    return harness.drive("pref", __doc__.splitlines()[0], build_cases, argv)


if __name__ == "__main__":
    raise SystemExit(main())
