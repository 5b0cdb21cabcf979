"""Run start-up: process group, seed, an owned output directory and the resolved config.

Rank 0 does the file work (lock, checks, config.yaml) and tells every other rank whether it
may go on, so a refused start ends every process with the same paragraph - none is left
waiting in a collective.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from repulse.config import write_resolved
from repulse.config.schema import to_dict
from repulse.engine.dist import barrier, broadcast_object, init_distributed
from repulse.errors import UserError
from repulse.run.checkpoints import Checkpoints
from repulse.run.dirs import (
    RUN_CONFIG,
    RUN_RESULTS,
    earlier_outputs,
    lock_output_dir,
    prepare_output_dir,
    remove_earlier_outputs,
)
from repulse.run.resume import resume_report
from repulse.run.rng import seed_everything

_START_OVER = (
    "resume it with --ckpt.load_enable, start over in it with --ckpt.overwrite (removes its checkpoints, "
    "weights and metrics), or choose another --ckpt.output_dir"
)


@dataclass
class Run:
    rank: int
    world_size: int
    device: torch.device
    output_dir: Path


def start_run(cfg: Any) -> Run:
    """Process group, seed, an owned output dir and the resolved config, before any heavy work."""
    rank, world, _local, device = init_distributed()
    seed_everything(cfg.train.seed, cfg.train.full_determinism_enable)
    out = Path(cfg.ckpt.output_dir)
    on_rank0(lambda: claim_run_dir(cfg, out, world))
    return Run(rank, world, device, out)


def on_rank0(work: Callable[[], Any]) -> None:
    """Run ``work`` on rank 0; every rank raises the same ``UserError`` if it did (collective)."""
    import torch.distributed as dist

    error: str | None = None
    failure: BaseException | None = None
    if not dist.is_initialized() or dist.get_rank() == 0:
        try:
            work()
        except UserError as exc:
            error, failure = str(exc), exc
        except Exception as exc:  # noqa: BLE001 - told to the other ranks, then re-raised here
            error, failure = f"rank 0 failed while setting up the run ({type(exc).__name__}: {exc}).", exc
    error = broadcast_object(error)
    if failure is not None:
        raise failure
    if error is not None:
        raise UserError(error)
    barrier()


def claim_run_dir(cfg: Any, out: Path, world_size: int) -> None:
    """Own ``out`` for a training run (rank 0): writable, locked, and either new, resumed, or
    explicitly started over; then write ``config.yaml``. Stale ``step_N.tmp`` checkpoints go.

    Every check comes before the first write, so a refused start changes nothing.
    """
    ck = cfg.ckpt
    load_enable, overwrite = ck.load_enable, ck.overwrite  # both decide how the run starts
    if load_enable and overwrite:
        raise UserError(
            "--ckpt.load_enable resumes the run in --ckpt.output_dir and --ckpt.overwrite starts over in it: "
            "give one of them."
        )
    prepare_output_dir(out)
    lock_output_dir(out)
    ckpt_dir = Path(ck.path or out / "checkpoints")
    earlier = earlier_outputs(out, RUN_CONFIG, RUN_RESULTS, ckpt_dir)
    notes: list[str] = []
    if earlier and overwrite:
        removed = remove_earlier_outputs(out, RUN_RESULTS, ckpt_dir)
        notes.append(
            f"[repulse] --ckpt.overwrite: starting over in {out}"
            + (f"; removed the earlier run's {', '.join(removed)}" if removed else "")
        )
    elif earlier and load_enable:
        latest = Checkpoints(ckpt_dir, 1, 0).latest()
        if latest is None:
            raise UserError(
                f"--ckpt.load_enable: {out} holds another run's outputs ({', '.join(earlier)}) but no finished "
                f"checkpoint in {ckpt_dir} to resume from (checkpoints are written with --ckpt.save_steps); "
                "start over in it with --ckpt.overwrite, or choose another --ckpt.output_dir."
            )
        step = int(latest.name.split("_", 1)[1])
        lines = resume_report(out / "config.yaml", to_dict(cfg), latest, step, world_size, cfg.engine.backend)
        head = f"[repulse] resuming the run in {out} from {latest}"
        if lines and not lines[0].startswith("  ("):
            head += f"; {len(lines)} setting(s) differ from its config.yaml:"
        elif not lines:
            head += " with the same settings"
        notes.append("\n".join([head, *lines]))
    elif earlier:
        raise UserError(
            f"--ckpt.output_dir {out} holds another run's outputs ({', '.join(earlier)}): {_START_OVER}."
        )
    Checkpoints(ckpt_dir, 1, 0).remove_stale()
    write_resolved(cfg, out)
    for note in notes:
        print(note, flush=True)


def claim_output_dir(
    out: Path, config: str, results: Sequence[str], overwrite: bool, flag: str = "--ckpt.output_dir"
) -> Path:
    """Own ``out`` for a command without checkpoints (evaluations): writable, locked, and not holding
    the ``results`` of an earlier run of it unless ``--ckpt.overwrite``."""
    prepare_output_dir(out, flag)
    lock_output_dir(out, flag)
    earlier = earlier_outputs(out, config, results, None)
    if earlier and not overwrite:
        raise UserError(
            f"{flag} {out} already holds {', '.join(earlier)} from an earlier run; replace them with "
            f"--ckpt.overwrite, or choose another {flag}."
        )
    return out
