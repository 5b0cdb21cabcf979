"""SFT tokens/s: repulse vs TRL ``SFTTrainer``, with packing and without.

Run inside bench/.venv: ``bench/.venv/bin/python bench/bench_sft.py [--rounds 5] [--quick]``.
Writes ``bench/results/sft.json``.

What is compared (see README "Methodology"):

- the same toy Llama (fp32, sdpa), the same rows of ``sft.jsonl`` tokenized by repulse's
  ``SFTDataset`` for both sides (TRL gets ``input_ids`` + ``completion_mask``), ``max_len`` 128;
- tokens = non-pad token ids entering the trained model's embedding (prompt + response), counted
  by the same hook on both sides;
- **padded**: the same global batch of samples and micro-batch on both sides;
- **packed**: repulse packs every micro-batch of samples into one row with restarting position
  ids (``--engine.packing_samples``); TRL packs the dataset into ``max_len`` bins (``bfd``,
  padding-free). TRL's batch then counts bins, not samples, so our samples per step are chosen to
  carry the same number of tokens as TRL's 12 bins (both measured and reported as
  ``tokens_per_step``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


def token_stats(assets, max_len: int) -> tuple[float, float]:
    """(mean tokens per sample, mean tokens per TRL ``bfd`` bin) of the data both sides train on.

    Why: TRL's packed batch counts bins, ours counts samples; these two numbers let us give both
    sides the same number of tokens per optimizer step.
    """
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl.data_utils import pack_dataset

    from repulse.config.sections import DataSection
    from repulse.data.sft import SFTDataset

    tok = AutoTokenizer.from_pretrained(assets.llama)
    rows = [json.loads(x) for x in Path(assets.sft).read_text().splitlines() if x.strip()]
    items = SFTDataset(rows, tok, DataSection(input_key="input", output_key="output", max_len=max_len)).items
    per_sample = sum(len(it["input_ids"]) for it in items) / len(items)
    ds = Dataset.from_list([{"input_ids": it["input_ids"]} for it in items])
    bins = pack_dataset(ds, max_len, "bfd")
    per_bin = sum(len(x) for x in bins["input_ids"]) / len(bins)
    return per_sample, per_bin


def repulse_cmd(w: dict, out: Path) -> list[str]:
    cmd = harness.python_cmd() + [str(harness.BENCH_DIR / "repulse_worker.py"), "sft"]
    cmd += [
        "--model.model_name_or_path", w["model"],
        "--data.dataset", w["data"],
        "--data.input_key", "input",
        "--data.output_key", "output",
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
    if w["packing"]:
        cmd.append("--engine.packing_samples")
    return cmd


def trl_cmd(w: dict, out: Path) -> list[str]:
    return harness.python_cmd() + [
        str(harness.BENCH_DIR / "trl_worker.py"),
        "sft",
        json.dumps({**w, "output_dir": str(out)}),
    ]


def build_cases(args, assets) -> list[harness.Case]:
    max_len = 128
    warmup, steps = (2, 5) if args.quick else (3, 20)
    base = {
        "model": str(assets.llama),
        "data": str(assets.sft),
        "max_len": max_len,
        "lr": 5e-6,
        "seed": 42,
        "warmup": warmup,
        "steps": steps,
        "data_section": {"input_key": "input", "output_key": "output", "max_len": max_len},
    }
    avg, per_bin = token_stats(assets, max_len)
    work = harness.WORK / "sft"
    cases = []
    # padded: identical batches of samples on both sides
    padded = {**base, "packing": False, "batch_size": 32, "micro_batch_size": 16}
    cases.append(
        harness.Case(
            name="sft_padded",
            unit="tokens/s",
            commands={
                "repulse": repulse_cmd(padded, work / "repulse_padded"),
                "trl": trl_cmd(padded, work / "trl_padded"),
            },
            units_per_step=None,
            warmup=warmup,
            workload={**padded, "mean_tokens_per_sample": avg},
        )
    )
    # packed: same tokens per optimizer step (repulse counts samples, TRL counts max_len bins)
    bins, accum = 12, 2
    samples = round(bins * per_bin / avg / accum) * accum
    ours = {**base, "packing": True, "batch_size": samples, "micro_batch_size": samples // accum}
    theirs = {**base, "packing": True, "batch_size": bins, "micro_batch_size": bins // accum}
    cases.append(
        harness.Case(
            name="sft_packed",
            unit="tokens/s",
            commands={
                "repulse": repulse_cmd(ours, work / "repulse_packed"),
                "trl": trl_cmd(theirs, work / "trl_packed"),
            },
            units_per_step=None,
            warmup=warmup,
            workload={
                **base,
                "packing": True,
                "repulse_batch": f"{samples} samples in {accum} micro-batches (one packed row each)",
                "trl_batch": f"{bins} bins of {max_len} tokens in {accum} micro-batches (bfd, padding-free)",
                "mean_tokens_per_sample": avg,
                "mean_tokens_per_trl_bin": per_bin,
            },
            goal=1.5,
        )
    )
    return cases


def main(argv: list[str] | None = None) -> int:
    return harness.drive("sft", __doc__.splitlines()[0], build_cases, argv)


if __name__ == "__main__":
    raise SystemExit(main())
