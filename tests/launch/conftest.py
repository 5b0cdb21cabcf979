"""A Ray cluster of two CPU "nodes" per test module, and running ``repulse rl`` on it.

The cluster is real (``ray.cluster_utils.Cluster``: a head and a second raylet, each with its own
logical CPUs and a custom resource naming it); runs are ``python -m repulse rl`` subprocesses
that join it, as a user's driver would. Every wait has a timeout.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

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


@pytest.fixture(scope="module")
def two_nodes():
    """Two raylets on this machine: node_a (the head, with the job server) and node_b."""
    pytest.importorskip("ray")
    from ray._private.utils import get_dashboard_dependency_error
    from ray.cluster_utils import Cluster

    # the job server (``ray job submit``) needs ray[default]; vLLM's venv holds plain ray
    port = free_port() if get_dashboard_dependency_error() is None else None
    env_keep = {k: os.environ.get(k) for k in ("PYTHONPATH", "OMP_NUM_THREADS")}
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env_keep["PYTHONPATH"]) if p)
    os.environ["OMP_NUM_THREADS"] = "1"
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": NODE_CPUS,
            "resources": {"node_a": 1},
            "include_dashboard": port is not None,
            **({"dashboard_port": port} if port else {}),
        },
    )
    # node_b gets a session directory of its own, as a second machine would: raylets sharing one
    # would unpack a job's working directory into the same place while its driver imports from it
    node_b_dir = tempfile.mkdtemp(prefix="rb", dir="/tmp")  # short: Ray's socket paths have a length limit
    try:
        cluster.add_node(num_cpus=NODE_CPUS, resources={"node_b": 1}, temp_dir=node_b_dir)
        cluster.wait_for_nodes(timeout=120)
        yield TwoNodes(cluster, port)
    finally:
        cluster.shutdown()
        shutil.rmtree(node_b_dir, ignore_errors=True)
        for k, v in env_keep.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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
