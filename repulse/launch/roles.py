"""The roles on Ray, as the RL methods see them: the same protocols (``repulse.rl.roles``), each
call a remote call to the role's actor group that shards the batch over its ranks.

The controller holds a whole step. A trained group of D actors (policy, critic, proposal) gets it
as D contiguous shards, one per rank - the rows rank r holds under ``torchrun`` - and its actors
reduce gradients and statistics inside their own world, so what comes back is what every
``torchrun`` rank computes. Frozen groups (reference, reward models) are replicas that each take
a contiguous part of the rows. ``Comm`` is the identity: nothing is left to reduce here.

Rollouts come either from the policy's own actors (each samples its shard with the hf engine that
shares its module; an update only moves the version) or from ``--vllm.num_engines`` engine actors
that hold copies of the weights (the policy's and, for RePULSe, the proposal's) and receive them
after every update over a torch.distributed group of their own (``repulse.launch.weights``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from repulse.config.sections import RLConfig
from repulse.launch.groups import ActorGroup, Placed, wait
from repulse.launch.placement import (
    GroupPlan,
    bundle_resources,
    check_fits,
    local_ranks,
    order_by_node,
    plan,
)
from repulse.launch.shards import merge_samples, offsets, split_even, split_sizes, trim_prompt_padding
from repulse.launch.worker import RoleWorker
from repulse.rl.rewards import RewardInput
from repulse.rl.roles import MicroLoss
from repulse.rl.rollout import Samples, SamplingParams
from repulse.trainers.rl.local_roles import Roles, build_rewards, load_lm

SHARD_SEED_STRIDE = 1_000_003  # as the torchrun loop reseeds rank r: seed + stride · r
PROPOSAL_SEED_OFFSET = 500_009  # a proposal that samples in its own actors draws another stream


class ControllerComm:
    """The controller holds every shard of a step: reductions over processes are the identity."""

    rank, world_size, device = 0, 1, torch.device("cpu")

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        return tensor


def _rows(samples: Samples, start: int, count: int) -> Samples:
    return samples.select(list(range(start, start + count)))


class Generators:
    """The actors that sample for one or more actor roles: the role's own group, or the engines."""

    def __init__(self, group: ActorGroup, pad_id: int, separate: bool, sleep: bool):
        self.group, self.pad_id, self.separate, self.sleep_mode = group, pad_id, separate, sleep
        self.asleep = False

    def wake(self, tags: list[str] | None = None) -> None:
        """Take back what ``rest`` freed: ``["weights"]`` before a sync, then ``["kv_cache"]`` (or all)."""
        if not self.asleep:
            return
        self.group.call("wake_up", (tags,))
        if tags is None or "kv_cache" in tags:
            self.asleep = False

    def rest(self) -> None:
        """Hybrid engine: free the engines' memory while the models train."""
        if self.sleep_mode and not self.asleep:
            self.group.call("sleep", (1,))
            self.asleep = True


class RayRollout:
    """``RolloutEngine`` over a group of actors: a call's prompts are split into contiguous shards,
    one per actor, and the shards' samples merged back in order."""

    def __init__(self, generators: Generators, which: str):
        self.generators, self.which = generators, which
        self.weight_version = 0

    def generate(self, prompt_ids: list[list[int]], n: int, sampling: SamplingParams) -> Samples:
        g = self.generators
        g.wake()
        sizes = split_sizes(len(prompt_ids), g.group.size)
        # an actor with no prompt of its own samples one it drops: a group in lock step needs all
        args = [
            (self.which, prompt_ids[o : o + k] if k else prompt_ids[:1], n, sampling)
            for o, k in zip(offsets(sizes), sizes)
        ]
        parts = g.group.call("generate", args)
        kept = [(p, k) for p, k in zip(parts, sizes) if k]
        samples = merge_samples([p for p, _ in kept], [k for _, k in kept], g.pad_id)
        g.rest()
        return samples

    def sleep(self, level: int = 1) -> None:
        self.generators.rest()

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.generators.wake(tags)

    def begin_update(self) -> None:
        raise NotImplementedError("weights reach Ray rollout engines through their role's sync_rollout")

    def load(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        raise NotImplementedError("weights reach Ray rollout engines through their role's sync_rollout")

    def end_update(self, version: int) -> None:
        raise NotImplementedError("weights reach Ray rollout engines through their role's sync_rollout")


class RayTrained:
    """A trained role's group: ``train_step`` gives rank r the r-th contiguous run of micro-batches."""

    def __init__(self, group: ActorGroup):
        self.group = group

    def _shard_rows(self, samples: Samples, what: str) -> list[tuple[Samples]]:
        sizes = split_even(samples.sequences.shape[0], self.group.size, what)
        return [(trim_prompt_padding(_rows(samples, o, k)),) for o, k in zip(offsets(sizes), sizes)]

    def train_step(
        self, loss: MicroLoss, micro_batches: list[Any]
    ) -> tuple[dict[str, float], dict[str, float]]:
        sizes = split_even(len(micro_batches), self.group.size, f"{self.group.role} micro-batches")
        chunks = [trim_prompt_padding(list(micro_batches[o : o + k])) for o, k in zip(offsets(sizes), sizes)]
        return self.group.call("train_step", [(loss, c) for c in chunks])[0]

    def first_nonfinite_parameter(self) -> str | None:
        """Collective over the group (sharded weights); every rank gives the same answer."""
        return self.group.call("first_nonfinite_parameter")[0]

    def save(self, directory: Path) -> None:
        self.group.call("save", (str(directory),))

    def load(self, directory: Path) -> None:
        self.group.call("load", (str(directory),))

    def export_hf(self, directory: Path, tokenizer: Any) -> None:
        self.group.call("export_hf", (str(directory), tokenizer))


class RayActor(RayTrained):
    """The policy or RePULSe's proposal: a trained causal LM and the actors that sample from it."""

    def __init__(self, group: ActorGroup, rollout: RayRollout, cfg: RLConfig):
        super().__init__(group)
        self.rollout, self.cfg = rollout, cfg
        self._mirror: torch.nn.Module | None = None

    @property
    def engines(self) -> ActorGroup | None:
        g = self.rollout.generators
        return g.group if g.separate else None

    def logprobs(self, samples: Samples, temperature: float = 1.0) -> torch.Tensor:
        parts = self._shard_rows(samples, f"{self.group.role} log-probs")
        return torch.cat(self.group.call("logprobs", [(p, temperature) for (p,) in parts]))

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        yield from self.group.call("named_weights")[0].items()

    def sync_rollout(self, version: int) -> None:
        which = self.rollout.which
        engines = self.engines
        if engines is None:
            self.group.call("sync_local", (version,))
        else:
            gen = self.rollout.generators
            gen.wake(["weights"])
            calls = [(self.group, r, f) for r, f in enumerate(self.group.submit("push", (which, version)))]
            calls += [(engines, r, f) for r, f in enumerate(engines.submit("receive", (which,)))]
            wait(calls, f"the {which}'s weight sync to the rollout engines")
            gen.wake(["kv_cache"])
        self.rollout.weight_version = version

    def save(self, directory: Path) -> None:
        super().save(directory)
        if self.engines is not None and self.rollout.which == "policy":  # the engines draw the samples
            self.engines.call("save_rng", (str(directory),))

    def load(self, directory: Path) -> None:
        super().load(directory)
        if self.engines is not None and self.rollout.which == "policy":
            self.engines.call("load_rng", (str(directory),))

    def unwrapped(self) -> torch.nn.Module:
        """A copy of the current weights in this process (the toy's exact evaluation reads it)."""
        if self._mirror is None:
            self._mirror = load_lm(self.cfg, self.cfg.actor.model_name_or_path, False, torch.device("cpu"))
        state = self.group.call("rollout_weights")[0]
        result = self._mirror.load_state_dict(state, strict=False)
        if result.unexpected_keys:  # missing ones are tied to others (the LM head)
            raise RuntimeError(f"the policy's weights do not fit its model: {result.unexpected_keys[:3]}")
        return self._mirror


class RayCritic(RayTrained):
    def values(self, samples: Samples) -> torch.Tensor:
        parts = self._shard_rows(samples, "critic values")
        return torch.cat(self.group.call("values", parts))


class RayReference:
    """Frozen replicas: each takes a contiguous part of the rows."""

    def __init__(self, group: ActorGroup):
        self.group = group

    def logprobs(self, samples: Samples, temperature: float = 1.0) -> torch.Tensor:
        sizes = split_sizes(samples.sequences.shape[0], self.group.size)
        args = [
            (trim_prompt_padding(_rows(samples, o, k)), temperature)
            for o, k in zip(offsets(sizes), sizes)
            if k
        ]
        return torch.cat(self.group.call("logprobs", args, ranks=[r for r, k in enumerate(sizes) if k]))


class RayRewards:
    """Reward models on replicas (each scores a contiguous part of the rows with every source)."""

    def __init__(self, group: ActorGroup):
        self.group = group
        self.counts = [0] * group.size  # each replica's reward-model inputs cut to fit, so far

    @property
    def truncated_count(self) -> int:
        """Reward-model inputs cut to fit their model so far, over every replica."""
        return sum(self.counts)

    def score(self, samples: Samples, items: list[dict]) -> tuple[torch.Tensor, RewardInput]:
        sizes = split_sizes(samples.sequences.shape[0], self.group.size)
        ranks = [r for r, k in enumerate(sizes) if k]
        args = [(_rows(samples, o, k), items) for o, k in zip(offsets(sizes), sizes) if k]
        parts = self.group.call("score", args, ranks=ranks)
        for r, (_, _, count) in zip(ranks, parts):
            self.counts[r] = count
        texts = [t for _, t, _ in parts]
        questions = [q for t in texts for q in (t.questions or t.prompts)]
        merged = RewardInput(
            [q for t in texts for q in t.queries],
            [p for t in texts for p in t.prompts],
            [r for t in texts for r in t.responses],
            [lab for t in texts for lab in t.labels],
            questions,
        )
        return torch.cat([raw for raw, _, _ in parts]), merged


class RayBackend:
    """Builds the roles as actor groups on the connected cluster (``repulse.trainers.rl.loop.run``)."""

    def __init__(self, cfg: RLConfig):
        self.cfg = cfg
        self.groups: dict[str, ActorGroup] = {}
        self.pools: dict[str, Any] = {}
        self.placed: list[Placed] = []

    def data_parallel(self, cfg: RLConfig, world: int) -> int:
        if world > 1:
            from repulse.errors import UserError

            raise UserError(
                "--launch.backend ray runs one controller: start `repulse rl` as one process (not under "
                "torchrun); the actor groups are its data-parallel processes."
            )
        nodes, per = cfg.actor.num_nodes, cfg.actor.num_gpus_per_node
        return nodes * per

    # ------------------------------------------------------------------ building

    def build(
        self,
        cfg: RLConfig,
        needs: set[str],
        device: torch.device,
        total_updates: int,
        accum: int,
        tokenizer: Any,
    ) -> Roles:
        import ray
        from ray.util.placement_group import placement_group, placement_group_table
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from repulse.launch.cluster import cluster_resources

        launch = cfg.launch
        pools, groups = plan(cfg, needs)
        available = cluster_resources()
        use_gpu = launch.device == "gpu" or (launch.device == "auto" and available.get("GPU", 0) > 0)
        per_bundle = bundle_resources(use_gpu, launch.cpus_per_device)
        check_fits(pools, per_bundle, available)
        ordered: dict[str, list[int]] = {}
        ranks_local: dict[str, list[int]] = {}
        for name, pool in pools.items():
            pg = placement_group(
                [dict(per_bundle) for _ in range(pool.bundles)],
                strategy="PACK" if pool.nodes == 1 else "SPREAD",
                name=f"repulse-{name}",
            )
            try:
                ray.get(pg.ready(), timeout=launch.timeout_s)
            except ray.exceptions.GetTimeoutError:
                from repulse.errors import UserError

                ray.util.remove_placement_group(pg)
                raise UserError(
                    f"Ray could not place the {name} pool ({pool.nodes} x {pool.per_node} bundles of {per_bundle}) "
                    f"within --launch.timeout_s {launch.timeout_s:g} s: the cluster's free resources are "
                    f"{ray.available_resources()}."
                ) from None
            self.pools[name] = pg
            nodes = {int(b): n for b, n in placement_group_table(pg)["bundles_to_node_id"].items()}
            ordered[name] = order_by_node(nodes)
            ranks_local[name] = local_ranks(ordered[name], nodes)
        sharing = {name: len(pool.groups) for name, pool in pools.items()}
        remote = ray.remote(RoleWorker)
        for g in groups:
            share = sharing[g.pool]
            opts: dict[str, Any] = {"num_cpus": launch.cpus_per_device / share}
            if use_gpu:
                opts["num_gpus"] = 1.0 / share
            actors = []
            for rank in range(g.size):
                bundle = ordered[g.pool][rank]
                strategy = PlacementGroupSchedulingStrategy(
                    self.pools[g.pool], placement_group_bundle_index=bundle
                )
                actors.append(
                    remote.options(scheduling_strategy=strategy, name=None, **opts).remote(
                        cfg, g.kind, rank, g.size, self._shard_seed(g, rank)
                    )
                )
            self.groups[g.kind] = ActorGroup(g.kind, actors, launch.timeout_s)
        self._locate(groups, ordered, ranks_local)
        print(self.describe(), flush=True)
        self.write_placement(Path(cfg.ckpt.output_dir))
        self._start(groups, ranks_local, tokenizer, needs, total_updates, accum)
        return self._roles(cfg, needs, tokenizer)

    def _shard_seed(self, g: GroupPlan, rank: int) -> int | None:
        if (
            not g.samples or g.size == 1
        ):  # one sampler: its stream continues from --train.seed, as on one process
            return None
        offset = PROPOSAL_SEED_OFFSET if g.kind == "proposal" else 0
        return self.cfg.train.seed + SHARD_SEED_STRIDE * rank + offset

    def _locate(
        self, groups: list[GroupPlan], ordered: dict[str, list[int]], ranks_local: dict[str, list[int]]
    ) -> None:
        calls = [
            (self.groups[g.kind], r, a.where.remote())
            for g in groups
            for r, a in enumerate(self.groups[g.kind].actors)
        ]
        found = wait(calls, "reporting where it runs")
        for (group, rank, _), info in zip(calls, found):
            pool = next(g.pool for g in groups if g.kind == group.role)
            placed = Placed(
                group.role, rank, info["node_id"], info["ip"], info["pid"], pool, ordered[pool][rank],
                ranks_local[pool][rank], info["gpu_ids"],
            )  # fmt: skip
            group.placed.append(placed)
            self.placed.append(placed)

    def _start(
        self,
        groups: list[GroupPlan],
        ranks_local: dict[str, list[int]],
        tokenizer: Any,
        needs: set[str],
        total_updates: int,
        accum: int,
    ) -> None:
        """Every group joins its world and builds its role, all at once (a world's ranks meet)."""
        masters: dict[str, str | None] = {}
        world_groups = [g for g in groups if g.world and g.size > 1]
        addresses = wait(
            [(self.groups[g.kind], 0, self.groups[g.kind].actors[0].address.remote()) for g in world_groups],
            "address",
        )
        masters.update({g.kind: a for g, a in zip(world_groups, addresses)})
        served = {"policy"} | ({"proposal"} & needs)
        calls = []
        for g in groups:
            group = self.groups[g.kind]
            for rank, actor in enumerate(group.actors):
                local = ranks_local[g.pool][rank]
                fut = actor.build.remote(masters.get(g.kind), local, tokenizer, served, total_updates, accum)
                calls.append((group, rank, fut))
        wait(calls, "building its role")
        engines = self.groups.get("rollout")
        if engines is not None:  # a weight group per served actor role: its rank 0 and every engine
            backend = self.cfg.vllm.sync_backend
            for which in sorted(served):
                trained = self.groups[which]
                address = wait([(trained, 0, trained.actors[0].address.remote())], "address")[0]
                size = engines.size + 1
                calls = [(trained, 0, trained.actors[0].open_sender.remote(which, address, size, backend))]
                calls += [
                    (engines, r, a.open_receiver.remote(which, address, r + 1, size, backend))
                    for r, a in enumerate(engines.actors)
                ]
                wait(calls, f"joining the {which}'s weight-sync group")

    def _roles(self, cfg: RLConfig, needs: set[str], tokenizer: Any) -> Roles:
        pad = tokenizer.pad_token_id
        sleep = cfg.vllm.enable_sleep or cfg.launch.colocate_all_models
        engines = self.groups.get("rollout")

        def actor(kind: str) -> RayActor:
            gens = (
                Generators(engines, pad, True, sleep)
                if engines is not None
                else Generators(self.groups[kind], pad, False, False)
            )
            return RayActor(self.groups[kind], RayRollout(gens, kind), cfg)

        policy = actor("policy")
        shared = policy.rollout.generators
        if "reward" in self.groups:
            rewards: Any = RayRewards(self.groups["reward"])
        else:  # reward functions and servers: scored here
            rewards = build_rewards(cfg, torch.device("cpu"), tokenizer)
        roles = Roles(tokenizer, ControllerComm(), policy, rewards)
        if "ref" in self.groups:
            roles.ref = RayReference(self.groups["ref"])
        if "critic" in self.groups:
            roles.critic = RayCritic(self.groups["critic"])
        if "proposal" in self.groups:
            q = actor("proposal")
            if engines is not None:  # the engines serve both: one sleep state
                q.rollout.generators = shared
            roles.proposal = q
        return roles

    # ------------------------------------------------------------------ reporting and closing

    def placement(self) -> list[dict[str, Any]]:
        return [vars(p) for p in self.placed]

    def write_placement(self, directory: Path) -> Path:
        path = Path(directory) / "placement.json"
        path.write_text(json.dumps(self.placement(), indent=1))
        return path

    def describe(self) -> str:
        rows = [
            f"  {p.role:<9} rank {p.rank}  node {p.ip} ({p.node_id[:8]})  pool {p.pool} bundle {p.bundle}  local_rank {p.local_rank}"
            for p in self.placed
        ]
        return "[repulse] placement:\n" + "\n".join(rows)

    def close(self) -> None:
        import ray

        if not ray.is_initialized():
            return
        for group in self.groups.values():
            for actor in group.actors:
                ray.kill(actor, no_restart=True)
        for pg in self.pools.values():
            ray.util.remove_placement_group(pg)
        self.groups, self.pools = {}, {}
