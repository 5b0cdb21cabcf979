"""Typed, layered config: dataclass sections, YAML recipes, dotted flags, legacy flags.

Imports no torch, so ``--dry-run`` and ``--help`` are instant.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from repulse.config.engine_fields import check_engine_fields
from repulse.config.schema import build, help_text, split_flags, to_yaml
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
    files in order, flags; then ``validate`` (impossible combinations fail here, with
    the flag named, never later).
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
    refuse_unused_model_fields(cfg, command)
    refuse_unused_fields(cfg, command)
    warn_no_effect(cfg)
    warn_pending_in(cfg, command)
    if command in TRAINING_COMMANDS:
        check_engine_fields(cfg.engine)
    if validate is not None:
        validate(cfg)
    if dry_run:
        sys.stdout.write(to_yaml(cfg))
        return None
    if command in TRAINING_COMMANDS and cfg.engine.backend == "deepspeed":
        require_deepspeed(from_seed=seed_backend is not None)
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


def refuse_unused_model_fields(cfg: Any, command: str) -> None:
    """A method's ``--model.*`` flag given to another command is an error, not a silent no-op."""
    from repulse.config.sections import MODEL_FIELDS_USED_BY, ModelSection

    model = getattr(cfg, "model", None)
    if not isinstance(model, ModelSection):
        return
    default = ModelSection()
    for name, commands in MODEL_FIELDS_USED_BY.items():
        if command not in commands and getattr(model, name) != getattr(default, name):
            users = " and ".join(f"repulse {c}" for c in commands)
            raise UserError(
                f"--model.{name} is read by {users} only; repulse {command} would ignore it "
                f"(given {getattr(model, name)!r}). Remove it, or run {users}."
            )


def refuse_unused_fields(cfg: Any, command: str) -> None:
    """A shared-section flag only some commands read (``FIELDS_USED_BY``), given to another, is an
    error, not a silent no-op."""
    from repulse.config.schema import get_path
    from repulse.config.sections import FIELDS_USED_BY

    for path, commands in FIELDS_USED_BY.items():
        section, _, name = path.partition(".")
        if command in commands or not hasattr(cfg, section):
            continue
        value, default = get_path(cfg, path), getattr(type(getattr(cfg, section))(), name)
        if value != default:
            users = ", ".join(f"repulse {c}" for c in commands)
            raise UserError(
                f"--{path} is read by {users} only; repulse {command} would ignore it (given {value!r}). Remove it."
            )


def warn_pending_in(cfg: Any, command: str) -> None:
    """One warning per field ``command`` does not honour yet (``PENDING_IN``), when it is set."""
    from repulse.config.pending import PENDING_IN
    from repulse.config.schema import get_path, leaves

    table = leaves(type(cfg))
    for path, reason in PENDING_IN.get(command, {}).items():
        if path in table and get_path(cfg, path) != table[path].default:
            flag = f"--{path}"
            warn_once(
                f"pending:{command}:{flag}",
                f"{flag} {get_path(cfg, path)!r} has no effect in this version yet: {reason}.",
            )


def warn_no_effect(cfg: Any, prefix: str = "") -> None:
    """One warning per flag that is accepted but does nothing, when it is set: compatibility-only
    fields (``no_effect`` metadata) and fields whose feature is still being built
    (``repulse.config.pending.PENDING``)."""
    import dataclasses

    from repulse.config.pending import PENDING

    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            warn_no_effect(value, f"{path}.")
        elif f.metadata.get("no_effect") and value not in (None, 0, False) and value != f.default:
            warn_once(
                f"no_effect:--{path}",
                f"--{path} {value!r} has no effect in this version: {f.metadata['help']}.",
            )
        elif path in PENDING and value != f.default:
            warn_once(
                f"pending:--{path}", f"--{path} {value!r} has no effect in this version yet: {PENDING[path]}."
            )
