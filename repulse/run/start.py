"""Run start-up: process group, seed, a writable output directory and the resolved config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from repulse.config import write_resolved
from repulse.engine.dist import barrier, init_distributed
from repulse.run.dirs import prepare_output_dir
from repulse.run.rng import seed_everything


@dataclass
class Run:
    rank: int
    world_size: int
    device: torch.device
    output_dir: Path


def start_run(cfg: Any) -> Run:
    """Process group, seed, a writable output dir and the resolved config, before any heavy work."""
    rank, world, _local, device = init_distributed()
    seed_everything(cfg.train.seed, cfg.train.full_determinism_enable)
    out = Path(cfg.ckpt.output_dir)
    if rank == 0:
        prepare_output_dir(out)
        write_resolved(cfg, out)
    barrier()
    return Run(rank, world, device, out)
