"""Resuming a run: what differs between the saved ``config.yaml`` and the new settings, and what
a checkpoint cannot follow.

Everything is decided before the run writes anything: a refused resume leaves the directory
(its ``config.yaml`` included) as it was. Settings that can change are listed field by field;
the optimizer and schedule settings among them (lr, betas, warm-up, ...) take effect from the
resumed step on - the engines apply them over the checkpoint's optimizer state.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from repulse.config.schema import flatten
from repulse.errors import UserError

# changes a checkpoint cannot follow, with the reason
FIXED: dict[str, str] = {
    "model.model_name_or_path": "the checkpoint holds weights of the run's model",
    "actor.model_name_or_path": "the checkpoint holds weights of the run's policy",
    "critic.model_name_or_path": "the checkpoint holds weights of the run's critic",
    "model.lora.rank": "the checkpoint's LoRA adapters have the run's rank",
    "model.lora.target_modules": "the checkpoint has LoRA adapters on the run's modules only",
    "engine.backend": "each engine writes its own checkpoint format",
    "optim.name": "the optimizer state belongs to the run's optimizer",
    "actor.optim.name": "the optimizer state belongs to the run's optimizer",
    "critic.optim.name": "the optimizer state belongs to the run's optimizer",
    "repulse.method": "the checkpoint holds the models the run's method trains",
    "algo.advantage.estimator": "the checkpoint holds the models this estimator needs (a critic, or not)",
}

# differ on every resume by design, or say nothing about the run
IGNORED = {"ckpt.load_enable", "ckpt.overwrite"}

# sections whose settings the engines re-apply over the checkpoint's optimizer state
OPTIMIZER_PREFIXES = (
    "adam.",
    "muon.",
    "optim.",
    "actor.adam.",
    "actor.muon.",
    "actor.optim.",
    "critic.adam.",
    "critic.muon.",
    "critic.optim.",
    "repulse.proposal_lr",
    "train.max_steps",
    "train.max_epochs",
    "train.num_episodes",
)

_MISSING = object()


def _show(value: Any) -> str:
    return "(not set)" if value is _MISSING else repr(value)


def _same_path(a: Any, b: Any) -> bool:
    if a == b:
        return True
    if isinstance(a, str) and isinstance(b, str) and os.path.exists(a) and os.path.exists(b):
        return os.path.realpath(a) == os.path.realpath(b)
    return False


def config_changes(saved: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """``(dotted key, saved value, new value)`` for every setting that differs, in the new config's order."""
    old, cur = flatten(saved), flatten(new)
    keys = list(cur) + [k for k in old if k not in cur]
    return [
        (k, old.get(k, _MISSING), cur.get(k, _MISSING))
        for k in keys
        if k not in IGNORED and old.get(k, _MISSING) != cur.get(k, _MISSING)
    ]


def checkpoint_meta(step_dir: Path) -> dict[str, dict]:
    """``{engine name: engine.json}`` of a finished checkpoint directory."""
    out = {}
    for meta in sorted(step_dir.glob("*/engine.json")):
        try:
            out[meta.parent.name] = json.loads(meta.read_text())
        except (OSError, ValueError):
            continue
    return out


def resume_report(
    config_file: Path, new: dict, step_dir: Path, step: int, world_size: int, backend: str
) -> list[str]:
    """The lines telling what the resume changes; raises ``UserError`` (naming every field that cannot
    change, and why) where the checkpoint cannot follow the new settings."""
    refusals: list[str] = []
    for name, meta in checkpoint_meta(step_dir).items():
        if meta.get("backend") not in (None, backend):
            refusals.append(
                f"--engine.backend: the checkpoint's {name} engine was written by {meta['backend']}, this run "
                f"uses {backend}"
            )
        elif meta.get("backend") == "deepspeed" and meta.get("world_size") not in (None, world_size):
            refusals.append(
                f"world size: the checkpoint's {name} engine was written by {meta['world_size']} process(es), "
                f"this run has {world_size} (DeepSpeed's ZeRO partitions are per process)"
            )
    lines: list[str] = []
    if not config_file.is_file():
        lines.append(f"  (no {config_file.name} from the earlier run to compare the settings with)")
        changes = []
    else:
        try:
            saved = yaml.safe_load(config_file.read_text()) or {}
        except yaml.YAMLError:
            saved = {}
            lines.append(f"  ({config_file} is not valid YAML: the settings cannot be compared)")
        changes = config_changes(saved, new) if isinstance(saved, dict) else []
    for key, old, cur in changes:
        if key in FIXED and not _same_path(old, cur) and old is not _MISSING:
            refusals.append(f"--{key} {_show(old)} -> {_show(cur)}: {FIXED[key]}")
            continue
        note = ""
        if key.startswith(OPTIMIZER_PREFIXES):
            note = f" (applies from step {step + 1} on)"
        lines.append(f"  --{key}: {_show(old)} -> {_show(cur)}{note}")
    if refusals:
        raise UserError(
            f"--ckpt.load_enable: cannot resume from {step_dir}: "
            + "; ".join(refusals)
            + ". Nothing was changed; resume with the run's settings, or start a new run in another directory "
            "(or over this one with --ckpt.overwrite)."
        )
    return lines
