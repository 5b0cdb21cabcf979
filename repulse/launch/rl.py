"""``repulse rl``: parse, then run the controller loop with the roles in this process
(``--launch.backend local``, the default; one copy per ``torchrun`` rank) or on a Ray cluster
(``--launch.backend ray``: one controller, role groups placed from the seed's placement flags).
"""

from __future__ import annotations

import os

from repulse.config import parse_config
from repulse.config.sections import RLConfig
from repulse.errors import UserError
from repulse.trainers.rl import run, validate


def main(argv: list[str]) -> int:
    cfg = parse_config("rl", RLConfig, argv, validate)
    if cfg is None:
        return 0
    if cfg.launch.backend == "ray":
        return run_on_ray(cfg)
    return run(cfg)


def run_on_ray(cfg: RLConfig) -> int:
    """Join (or start) the cluster, place the role groups, run the loop, release everything."""
    from repulse.launch.cluster import connect
    from repulse.launch.roles import RayBackend

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(
            "--launch.backend ray runs one controller: start `repulse rl` as one process, not under "
            "torchrun or deepspeed; the actor groups are the data-parallel processes."
        )
    session = connect(cfg.launch)
    backend = RayBackend(cfg)
    try:
        return run(cfg, backend)
    finally:
        backend.close()
        session.close()
