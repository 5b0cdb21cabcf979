"""A role's actors and the one way the controller talks to them: calls with a deadline.

``ActorGroup.call`` sends one call to each of the group's actors and waits for all answers
together (``ray.wait``), never for one at a time: when an actor dies its answer is an error at
once, and the controller raises ``RoleFailure`` naming the role, the rank, the node and the
process - without waiting on the other ranks, which may be blocked forever in a collective with
the dead one. No answer within ``--launch.timeout_s`` is the same failure, naming who did not
answer. Checkpoints finished before the failure are intact (they are renamed into place only
when complete), so ``--ckpt.load_enable`` resumes from the last one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from repulse.errors import UserError

ROLE_NAMES = {
    "policy": "policy actor",
    "proposal": "proposal actor",
    "critic": "critic actor",
    "ref": "reference actor",
    "reward": "reward-model actor",
    "rollout": "rollout engine",
}


class RoleFailure(UserError):
    """A role actor died or stopped answering: the run stops with one paragraph naming it."""


@dataclass
class Placed:
    """Where one actor of a group runs."""

    role: str
    rank: int
    node_id: str
    ip: str
    pid: int
    pool: str
    bundle: int
    local_rank: int
    gpu_ids: list[str]

    def describe(self) -> str:
        return f"{ROLE_NAMES.get(self.role, self.role)} rank {self.rank} (node {self.ip}, id {self.node_id[:12]}, pid {self.pid})"


class ActorGroup:
    """The actors of one role, rank order, and where they run."""

    def __init__(self, role: str, actors: list[Any], timeout_s: float):
        self.role, self.actors, self.timeout_s = role, actors, timeout_s
        self.placed: list[Placed] = []

    @property
    def size(self) -> int:
        return len(self.actors)

    def submit(
        self, method: str, args: list[tuple] | tuple = (), ranks: list[int] | None = None
    ) -> list[Any]:
        """Start ``method`` on the actors (all, or ``ranks``): the same ``args`` for each, or one
        tuple per actor. Returns the futures, for ``wait``."""
        ranks = list(range(self.size)) if ranks is None else ranks
        per = args if isinstance(args, list) else [args] * len(ranks)
        return [getattr(self.actors[r], method).remote(*a) for r, a in zip(ranks, per)]

    def call(self, method: str, args: list[tuple] | tuple = (), ranks: list[int] | None = None) -> list[Any]:
        """``submit`` then ``wait``: every answer, in rank order."""
        ranks = list(range(self.size)) if ranks is None else ranks
        return wait([(self, r, f) for r, f in zip(ranks, self.submit(method, args, ranks))], method)

    def describe(self, rank: int) -> str:
        if rank < len(self.placed):
            return self.placed[rank].describe()
        return f"{ROLE_NAMES.get(self.role, self.role)} rank {rank}"


def wait(calls: list[tuple[ActorGroup, int, Any]], what: str, timeout_s: float | None = None) -> list[Any]:
    """The answers of ``(group, rank, future)`` calls, in order; the first failure raises
    ``RoleFailure`` at once (see the module doc)."""
    import ray
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

    if not calls:
        return []
    limit = timeout_s if timeout_s is not None else max(g.timeout_s for g, _, _ in calls)
    index = {f: i for i, (_, _, f) in enumerate(calls)}
    results: list[Any] = [None] * len(calls)
    pending = [f for _, _, f in calls]
    deadline = time.monotonic() + limit
    while pending:
        left = deadline - time.monotonic()
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, left))
        if not ready:
            late = [calls[index[f]] for f in pending]
            who = "; ".join(g.describe(r) for g, r, _ in late)
            raise RoleFailure(
                f"no answer to '{what}' within --launch.timeout_s {limit:g} s from: {who}. The actor is stuck "
                "(or waits on a peer that is); finished checkpoints are intact - resume with "
                "--ckpt.load_enable."
            )
        for f in ready:
            group, rank, _ = calls[index[f]]
            try:
                results[index[f]] = ray.get(f)
            except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
                raise RoleFailure(
                    f"the {group.describe(rank)} died during '{what}' ({_first_line(exc)}). The run stopped; "
                    "finished checkpoints are intact - resume with --ckpt.load_enable."
                ) from None
            except RayTaskError as exc:
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                if isinstance(cause, UserError):  # bad input found in the actor: the same paragraph
                    raise cause from None
                raise RoleFailure(
                    f"the {group.describe(rank)} failed during '{what}': {type(cause).__name__}: "
                    f"{_first_line(cause)}. The run stopped; finished checkpoints are intact - resume with "
                    "--ckpt.load_enable (the actor's traceback is in the log above)."
                ) from None
    return results


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:300]
    return type(exc).__name__
