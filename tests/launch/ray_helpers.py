"""Helpers of the Ray tests: the two-node cluster's handle, ``repulse rl`` joined to it, and the
placement a run records. (A module of its own, not conftest: test modules in several directories
import helpers, and every directory's conftest is a module named ``conftest``.)

The cluster is real (``ray.cluster_utils.Cluster``: a head and a second raylet, each with its own
logical CPUs and a custom resource naming it); runs are ``python -m repulse rl`` subprocesses
that join it, as a user's driver would. Every wait has a timeout.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "trainers"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "config"))

NODE_CPUS = 4  # logical CPUs per node; actors take fractions of 0.5-CPU bundles


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TwoNodes:
    def __init__(self, cluster, dashboard_port: int | None):
        self.cluster, self.address = cluster, cluster.address
        self.dashboard = f"http://127.0.0.1:{dashboard_port}" if dashboard_port else None
        self.node_ids = {n.node_id: name for n, name in zip(cluster.list_all_nodes(), ("node_a", "node_b"))}


def env() -> dict[str, str]:
    out = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "RAY_ADDRESS"):
        out.pop(key, None)
    return out


def ray_rl(args: list[str], cluster: TwoNodes, cwd: Path, timeout: int = 400) -> subprocess.CompletedProcess:
    """``repulse rl ARGS --launch.backend ray`` joined to ``cluster``; output captured."""
    cmd = [sys.executable, "-m", "repulse", "rl", *args, "--launch.backend", "ray",
           "--launch.ray_address", cluster.address]  # fmt: skip
    return subprocess.run(cmd, env=env(), cwd=cwd, capture_output=True, text=True, timeout=timeout)


def placement(out: Path) -> list[dict]:
    return json.loads((Path(out) / "placement.json").read_text())


def by_role(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (r["role"], r["rank"])):
        out.setdefault(r["role"], []).append(r)
    return out
