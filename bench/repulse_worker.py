"""Run one ``repulse`` command in this process with the benchmark clock attached.

Usage (exactly the ``repulse`` CLI, one extra launcher level):

    python bench/repulse_worker.py sft --model.model_name_or_path DIR ...
    python -m torch.distributed.run --nproc-per-node 2 bench/repulse_worker.py sft ...

Why a shim instead of ``python -m repulse``: we need per-step timestamps taken the same way as
on the TRL side, and each process's own peak RSS. The shim calls ``repulse.cli.main`` - the
function ``python -m repulse`` calls - after wrapping ``repulse.engine.build_engine`` so that the
first engine built (the trained model: SFT/RM/DPO model, RL policy) reports the end of every
optimizer step and counts the tokens entering its embedding. Nothing in repulse is modified.

Environment: ``BENCH_TRIAL_OUT`` (where to write the JSON result; one file per rank),
``BENCH_COUNT_TOKENS=0`` to switch the token hook off (RL: generation would count too).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import StepClock, write_trial_result  # noqa: E402


def install_clock(clock: StepClock) -> None:
    """Wrap ``repulse.engine.build_engine`` (trainers import it at call time, so this is seen)."""
    import repulse.engine as engine_mod

    original = engine_mod.build_engine
    state = {"wrapped": False}

    def build_engine(model: Any, *args: Any, **kwargs: Any) -> Any:
        engine = original(model, *args, **kwargs)
        if state["wrapped"]:
            return engine  # critic / proposal: not the model we time
        state["wrapped"] = True
        cfg = getattr(model, "config", None)
        clock.pad_id = getattr(cfg, "pad_token_id", None)
        clock.count_tokens_of(model)
        step = engine.step

        def timed_step(*a: Any, **kw: Any) -> Any:
            out = step(*a, **kw)
            clock.mark_step()
            return out

        engine.step = timed_step
        return engine

    engine_mod.build_engine = build_engine


def main(argv: list[str]) -> int:
    clock = StepClock()
    if os.environ.get("BENCH_COUNT_TOKENS", "1") == "0":
        clock.disable_token_counting()
    install_clock(clock)
    from repulse.cli import main as repulse_main

    rc = repulse_main(argv)
    if rc == 0:
        rank = int(os.environ.get("RANK", "0"))
        extra = {"argv": argv, **logged_means(argv)}
        write_trial_result(clock.result(extra=extra), rank)
    return rc


# Logged quantities that tell whether both sides did the same work (e.g. response length in RL).
KEYS = ("loss", "response_length", "reward", "time_generate", "time_experience", "time_train")


def logged_means(argv: list[str]) -> dict[str, float]:
    """Means of a few per-step metrics from ``<ckpt.output_dir>/metrics.jsonl`` (rank 0 writes it)."""
    import json

    try:
        out = Path(argv[argv.index("--ckpt.output_dir") + 1])
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    except (ValueError, IndexError, OSError):
        return {}
    means = {}
    for key in KEYS:
        vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        if vals:
            means[f"mean_{key}"] = sum(vals) / len(vals)
    return means


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
