"""Typed, layered config: dataclass sections, YAML recipes, dotted flags, legacy flags.

Imports no torch, so ``--dry-run`` and ``--help`` are instant.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from repulse.config.engine_fields import check_engine_fields
from repulse.config.schema import build, check_model_paths, check_values, help_text, split_flags, to_yaml
from repulse.config.usage import check_fields
from repulse.errors import UserError, warn_once

# Commands that train a model through an engine (their --engine.* fields are checked at parse time).
TRAINING_COMMANDS: tuple[str, ...] = ("sft", "rm", "prm", "dpo", "kto", "kd", "rl")


def parse_config(
    command: str,
    root_cls: type,
    argv: list[str],
    validate: Callable[[Any], None] | None = None,
) -> Any | None:
    """Parse ``argv`` for ``repulse <command>``; returns the config, or None when --help/--dry-run printed.

    Order: legacy translation (seed-document flags -> ours), defaults, ``--config``
    files in order, flags; then every value against its field's allowed values
    (``check_values``), then ``validate`` (impossible combinations fail here, with the
    flag named, never later), then ``check_fields`` (a field this command, or its method,
    does not read, set away from its default, is refused: ``repulse.config.usage``), then -
    unless ``--dry-run`` - the model paths (``check_model_paths``: a local-looking path is
    never sent to the Hub).
    """
    from repulse.config.legacy import seed_engine_backend, translate_argv

    if "-h" in argv or "--help" in argv:
        print(help_text(root_cls, command))
        return None
    seed_backend, backend_notes = seed_engine_backend(list(argv), command)
    argv, notes = translate_argv(list(argv), command)
    yaml_files: list[str] = []
    dry_run = False
    rest: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--dry-run" or tok == "--dry_run":
            dry_run = True
        elif tok == "--config" or tok.startswith("--config="):
            if "=" in tok:
                yaml_files.append(tok.split("=", 1)[1])
            elif i + 1 < len(argv):
                yaml_files.append(argv[i + 1])
                i += 1
            else:
                raise UserError("--config needs a YAML file path.")
        else:
            rest.append(tok)
        i += 1
    if seed_backend is not None and _yaml_sets(yaml_files, "engine.backend"):
        seed_backend, backend_notes = None, []  # a recipe that names its engine wins over the seed's
    if seed_backend is not None:
        rest = ["--engine.backend", seed_backend, *rest]  # first: an explicit flag later still wins
    for note in backend_notes + notes:
        warn_once(note, note)
    cfg = build(root_cls, yaml_files, split_flags(rest))
    check_values(cfg)
    warn_no_effect(cfg)
    if command in TRAINING_COMMANDS:
        check_engine_fields(cfg.engine)
    warn_ray_only(cfg)
    if validate is not None:
        validate(cfg)
    check_fields(cfg, command)
    if dry_run:
        sys.stdout.write(to_yaml(cfg))
        return None
    if command in TRAINING_COMMANDS and cfg.engine.backend == "deepspeed":
        require_deepspeed(from_seed=seed_backend is not None)
    check_model_paths(cfg)  # not for --dry-run: a recipe may name a model that is yet to be trained
    return cfg


def _yaml_sets(yaml_files: list[str], key: str) -> bool:
    from repulse.config.schema import flatten, load_yaml

    return any(key in flatten(load_yaml(path)) for path in yaml_files)


def require_deepspeed(from_seed: bool = False) -> None:
    """Fail at parse time, in one paragraph, when DeepSpeed is asked for and not installed."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        return
    why = (
        "the seed flags (--zero_stage, --adam_offload, --overlap_comm, --zpg, --grad_accum_dtype) select "
        "--engine.backend deepspeed, as OpenRLHF trained with DeepSpeed, "
        if from_seed
        else "--engine.backend deepspeed was asked for, "
    )
    raise UserError(
        f"{why}but DeepSpeed is not installed. Install it with pip install 'repulse[deepspeed]', or add "
        "--engine.backend fsdp: torch's FSDP2 gives the same sharding without DeepSpeed (--engine.zero_stage 3 "
        "shards parameters, gradients and optimizer state; --engine.adam_offload offloads to CPU)."
    )


def write_resolved(cfg: Any, output_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config next to the run's outputs (atomically)."""
    out = Path(output_dir) / name
    tmp = out.with_suffix(".yaml.tmp")
    tmp.write_text(to_yaml(cfg))
    tmp.replace(out)
    return out


def warn_no_effect(cfg: Any, prefix: str = "") -> None:
    """One warning per flag that is accepted for compatibility but does nothing, when it is set."""
    import dataclasses

    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            warn_no_effect(value, f"{prefix}{f.name}.")
        elif f.metadata.get("no_effect") and value not in (None, 0, False) and value != f.default:
            flag = f"--{prefix}{f.name}"
            warn_once(
                f"no_effect:{flag}", f"{flag} {value!r} has no effect in this version: {f.metadata['help']}."
            )


def warn_ray_only(cfg: Any, node: Any = None, prefix: str = "") -> None:
    """One warning per placement knob (``ray_only`` fields) set while the roles run in this process."""
    import dataclasses

    launch = getattr(cfg, "launch", None)
    if launch is None or launch.backend == "ray":
        return
    node = cfg if node is None else node
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            warn_ray_only(cfg, value, f"{prefix}{f.name}.")
        elif f.metadata.get("ray_only") and value != f.default:
            flag = f"--{prefix}{f.name}"
            warn_once(
                f"ray_only:{flag}",
                f"{flag} {value!r} has no effect without --launch.backend ray: {f.metadata['help']}; "
                "here every process (one per torchrun rank) holds every role.",
            )
