"""RL samples/s: repulse GRPO / RLOO vs TRL ``GRPOTrainer`` / ``RLOOTrainer``.

Run inside bench/.venv: ``bench/.venv/bin/python bench/bench_rl.py [--rounds 5] [--quick]``.
Writes ``bench/results/rl.json``.

One optimizer step on both sides = one rollout batch: 8 prompts x 4 samples = 32 completions of
at most 32 new tokens (temperature 1, top_p 1), scored by the same rule (count of the prompt's
target word), one policy update in micro-batches of 8 (gradient accumulation 4), no KL term and
so no reference model (``--algo.kl.init_coef 0`` / ``beta=0``), fp32. samples/s = completions per
step x timed steps / time between the ends of the first and last timed optimizer steps
(generation, scoring, log-probs, advantages and the update all fall inside it).

Same work on both sides: with one update per rollout and no KL term, neither computes the
old-policy log-prob forward (ratio = 1 by construction); TRL generates the whole batch in one
``generate`` call, and repulse is given the same generation batch (``--rollout.micro_batch_size
32``). repulse prefills each prompt once for its 4 samples; the prompts here are short (~8
tokens against up to 32 generated), so that saves little. At this model size both sides spend
most of a step in the same matrix multiplies (a decode step's forward is >80% of generation).

Two sizes: the toy Llama (``grpo``, ``rloo``: 1M parameters, 32 new tokens), where per-call
overheads dominate, and a compute-bound one (``grpo_20m``, ``grpo_20m_kl``: the 19.7M-parameter
Llama of ``sized_llama.py``, same tokenizer and prompts, 64 new tokens), where the matrix
multiplies do. ``grpo_20m_kl`` adds the KL to a frozen reference as a loss term (k3, coefficient
0.04: ``--algo.kl.use_loss --algo.kl.estimator k3`` / TRL's ``beta=0.04``, whose KL term is k3 in
the loss): both sides then run one no-grad reference forward per rollout, and neither runs an
old-policy forward (one update per rollout: π_old = sg(π) of the update's own forward).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

ESTIMATORS = {"grpo": "group_norm", "rloo": "rloo"}


def kl_flags(w: dict) -> list[str]:
    """No KL term (no reference model), or the KL as a k3 loss term as TRL's GRPO computes it."""
    if not w["kl_coef"]:
        return ["--algo.kl.init_coef", "0"]
    return ["--algo.kl.init_coef", str(w["kl_coef"]), "--algo.kl.use_loss", "--algo.kl.estimator", "k3"]


def repulse_cmd(w: dict, algo: str, out: Path) -> list[str]:
    return harness.python_cmd() + [
        str(harness.BENCH_DIR / "repulse_worker.py"), "rl",
        "--actor.model_name_or_path", w["model"],
        "--data.prompt_dataset", w["data"],
        "--data.input_key", "input",
        "--data.label_key", "label",
        "--reward.remote_url", str(harness.BENCH_DIR / "reward_func.py"),
        "--algo.advantage.estimator", ESTIMATORS[algo],
        *kl_flags(w),
        "--rollout.n_samples_per_prompt", str(w["n_samples"]),
        "--rollout.batch_size", str(w["batch_size"] // w["n_samples"]),
        "--rollout.micro_batch_size", str(w["batch_size"]),
        "--rollout.max_new_tokens", str(w["max_new_tokens"]),
        "--rollout.temperature", str(w["temperature"]),
        "--train.batch_size", str(w["batch_size"]),
        "--train.micro_batch_size", str(w["micro_batch_size"]),
        "--train.max_steps", str(w["warmup"] + w["steps"]),
        "--train.num_episodes", "100000",
        "--train.seed", str(w["seed"]),
        "--actor.adam.lr", str(w["lr"]),
        "--engine.param_dtype", "fp32",
        "--ckpt.output_dir", str(out),
        "--ckpt.overwrite",  # every round reuses the directory
        "--logger.progress_bar", "false",
    ]  # fmt: skip


def trl_cmd(w: dict, algo: str, out: Path) -> list[str]:
    return harness.python_cmd() + [
        str(harness.BENCH_DIR / "trl_worker.py"),
        algo,
        json.dumps({**w, "output_dir": str(out)}),
    ]


def workload(
    model: Path,
    data: Path,
    quick: bool,
    max_new_tokens: int,
    kl_coef: float = 0.0,
    warmup: int = 2,
    steps: int = 8,
) -> dict:
    """One RL workload, read by both sides (repulse flags and TRL's config come from this dict)."""
    if quick:
        warmup, steps = 1, 3
    return {
        "model": str(model),
        "data": str(data),
        "n_samples": 4,
        "batch_size": 32,  # completions per optimizer step (8 prompts x 4)
        "micro_batch_size": 8,
        "max_new_tokens": max_new_tokens,
        "temperature": 1.0,
        "lr": 1e-6,
        "kl_coef": kl_coef,
        "seed": 42,
        "warmup": warmup,
        "steps": steps,
    }


def rl_case(name: str, algo: str, w: dict, goal: float | None) -> harness.Case:
    work = harness.WORK / "rl"
    return harness.Case(
        name=name,
        unit="samples/s",
        commands={
            "repulse": repulse_cmd(w, algo, work / f"repulse_{name}"),
            "trl": trl_cmd(w, algo, work / f"trl_{name}"),
        },
        units_per_step=float(w["batch_size"]),
        warmup=w["warmup"],
        env={"repulse": {"BENCH_COUNT_TOKENS": "0"}},
        workload={**w, "repulse_estimator": ESTIMATORS[algo]},
        goal=goal,
    )


def build_cases(args, assets) -> list[harness.Case]:
    from sized_llama import parameter_count, sized_llama

    toy = workload(assets.llama, assets.prompts, args.quick, max_new_tokens=32)
    cases = [rl_case(algo, algo, toy, goal=2.0) for algo in ("grpo", "rloo")]
    big = sized_llama("20m", assets)
    params = {"model_parameters": parameter_count(big)}
    for name, kl in (("grpo_20m", 0.0), ("grpo_20m_kl", 0.04)):
        # a 20M step takes 10-25 s here: fewer, longer timed steps keep a trial under ~3 minutes
        w = workload(big, assets.prompts, args.quick, max_new_tokens=64, kl_coef=kl, warmup=1, steps=6)
        cases.append(rl_case(name, "grpo", {**w, **params}, goal=1.0))
    return cases


def main(argv: list[str] | None = None) -> int:
    return harness.drive("rl", __doc__.splitlines()[0], build_cases, argv)


if __name__ == "__main__":
    raise SystemExit(main())
