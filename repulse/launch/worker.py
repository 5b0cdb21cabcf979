"""What runs inside one Ray actor: one rank of a role group, holding the same in-process roles a
``torchrun`` rank holds (``repulse.trainers.rl.local_roles``).

A trained group (policy, critic, RePULSe's proposal) forms a torch.distributed world of its own:
the actor gets ``MASTER_ADDR``/``MASTER_PORT`` (its rank 0's node and a free port there), ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` (its place among the group's bundles on its node) before any
engine starts, so the local / FSDP2 / DeepSpeed engines run inside unchanged. The rollout-engine
group forms one too: its hf samplers then decode in lock step as ``torchrun`` ranks do, which
keeps each shard's random stream the one rank r draws. Frozen roles (reference, reward models)
are independent replicas (a world of one each).

Every actor seeds itself as a ``torchrun`` rank does (``--train.seed``, then, for the actors that
sample, ``seed + 1_000_003 · shard`` once built), so a Ray run draws the samples the
``torchrun`` run with the same world size draws.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import torch

from repulse.config.sections import RLConfig
from repulse.rl.rollout import HFRolloutEngine, RolloutEngine, Samples, SamplingParams
from repulse.rl.weight_sync import GroupWeightReceiver, GroupWeightSender, SyncOptions
from repulse.run.finite import FiniteGuard
from repulse.run.rng import rng_state, seed_everything, set_rng_state
from repulse.trainers.rl import local_roles


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


class RoleWorker:
    """One rank of one role group (``kind``: policy, proposal, critic, ref, reward, rollout)."""

    def __init__(self, cfg: RLConfig, kind: str, rank: int, world_size: int, shard_seed: int | None):
        self.cfg, self.kind, self.rank, self.world_size = cfg, kind, rank, world_size
        self.shard_seed = shard_seed  # reseed here once built (actors that sample), or None
        self.role: Any = None
        self.engines: dict[str, RolloutEngine] = {}
        self.senders: dict[str, GroupWeightSender] = {}
        self.receivers: dict[str, GroupWeightReceiver] = {}
        self.device = torch.device("cpu")

    # ------------------------------------------------------------------ set-up

    def where(self) -> dict[str, Any]:
        """Where Ray put this actor: node, address, process, accelerators."""
        import ray

        ctx = ray.get_runtime_context()
        return {
            "node_id": ctx.get_node_id(),
            "ip": node_ip(),
            "pid": os.getpid(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        }

    def address(self) -> str:
        """``ip:port`` of a free port on this actor's node (for a group's rendezvous)."""
        return f"{node_ip()}:{free_port()}"

    def build(
        self,
        master: str | None,
        local_rank: int,
        tokenizer: Any,
        needs: set[str],
        total_updates: int,
        accum: int,
    ) -> None:
        """Join the group's world (trained and rollout groups), seed, then build the role."""
        from repulse.engine.dist import init_distributed

        if master is not None:
            host, _, port = master.rpartition(":")
            os.environ.update(
                MASTER_ADDR=host,
                MASTER_PORT=port,
                RANK=str(self.rank),
                WORLD_SIZE=str(self.world_size),
                LOCAL_RANK=str(local_rank),
            )
        else:
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        _, _, _, self.device = init_distributed(timeout_s=self.cfg.launch.timeout_s)
        cfg = self.cfg
        seed_everything(cfg.train.seed, cfg.train.full_determinism_enable)
        kind, dev = self.kind, self.device
        samples = not cfg.vllm.num_engines  # else the engine actors sample: no engine in here
        if kind == "policy":
            self.role = local_roles.build_policy(cfg, dev, total_updates, accum, tokenizer, samples)
        elif kind == "proposal":
            self.role = local_roles.build_proposal(cfg, dev, total_updates, accum, tokenizer, samples)
        elif kind == "critic":
            self.role = local_roles.build_critic(cfg, dev, total_updates, accum, tokenizer)
        elif kind == "ref":
            self.role = local_roles.build_reference(cfg, dev)
        elif kind == "reward":
            self.role = local_roles.build_rewards(cfg, dev, tokenizer)
        elif kind == "rollout":
            for which in sorted(needs):  # one engine per actor role it serves: policy, proposal
                self.engines[which] = self._engine(tokenizer)
        else:
            raise ValueError(f"unknown role kind {kind!r}")
        if kind in {"policy", "proposal", "critic"}:  # the loss check's policy; the controller counts
            self.role.guard = FiniteGuard.from_config(cfg.train)
        if self.shard_seed is not None:
            torch.manual_seed(self.shard_seed)

    def _engine(self, tokenizer: Any) -> RolloutEngine:
        """A rollout engine holding a copy of the policy's weights (``--rollout.backend``). vLLM: the
        ranks of this group form its world, so ``--vllm.tensor_parallel_size`` consecutive ranks
        make one engine, as under ``torchrun``."""
        cfg, dev = self.cfg, self.device
        if cfg.rollout.backend == "vllm":
            from transformers import AutoConfig

            from repulse.models.loading import resolve_dtype

            limit = getattr(
                AutoConfig.from_pretrained(cfg.actor.model_name_or_path), "max_position_embeddings", None
            )
            return local_roles.vllm_engine(cfg, tokenizer, resolve_dtype(cfg.engine.param_dtype, dev), limit)
        model = local_roles.load_lm(cfg, cfg.actor.model_name_or_path, False, dev)
        # the trainer's parameters require grad, and CPU kernels round differently on that flag
        # (even under no_grad): with it the copy's forward is the trainer's, bit for bit
        model.requires_grad_(True)
        return HFRolloutEngine(
            lambda m=model: m,
            eos_id=tokenizer.eos_token_id,
            pad_id=tokenizer.pad_token_id,
            micro_batch_size=cfg.rollout.micro_batch_size,
            device=dev,
            owns_weights=True,
        )

    # ------------------------------------------------------------------ the role protocols

    def logprobs(self, samples: Samples, temperature: float) -> torch.Tensor:
        return self.role.logprobs(samples, temperature).cpu()

    def values(self, samples: Samples) -> torch.Tensor:
        return self.role.values(samples).cpu()

    def train_step(self, loss: Any, micro_batches: list[Any]) -> tuple[dict[str, float], dict[str, float]]:
        return self.role.train_step(loss, micro_batches)

    def score(self, samples: Samples, items: list[dict]) -> tuple[torch.Tensor, Any, int]:
        """The rewards, the texts scored, and the reward-model inputs cut to fit so far."""
        raw, texts = self.role.score(samples, items)
        return raw.cpu(), texts, int(self.role.truncated_count)

    def first_nonfinite_parameter(self) -> str | None:
        return self.role.first_nonfinite_parameter()

    def generate(self, which: str, prompt_ids: list[list[int]], n: int, sampling: SamplingParams) -> Samples:
        engine = self.engines[which] if self.kind == "rollout" else self.role.rollout
        return engine.generate(prompt_ids, n, sampling)

    def sync_local(self, version: int) -> None:
        """The in-actor engine shares the trained module: the update only moves its version."""
        self.role.sync_rollout(version)

    def weight_version(self, which: str) -> int:
        engine = self.engines[which] if self.kind == "rollout" else self.role.rollout
        return int(engine.weight_version)

    def named_weights(self) -> dict[str, torch.Tensor] | None:
        """The full weights on rank 0 (gathered when sharded: every rank must call)."""
        state = dict(self.role.named_weights())
        return state if self.rank == 0 else None

    def rollout_weights(self) -> dict[str, torch.Tensor]:
        """What a rollout engine loads: the full weights under the base model's names, LoRA merged
        (gathered when sharded: every rank must call; rank 0's are complete)."""
        return self.role.engine.state_for_rollout()

    def save(self, directory: str) -> None:
        self.role.save(Path(directory))
        torch.save(rng_state(), Path(directory) / f"rng_{self.kind}_rank{self.rank}.pt")

    def load(self, directory: str) -> None:
        self.role.load(Path(directory))
        path = Path(directory) / f"rng_{self.kind}_rank{self.rank}.pt"
        if path.exists():
            set_rng_state(torch.load(path, weights_only=False))

    def save_rng(self, directory: str) -> None:
        """A rollout engine's random state (it draws the samples), next to its policy's checkpoint."""
        torch.save(rng_state(), Path(directory) / f"rng_{self.kind}_rank{self.rank}.pt")
        for which, engine in self.engines.items():
            local_roles.save_sampler_state(engine, Path(directory), self.rank, f"sampler_{which}")

    def load_rng(self, directory: str) -> None:
        set_rng_state(torch.load(Path(directory) / f"rng_{self.kind}_rank{self.rank}.pt", weights_only=False))
        for which, engine in self.engines.items():
            local_roles.load_sampler_state(engine, Path(directory), self.rank, f"sampler_{which}")

    def export_hf(self, directory: str, tokenizer: Any) -> None:
        self.role.export_hf(Path(directory), tokenizer)

    # ------------------------------------------------------------------ rollout engines

    def open_sender(self, which: str, address: str, size: int, backend: str) -> None:
        """Rank 0 of a trained actor role: the sending end of its engines' weight group."""
        if self.rank == 0:
            self.senders[which] = GroupWeightSender(
                address, size, self._sync_options(), _sync_device(backend), backend, name=which
            )

    def push(self, which: str, version: int) -> int:
        """Every rank gathers (sharded engines); rank 0 sends. Returns the bytes sent."""
        state = self.rollout_weights()
        return self.senders[which].push(state, version).bytes if self.rank == 0 else 0

    def open_receiver(self, which: str, address: str, rank: int, size: int, backend: str) -> None:
        self.receivers[which] = GroupWeightReceiver(
            self.engines[which],
            address,
            rank,
            size,
            self._sync_options(),
            _sync_device(backend),
            backend,
            which,
        )

    def receive(self, which: str) -> int:
        version = self.receivers[which].receive()
        assert version is not None, "the sender closed the weight group while the run was going on"
        return version

    def _sync_options(self) -> SyncOptions:
        """Buckets from ``--vllm.sync_bucket_mb``; every collective bounded by ``--launch.timeout_s``."""
        return SyncOptions(bucket_mb=self.cfg.vllm.sync_bucket_mb, timeout_s=self.cfg.launch.timeout_s)

    def sleep(self, level: int = 1) -> None:
        for engine in self.engines.values():
            engine.sleep(level)

    def wake_up(self, tags: list[str] | None = None) -> None:
        for engine in self.engines.values():
            engine.wake_up(tags)


def _sync_device(backend: str) -> torch.device:
    """NCCL moves CUDA tensors, gloo CPU ones (``--vllm.sync_backend``; gloo wherever CUDA is absent)."""
    if backend == "nccl" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
