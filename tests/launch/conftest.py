"""A Ray cluster of two CPU "nodes" per test module (``two_nodes``); the helpers that run
``repulse rl`` on it are in ``ray_helpers``.

The cluster is real (``ray.cluster_utils.Cluster``: a head and a second raylet, each with its own
logical CPUs and a custom resource naming it). Every wait has a timeout.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from ray_helpers import NODE_CPUS, ROOT, TwoNodes, free_port


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
