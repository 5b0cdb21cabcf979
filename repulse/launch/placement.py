"""Which actors exist and where they go: role groups, placement pools, bundles ordered per node.

A *pool* is one Ray placement group of ``nodes × devices-per-node`` bundles; a bundle is one GPU
(and ``--launch.cpus_per_device`` CPUs) or, on a CPU cluster, just those CPUs (fractions allowed).
Each role group puts its rank r on its pool's bundle r. Roles that are colocated share a pool,
so their rank-r actors share bundle r and each takes an equal fraction of it:

- ``--launch.colocate_actor_ref``: the reference on the policy's pool;
- ``--launch.colocate_critic_reward``: the reward models on the critic's pool;
- ``--launch.colocate_all_models`` (hybrid engine): every role and the rollout engines on the
  policy's pool (engine i on bundle i).

Otherwise each role has a pool of its own (``--<role>.num_nodes`` × ``--<role>.num_gpus_per_node``;
RePULSe's proposal takes the actor's shape), and ``--vllm.num_engines`` rollout engines a pool of
``num_engines × --vllm.tensor_parallel_size`` bundles (one per engine rank): fully disaggregated. After Ray places a pool its bundles are ordered by
node (nodes in order of their first bundle, bundles in index order within a node), so that a
group's ranks fill one node before the next and ``LOCAL_RANK`` is the rank's place on its node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from repulse.config.sections import RLConfig
from repulse.errors import UserError


@dataclass(frozen=True)
class GroupPlan:
    """One role group: ``size`` actors on bundles 0..size-1 of ``pool``."""

    kind: str  # policy | proposal | critic | ref | reward | rollout
    size: int
    pool: str
    world: bool  # its actors form a torch.distributed world of their own
    samples: bool  # its actors draw samples (seeded per shard)


@dataclass
class PoolPlan:
    name: str
    nodes: int
    per_node: int
    groups: list[str] = field(default_factory=list)

    @property
    def bundles(self) -> int:
        return self.nodes * self.per_node


def shape(cfg: RLConfig, role: str) -> tuple[int, int]:
    section = {
        "policy": cfg.actor,
        "proposal": cfg.actor,
        "critic": cfg.critic,
        "ref": cfg.ref,
        "reward": cfg.reward,
    }[role]
    return section.num_nodes, section.num_gpus_per_node


def engine_count(cfg: RLConfig) -> int:
    return cfg.vllm.num_engines or 0


def plan(cfg: RLConfig, needs: set[str]) -> tuple[dict[str, PoolPlan], list[GroupPlan]]:
    """The pools and groups of a run whose method needs the roles in ``needs`` (beyond the policy)."""
    launch = cfg.launch
    all_in = launch.colocate_all_models
    engines = engine_count(cfg)
    pools: dict[str, PoolPlan] = {}
    groups: list[GroupPlan] = []

    def add(kind: str, pool: str, size: int, world: bool, samples: bool, pool_shape: tuple[int, int]) -> None:
        if pool not in pools:
            pools[pool] = PoolPlan(pool, *pool_shape)
        pools[pool].groups.append(kind)
        groups.append(GroupPlan(kind, size, pool, world, samples))

    nodes, per = shape(cfg, "policy")
    add("policy", "policy", nodes * per, True, engines == 0, (nodes, per))
    if "proposal" in needs:
        add("proposal", "policy" if all_in else "proposal", nodes * per, True, engines == 0, (nodes, per))
    if "ref" in needs:
        n, p = shape(cfg, "ref")
        pool = "policy" if all_in or launch.colocate_actor_ref else "ref"
        add("ref", pool, n * p, False, False, (n, p))
    if "critic" in needs:
        n, p = shape(cfg, "critic")
        add("critic", "policy" if all_in else "critic", n * p, True, False, (n, p))
    if cfg.reward.model_name_or_path:
        n, p = shape(cfg, "reward")
        if all_in:
            pool = "policy"
        elif launch.colocate_critic_reward and "critic" in needs:
            pool = "critic"
        else:
            pool = "reward"
        add("reward", pool, n * p, False, False, (n, p))
    if engines:  # a vLLM engine of tensor-parallel size t is t consecutive actors of the group
        size = engines * (cfg.vllm.tensor_parallel_size if cfg.rollout.backend == "vllm" else 1)
        add("rollout", "policy" if all_in else "rollout", size, True, True, (1, size))
    for g in groups:
        if g.size > pools[g.pool].bundles:
            raise UserError(
                f"the {g.kind} group ({g.size} actors) does not fit the {pools[g.pool].bundles} bundles of the "
                f"{g.pool}'s devices it is colocated on: give both the same --*.num_nodes x --*.num_gpus_per_node."
            )
    return pools, groups


def order_by_node(bundle_nodes: dict[int, str]) -> list[int]:
    """Bundle indices grouped by node: nodes in order of their first bundle, bundles by index."""
    first: dict[str, int] = {}
    for b in sorted(bundle_nodes):
        first.setdefault(bundle_nodes[b], b)
    return sorted(bundle_nodes, key=lambda b: (first[bundle_nodes[b]], b))


def local_ranks(ordered: list[int], bundle_nodes: dict[int, str]) -> list[int]:
    """Each ordered bundle's place among the earlier ordered bundles on its node."""
    seen: dict[str, int] = {}
    out = []
    for b in ordered:
        node = bundle_nodes[b]
        out.append(seen.get(node, 0))
        seen[node] = seen.get(node, 0) + 1
    return out


def bundle_resources(use_gpu: bool, cpus: float) -> dict[str, float]:
    res = {"CPU": cpus}
    if use_gpu:
        res["GPU"] = 1.0
    return res


def check_fits(pools: dict[str, PoolPlan], per_bundle: dict[str, float], available: dict[str, float]) -> None:
    """Refuse a plan the cluster cannot hold at all (Ray would wait for it forever)."""
    need: dict[str, float] = {}
    for p in pools.values():
        for k, v in per_bundle.items():
            need[k] = need.get(k, 0.0) + v * p.bundles
    short = {k: (v, available.get(k, 0.0)) for k, v in need.items() if v > available.get(k, 0.0) + 1e-9}
    if short:
        listed = ", ".join(f"{k}: {have:g} of {want:g} needed" for k, (want, have) in short.items())
        pools_text = "; ".join(
            f"{p.name} ({', '.join(p.groups)}): {p.nodes} x {p.per_node}" for p in pools.values()
        )
        raise UserError(
            f"the Ray cluster is too small for this placement ({listed}). Pools (nodes x devices): {pools_text}; "
            f"each device is a bundle of {per_bundle}. Lower --*.num_nodes / --*.num_gpus_per_node / "
            "--vllm.num_engines, colocate roles (--launch.colocate_*), or lower --launch.cpus_per_device."
        )
