"""``repulse pipeline rejection-sampling | iterative-dpo | csft``: the seed's bash loops as one command.

    repulse pipeline rejection-sampling --config recipes/workflows/rejection_sampling.yaml

One YAML config holds every stage's options, nested under the stage's name (``generate:``,
``score:``, ``sft:`` / ``dpo:``, each the options of that command) plus ``pipeline:`` (the starting
policy, the number of iterations, the output directory). Iteration i of

- **rejection-sampling** generates n responses per prompt of slice i with the current policy,
  keeps the best one per prompt (``rs``) and fine-tunes the policy on them;
- **iterative-dpo** generates n responses, pairs the best and the worst per prompt (``iter_dpo``)
  and trains the policy with DPO against the fixed reference;
- **csft** (one iteration) scores a data set, writes each reward into its input (``csft``) and
  fine-tunes on it; generation conditioned on a high score then follows the high-reward style.

Everything goes under ``--pipeline.output_dir``: ``iter_<i>/`` holds each stage's output
(``generate.jsonl``, ``rs.jsonl`` / ``iter_dpo.jsonl`` / ``csft.jsonl``, ``model/``) and a
``<stage>.done`` marker written when the stage is complete; ``iter.log`` is the iteration log,
``metrics.jsonl`` one line per stage, ``state.json`` the last finished iteration and the current
model. A stage whose marker exists is skipped, so a run killed at any point (even by SIGKILL)
continues, when started again with the same config, from the stage it was in: generation and
scoring resume from their last whole chunk, training from its last checkpoint
(``--sft.ckpt.save_steps``) or from the start of the stage. Every stage is deterministic on CPU, so
the final model is the one an uninterrupted run makes. A finished run with a larger
``--pipeline.iterations`` continues with the next iteration; any other change of the config is
refused (use a new output directory).

The pipeline sets the options that connect the stages (each stage's model, data and output paths,
the post-processor, the keys of the intermediate files); setting one of them is an error that
names the pipeline option to use instead.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repulse.config import parse_config
from repulse.config.schema import flatten, get_path, leaves, to_dict
from repulse.config.sections import (
    ConditionalSFTConfig,
    IterativeDPOConfig,
    RejectionSamplingConfig,
)
from repulse.errors import UserError


@dataclass(frozen=True)
class Kind:
    """One workflow: its config root, stage names in order, the score post-processor, the trainer."""

    root: type
    stages: tuple[str, ...]
    post_processor: str
    trainer: str  # the config section of the training stage: sft | dpo
    help: str


KINDS: dict[str, Kind] = {
    "rejection-sampling": Kind(
        RejectionSamplingConfig, ("generate", "score", "sft"), "rs", "sft",
        "generate n responses per prompt, keep the best (rs), SFT on them; repeat",
    ),
    "iterative-dpo": Kind(
        IterativeDPOConfig, ("generate", "score", "dpo"), "iter_dpo", "dpo",
        "generate n responses per prompt, best vs worst pairs (iter_dpo), DPO on them; repeat",
    ),
    "csft": Kind(
        ConditionalSFTConfig, ("score", "sft"), "csft", "sft",
        "score a data set, write each reward into its input (csft), SFT on it",
    ),
}  # fmt: skip

# Options the pipeline sets itself, by stage section, with what sets them instead.
_BY_PIPELINE = "the pipeline connects the stages"
_GENERATE_OWNED = {
    "model.model_name_or_path": "--pipeline.policy (iteration 0; later iterations use the last model)",
    "data.iter": "the iteration number",
    "output.path": _BY_PIPELINE,
}
_SCORE_OWNED = {
    "data.dataset": "the generate stage's output",
    "data.dataset_probs": _BY_PIPELINE,
    "data.input_key": _BY_PIPELINE,
    "data.output_key": _BY_PIPELINE,
    "data.input_template": "the generate stage (its inputs are rendered already)",
    "data.apply_chat_template": "the generate stage (its inputs are rendered already)",
    "data.tokenizer": _BY_PIPELINE,
    "data.tokenizer_chat_template": _BY_PIPELINE,
    "score.post_processor": "the pipeline kind",
    "output.path": _BY_PIPELINE,
}
_TRAIN_OWNED = {
    "model.model_name_or_path": "--pipeline.policy (iteration 0; later iterations use the last model)",
    "data.dataset": "the score stage's output",
    "data.dataset_probs": _BY_PIPELINE,
    "data.input_template": "the inputs are already rendered by the generate stage",
    "data.apply_chat_template": "the inputs are already rendered by the generate stage",
    "ckpt.output_dir": "--pipeline.output_dir (iter_<i>/model)",
    "ckpt.path": "--pipeline.output_dir (iter_<i>/model/checkpoints)",
    "ckpt.load_enable": "the pipeline (a killed training stage resumes from its last checkpoint)",
    "ckpt.overwrite": "the pipeline (a killed training stage without a checkpoint starts over)",
}
_SFT_OWNED = {**_TRAIN_OWNED, "data.input_key": _BY_PIPELINE, "data.output_key": _BY_PIPELINE}
_DPO_OWNED = {
    **_TRAIN_OWNED,
    "ref.model_name_or_path": "--pipeline.reference (default: --pipeline.policy)",
    "data.prompt_key": _BY_PIPELINE,
    "data.chosen_key": _BY_PIPELINE,
    "data.rejected_key": _BY_PIPELINE,
}


def _owned(kind: str) -> dict[str, dict[str, str]]:
    """section -> {dotted option: what sets it} for ``kind``; whole subsections are listed by prefix."""
    if kind == "csft":
        score = {k: v for k, v in _SCORE_OWNED.items() if k in {"score.post_processor", "output.path"}}
        return {"score": score, "sft": _SFT_OWNED}
    generate = dict(_GENERATE_OWNED)
    generate["reward."] = "the score stage (--score.reward.*)"
    generate["score."] = "the score stage (--score.score.*)"
    owned = {"generate": generate, "score": _SCORE_OWNED}
    owned[KINDS[kind].trainer] = _SFT_OWNED if kind == "rejection-sampling" else _DPO_OWNED
    return owned


def refuse_owned(cfg: Any, kind: str) -> None:
    """An option the pipeline sets, set by the user, would be overwritten: refuse it by name."""
    default = KINDS[kind].root()
    for section, options in _owned(kind).items():
        table = leaves(type(getattr(default, section)))
        for option, why in options.items():
            paths = [p for p in table if p.startswith(option)] if option.endswith(".") else [option]
            for path in paths:
                full = f"{section}.{path}"
                if get_path(cfg, full) != get_path(default, full):
                    raise UserError(
                        f"--{full} is set by the pipeline ({why}); remove it (given {get_path(cfg, full)!r})."
                    )


def validate_for(kind: str) -> Callable[[Any], None]:
    def validate(cfg: Any) -> None:
        p = cfg.pipeline
        if not p.policy:
            raise UserError(
                "--pipeline.policy is required: the starting policy (e.g. an SFT model directory)."
            )
        if kind == "csft" and p.iterations != 1:
            raise UserError(
                "repulse pipeline csft runs once (score, then SFT): --pipeline.iterations must be 1."
            )
        if kind != "iterative-dpo" and p.reference:
            raise UserError(
                "--pipeline.reference is the DPO reference: used by repulse pipeline iterative-dpo only."
            )
        refuse_owned(cfg, kind)
        if kind == "csft" and not cfg.score.data.dataset:
            raise UserError("--score.data.dataset is required: the data set to score and fine-tune on.")
        check_stages(cfg, kind)

    return validate


def check_stages(cfg: Any, kind: str) -> None:
    """Each stage's own parse-time checks, on iteration 0's filled-in config, before any work."""
    from repulse.trainers import dpo, sft
    from repulse.workflows import generate, score

    configs = stage_configs(cfg, kind, 0, cfg.pipeline.policy)
    if "generate" in configs:
        generate.validate(configs["generate"])
    score.validate(configs["score"])
    trainer = KINDS[kind].trainer
    (sft if trainer == "sft" else dpo).validate(configs[trainer])


def stage_configs(cfg: Any, kind: str, i: int, policy: str) -> dict[str, Any]:
    """Iteration ``i``'s stage configs: the user's options plus the ones that connect the stages."""
    out = Path(cfg.pipeline.output_dir) / f"iter_{i}"
    k = KINDS[kind]
    configs: dict[str, Any] = {}
    if "generate" in k.stages:
        gen = copy.deepcopy(cfg.generate)
        gen.model.model_name_or_path = policy
        gen.data.iter = i
        gen.output.path = str(out / "generate.jsonl")
        configs["generate"] = gen
    sc = copy.deepcopy(cfg.score)
    if "generate" in k.stages:
        sc.data.dataset = configs["generate"].output.path
    sc.score.post_processor = k.post_processor
    sc.output.path = str(out / f"{k.post_processor}.jsonl")
    configs["score"] = sc
    train = copy.deepcopy(getattr(cfg, k.trainer))
    train.model.model_name_or_path = policy
    train.data.dataset = sc.output.path
    train.data.input_template = None
    train.data.apply_chat_template = False
    train.ckpt.output_dir = str(out / "model")
    train.ckpt.load_enable, train.ckpt.overwrite = resume_or_start_over(train.ckpt)
    if k.trainer == "sft":
        train.data.input_key, train.data.output_key = "input", "output"
    else:
        train.ref.model_name_or_path = cfg.pipeline.reference or cfg.pipeline.policy
        train.data.prompt_key, train.data.chosen_key, train.data.rejected_key = "prompt", "chosen", "rejected"
    configs[k.trainer] = train
    return configs


def resume_or_start_over(ckpt: Any) -> tuple[bool, bool]:
    """``(load_enable, overwrite)`` of a training stage: resume from its newest finished checkpoint
    when it has one (a killed stage), else start over in its directory (which then holds at most
    the partial outputs of a killed stage that saved no checkpoint)."""
    from repulse.run.checkpoints import Checkpoints

    has_checkpoint = (
        Checkpoints(Path(ckpt.path or Path(ckpt.output_dir) / "checkpoints"), 1, 0).latest() is not None
    )
    return has_checkpoint, not has_checkpoint


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in KINDS:
        rows = "\n".join(f"  {name:<20} {k.help}" for name, k in KINDS.items())
        usage = (
            f"usage: repulse pipeline <kind> --config FILE.yaml [--section.key VALUE ...]\n\nkinds:\n{rows}\n"
        )
        if argv and argv[0] not in {"-h", "--help"}:
            raise UserError(f"unknown pipeline '{argv[0]}'.\n{usage}")
        print(usage)
        return 0 if argv else 2
    kind = argv[0]
    cfg = parse_config(f"pipeline {kind}", KINDS[kind].root, argv[1:], validate_for(kind))
    if cfg is None:
        return 0
    return run(cfg, kind)


# --------------------------------------------------------------------------- the run


class Pipeline:
    """Output directory bookkeeping: config check, stage markers, iteration log, metrics, state."""

    def __init__(self, cfg: Any, kind: str, rank: int):
        self.cfg, self.kind, self.rank = cfg, kind, rank
        self.root = Path(cfg.pipeline.output_dir)

    def check_config(self) -> None:
        """Same config as the run that made this directory (except a larger number of iterations)."""
        import yaml

        saved = self.root / "pipeline.yaml"
        if saved.is_file():
            old = yaml.safe_load(saved.read_text()) or {}
            if old.get("kind") != self.kind:
                raise UserError(
                    f"--pipeline.output_dir {self.root} holds a '{old.get('kind')}' pipeline, not '{self.kind}'; "
                    "use a new output directory."
                )
            before = flatten(old.get("config", {}))
            now = flatten(to_dict(self.cfg))
            changed = [
                k
                for k in sorted(set(before) | set(now))
                if k != "pipeline.iterations" and before.get(k) != now.get(k)
            ]
            if changed:
                shown = "; ".join(f"--{k} {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:5])
                more = f" (and {len(changed) - 5} more)" if len(changed) > 5 else ""
                raise UserError(
                    f"--pipeline.output_dir {self.root} was made with another configuration: {shown}{more}. Its "
                    "finished stages would not match the new options: use a new --pipeline.output_dir, or run "
                    "with the original options (only --pipeline.iterations may grow)."
                )
        if self.rank == 0:
            from repulse.run.dirs import prepare_output_dir

            prepare_output_dir(self.root, "--pipeline.output_dir")
            tmp = self.root / ".pipeline.yaml.tmp"
            tmp.write_text(yaml.safe_dump({"kind": self.kind, "config": to_dict(self.cfg)}, sort_keys=False))
            tmp.replace(saved)

    def marker(self, i: int, stage: str) -> Path:
        return self.root / f"iter_{i}" / f"{stage}.done"

    def done(self, i: int, stage: str) -> bool:
        return self.marker(i, stage).is_file()

    def finish_stage(self, i: int, stage: str, seconds: float, info: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        record = {"iteration": i, "stage": stage, "seconds": round(seconds, 3), **info}
        path = self.marker(i, stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)
        with (self.root / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        self.log(
            f"iteration {i} {stage} done in {seconds:.1f} s " + " ".join(f"{k}={v}" for k, v in info.items())
        )

    def log(self, line: str) -> None:
        if self.rank != 0:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with (self.root / "iter.log").open("a") as fh:
            fh.write(f"{stamp} {line}\n")
        print(f"[repulse] pipeline {self.kind}: {line}", flush=True)

    def write_state(self, finished: int, model: str) -> None:
        if self.rank != 0:
            return
        tmp = self.root / ".state.json.tmp"
        tmp.write_text(json.dumps({"kind": self.kind, "finished_iterations": finished, "model": model}))
        tmp.replace(self.root / "state.json")


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 6) if values else None


def stage_info(stage: str, configs: dict[str, Any]) -> dict[str, Any]:
    """What the log says about a finished stage: rows written, mean rewards of the selection."""
    from repulse.workflows.chunks import read_jsonl

    if stage == "generate":
        return {"rows": len(read_jsonl(Path(configs["generate"].output.path)))}
    if stage == "score":
        rows = read_jsonl(Path(configs["score"].output.path))
        info: dict[str, Any] = {"rows": len(rows)}
        if rows and "chosen_reward" in rows[0]:
            info["chosen_reward_mean"] = _mean([float(r["chosen_reward"]) for r in rows])
            info["rejected_reward_mean"] = _mean([float(r["rejected_reward"]) for r in rows])
        else:
            info["reward_mean"] = _mean([float(r["reward"]) for r in rows])
        return info
    return {"model": configs[stage].ckpt.output_dir}


def _count_prompts(cfg: Any, kind: str) -> None:
    """Every iteration must have prompts: iterations × rollout_batch_size within the data set."""
    if "generate" not in KINDS[kind].stages:
        return
    from repulse.data.sources import load_mixture
    from repulse.workflows.generate import prompt_slice

    d = cfg.generate.data
    n = len(
        load_mixture(
            d.dataset, d.dataset_probs, split=d.dataset_split, max_samples=d.max_samples, seed=d.seed
        )
    )
    for i in range(cfg.pipeline.iterations):
        try:
            prompt_slice(n, i, d.rollout_batch_size, d.dataset)
        except UserError as exc:
            raise UserError(
                f"--pipeline.iterations {cfg.pipeline.iterations}: iteration {i} has no prompts. {exc}".replace(
                    "--data.", "--generate.data."
                )
            ) from None


def run(cfg: Any, kind: str) -> int:
    import gc

    from repulse.engine.dist import barrier, init_distributed
    from repulse.trainers import dpo, sft
    from repulse.workflows import generate, score

    runners: dict[str, Callable[[Any], int]] = {
        "generate": generate.run, "score": score.run, "sft": sft.run, "dpo": dpo.run,
    }  # fmt: skip
    rank, _, _, _ = init_distributed()
    p = Pipeline(cfg, kind, rank)
    p.check_config()
    _count_prompts(cfg, kind)
    barrier()
    policy = cfg.pipeline.policy
    p.log(f"start: {cfg.pipeline.iterations} iteration(s) from {policy} in {p.root}")
    for i in range(cfg.pipeline.iterations):
        configs = stage_configs(cfg, kind, i, policy)
        for stage in KINDS[kind].stages:
            if p.done(i, stage):
                continue
            p.log(f"iteration {i} {stage} ...")
            t0 = time.perf_counter()
            runners[stage](configs[stage])
            gc.collect()
            barrier()
            p.finish_stage(
                i, stage, time.perf_counter() - t0, stage_info(stage, configs) if rank == 0 else {}
            )
            barrier()
        policy = configs[KINDS[kind].trainer].ckpt.output_dir
        p.write_state(i + 1, policy)
    p.log(f"finished: the final model is {policy}")
    barrier()
    return 0
