"""Joining a Ray cluster: the one given, the one ``ray job submit`` runs us in, or a local one.

Order: ``--launch.ray_address``, then ``$RAY_ADDRESS`` (set by ``ray job submit`` for the job's
driver, or by the user), else a local cluster of ``--launch.local_num_cpus`` CPUs (default:
this machine's) is started for the run and stopped with it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from repulse.config.sections import LaunchSection
from repulse.errors import UserError, require_extra


@dataclass
class Session:
    address: str  # what we connected to ("local" when we started the cluster)
    started_here: bool

    def close(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def connect(launch: LaunchSection) -> Session:
    """``ray.init`` once; returns how we got there."""
    ray = require_extra("ray", "ray")
    if ray.is_initialized():
        return Session("already connected", False)
    address = launch.ray_address or os.environ.get("RAY_ADDRESS")
    where = "--launch.ray_address" if launch.ray_address else "$RAY_ADDRESS"
    if address:
        reachable(address, where)
    try:
        if address:
            ray.init(address=address, log_to_driver=True)
            return Session(address, False)
        ray.init(num_cpus=launch.local_num_cpus, include_dashboard=False, log_to_driver=True)
    except ConnectionError as exc:
        raise UserError(
            f"could not join the Ray cluster at {address} ({where}): {exc}. Start one with "
            "`ray start --head` (and `ray start --address <head>:6379` on the other nodes), or leave "
            "both unset to run on a local cluster. Ray 2.60 authenticates with a token: give this "
            "machine the head's ~/.ray/auth_token (or set RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH)."
        ) from None
    return Session("local", True)


def reachable(address: str, where: str, timeout_s: float = 10.0) -> None:
    """Fail fast on a head that does not answer: Ray itself retries for minutes.

    Only ``host:port`` addresses are checked (``auto`` and ``ray://`` clients are left to Ray)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise UserError(
            f"no Ray cluster answers at {address} ({where}): {exc}. Start one with `ray start --head` "
            "(its address is printed, port 6379 by default), or leave both unset to run on a local cluster."
        ) from None


def cluster_resources() -> dict[str, float]:
    import ray

    return dict(ray.cluster_resources())
