"""The RL roles in this process: engines, a frozen reference, reward sources, rollout engines.

Under ``torchrun`` every rank builds the same roles and holds its slice of each step; gradients
are summed by the engines and ``LocalComm`` reduces the step's statistics over the ranks.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from repulse.config.sections import RLConfig
from repulse.losses.moe import with_aux_loss
from repulse.models.moe import RouterAuxLoss, router_aux_loss, router_config
from repulse.rl.experience import batched_logprobs, batched_values
from repulse.rl.roles import ActorRole, Comm, CriticRole, MicroLoss, ReferenceRole, RewardRole, TrainedRole
from repulse.rl.rollout import HFRolloutEngine, RolloutEngine, Samples
from repulse.rl.rollout.vllm import VLLMRolloutEngine
from repulse.rl.scoring import LocalRewards
from repulse.rl.weight_sync import LocalWeightSync, SyncOptions
from repulse.run.finite import FiniteGuard
from repulse.trainers.fit import MicroResult, run_micro_batches


@dataclass
class _Bound:
    """A ``MicroLoss`` bound to a model: the ``Method`` that ``run_micro_batches`` expects."""

    loss_fn: MicroLoss
    model: torch.nn.Module

    def units(self, batch: Any) -> float:
        return self.loss_fn.units(batch)

    def loss(self, batch: Any):
        return self.loss_fn.loss(self.model, batch)


@dataclass
class _WithRouterAux:
    """A ``MicroLoss`` plus an MoE model's router load-balancing loss over the forwards it ran:
    ``loss_sum + coef·units·aux`` (``--actor.aux_loss_coef``, as OpenRLHF adds ``aux_loss_coef x
    aux_loss`` to the actor's and the critic's losses)."""

    loss_fn: MicroLoss
    aux: RouterAuxLoss

    def units(self, batch: Any) -> float:
        return self.loss_fn.units(batch)

    def loss(self, model: torch.nn.Module, batch: Any) -> MicroResult:
        self.aux.begin()
        out = self.loss_fn.loss(model, batch)
        aux = self.aux.take()
        if aux is None:
            raise RuntimeError("the MoE model ran no forward with gradients in this loss")
        units = float(self.units(batch))
        stats = {"aux_loss": (float(aux.detach()) * units, units)}
        return MicroResult(with_aux_loss(out.loss_sum, aux, self.aux.coef, units), {**out.stats, **stats})


class LocalComm:
    """Reductions over the ranks of this process's torch.distributed world (identity on one)."""

    def __init__(self, engine):
        self._engine = engine
        self.rank, self.world_size, self.device = engine.rank, engine.world_size, engine.device

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        return self._engine.all_reduce(tensor.to(self.device), op)


class LocalTrained:
    """A trained role over an engine (local / fsdp / deepspeed)."""

    def __init__(self, engine, micro_batch_size: int, aux: RouterAuxLoss | None = None):
        self.engine, self.micro = engine, micro_batch_size
        self.guard: FiniteGuard | None = None  # the run's nan policy (None: stop)
        self.aux = aux  # an MoE model's router loss, added to every loss it trains on

    def train_step(
        self, loss: MicroLoss, micro_batches: Sequence[Any]
    ) -> tuple[dict[str, float], dict[str, float]]:
        if self.aux is not None:
            loss = _WithRouterAux(loss, self.aux)
        out = run_micro_batches(
            self.engine, _Bound(loss, self.engine.module), micro_batches, train=True, guard=self.guard
        )
        return out, self.engine.step()

    def first_nonfinite_parameter(self) -> str | None:
        return self.engine.first_nonfinite_parameter()

    def save(self, directory: Path) -> None:
        self.engine.save(directory)

    def load(self, directory: Path) -> None:
        self.engine.load(directory)

    def export_hf(self, directory: Path, tokenizer: Any) -> None:
        """The HF model (a LoRA run: its PEFT adapter, as the offline trainers write it)."""
        from repulse.engine import export_model

        export_model(self.engine, directory, tokenizer)


class LocalActor(LocalTrained):
    """A trained causal LM and the rollout engine that samples from it."""

    def __init__(
        self,
        engine,
        micro_batch_size: int,
        rollout: RolloutEngine | None = None,
        sync: SyncOptions | None = None,
        aux: RouterAuxLoss | None = None,
    ):
        super().__init__(engine, micro_batch_size, aux)
        self.rollout = rollout
        self.sync = LocalWeightSync(rollout, sync) if rollout is not None else None

    def unwrapped(self) -> torch.nn.Module:
        return self.engine.unwrapped()

    def logprobs(self, samples: Samples, temperature: float = 1.0) -> torch.Tensor:
        return batched_logprobs(self.engine.module, samples.to(self.engine.device), self.micro, temperature)

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        yield from self.engine.state_for_rollout().items()  # LoRA merged, base model's names

    def save(self, directory: Path) -> None:
        super().save(directory)
        save_sampler_state(self.rollout, Path(directory), self.engine.rank)

    def load(self, directory: Path) -> None:
        super().load(directory)
        load_sampler_state(self.rollout, Path(directory), self.engine.rank)

    def sync_rollout(self, version: int) -> None:
        engine = self.rollout
        if not getattr(engine, "owns_weights", True):  # samples from the trained module itself
            engine.begin_update()
            engine.end_update(version)
            return
        # gathered on rank 0 when sharded: the sync broadcasts it to every rank's engine
        self.sync.push(self.engine.state_for_rollout(), version)


def save_sampler_state(engine: Any, directory: Path, rank: int, name: str = "sampler") -> None:
    """A rollout engine with a random stream of its own (vLLM's per-call base seeds; the hf engine
    draws from the process's RNG, which the checkpoint keeps anyway) saves it with the role."""
    state = getattr(engine, "rng_state", None)
    if state is not None:
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(state(), directory / f"{name}_rank{rank}.pt")


def load_sampler_state(engine: Any, directory: Path, rank: int, name: str = "sampler") -> None:
    path = directory / f"{name}_rank{rank}.pt"
    if path.exists() and hasattr(engine, "set_rng_state"):
        engine.set_rng_state(torch.load(path, weights_only=False))


class LocalCritic(LocalTrained):
    def values(self, samples: Samples) -> torch.Tensor:
        return batched_values(self.engine.module, samples.to(self.engine.device), self.micro)


class LocalReference:
    """A frozen LM (``repulse.engine.FrozenModel``), moved to the device only for its forwards when offloaded."""

    def __init__(self, frozen, micro_batch_size: int):
        self.frozen, self.micro = frozen, micro_batch_size

    def logprobs(self, samples: Samples, temperature: float = 1.0) -> torch.Tensor:
        with self.frozen.on_device() as model:
            return batched_logprobs(model, samples.to(self.frozen.device), self.micro, temperature)


@dataclass
class Roles:
    """Everything a method may use; roles it does not need are None.

    ``shards``: how many data-parallel shards of each step this process holds - 1 under
    ``torchrun`` (every rank holds its own), the trained groups' width on Ray (the controller holds
    the whole step, and a role call splits a batch into that many contiguous shards, shard r for
    the group's rank r, as rank r holds it under ``torchrun``).
    """

    tokenizer: Any
    comm: Comm
    policy: ActorRole
    rewards: RewardRole
    ref: ReferenceRole | None = None
    critic: CriticRole | None = None
    proposal: ActorRole | None = None
    shards: int = 1

    def trained(self) -> dict[str, TrainedRole]:
        """The roles with training state, by checkpoint directory name."""
        named = {"actor": self.policy, "critic": self.critic, "proposal": self.proposal}
        return {k: v for k, v in named.items() if v is not None}


class RoleBackend(Protocol):
    """Where the roles live (built once per run; whoever made the backend releases it)."""

    def data_parallel(self, cfg: RLConfig, world: int) -> int:
        """The data-parallel width D of the trained roles (each optimizer step sees D shards)."""

    def build(
        self,
        cfg: RLConfig,
        needs: set[str],
        device: torch.device,
        total_updates: int,
        accum: int,
        tokenizer: Any,
    ) -> Roles: ...


class LocalBackend:
    """Every role in this process; under ``torchrun`` one copy per rank, each holding its shard."""

    def data_parallel(self, cfg: RLConfig, world: int) -> int:
        return world

    def build(
        self,
        cfg: RLConfig,
        needs: set[str],
        device: torch.device,
        total_updates: int,
        accum: int,
        tokenizer: Any,
    ) -> Roles:
        return build_roles(cfg, needs, device, total_updates, accum, tokenizer)


def _engine_for(model, adam, muon, optim, cfg: RLConfig, total_steps: int, accum: int):
    from repulse.engine import build_engine
    from repulse.engine.spec import optim_spec_from

    spec = optim_spec_from(adam, muon, optim, max(1, total_steps))
    return build_engine(
        model, spec, cfg.engine, accumulation_steps=accum, micro_batch_size=cfg.train.micro_batch_size
    )


def hf_rollout(engine, tokenizer, cfg: RLConfig) -> HFRolloutEngine:
    """The hf backend colocated with a trained engine: it samples from the engine's own module."""
    return HFRolloutEngine(
        engine.unwrapped,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        micro_batch_size=cfg.rollout.micro_batch_size,
        device=engine.device,
    )


def vllm_rollout(engine, tokenizer, cfg: RLConfig) -> VLLMRolloutEngine:
    """The vllm backend colocated with a trained engine: an engine of its own in this process,
    computing in the trainer's dtype, given the weights after every update."""
    module = engine.unwrapped()
    dtype = getattr(engine, "compute_dtype", None) or next(module.parameters()).dtype
    limit = getattr(getattr(module, "config", None), "max_position_embeddings", None)
    return vllm_engine(cfg, tokenizer, dtype, limit)


def vllm_engine(cfg: RLConfig, tokenizer, dtype: torch.dtype, limit: int | None) -> VLLMRolloutEngine:
    """A vLLM engine of the policy's checkpoint, long enough for a prompt plus its response (at most
    the model's ``limit`` positions), computing in ``dtype`` (the trainer's, for equal log-probs)."""
    longest = cfg.data.max_len + (cfg.rollout.max_new_tokens or 0)
    return VLLMRolloutEngine.from_section(
        cfg.actor.model_name_or_path,
        cfg.vllm,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        dtype=dtype,
        seed=cfg.train.seed,
        max_model_len=min(longest, limit) if limit else longest,
    )


def rollout_engine(engine, tokenizer, cfg: RLConfig) -> RolloutEngine:
    """``--rollout.backend``: hf (samples from the trained module) or vllm."""
    if cfg.rollout.backend == "vllm":
        return vllm_rollout(engine, tokenizer, cfg)
    return hf_rollout(engine, tokenizer, cfg)


def sync_options(cfg: RLConfig) -> SyncOptions:
    return SyncOptions(bucket_mb=cfg.vllm.sync_bucket_mb, timeout_s=cfg.vllm.sync_timeout_s)


def load_lm(cfg: RLConfig, path: str, trainable: bool, device: torch.device) -> torch.nn.Module:
    """A causal LM as every RL role loads it: dropout off, in training forwards too (``disable_dropout``)."""
    from repulse.models.loading import disable_dropout, load_causal_lm

    return disable_dropout(
        load_causal_lm(
            path,
            dtype=cfg.engine.param_dtype,
            attn=cfg.engine.attn_implementation,
            gradient_checkpointing=trainable and cfg.actor.gradient_checkpointing_enable,
            reentrant=cfg.actor.gradient_checkpointing_reentrant,
            device=device,
            trainable=trainable,
        )
    )


def build_policy(
    cfg: RLConfig, device: torch.device, total_updates: int, accum: int, tokenizer: Any, samples: bool = True
) -> LocalActor:
    """The policy; with ``samples`` False (Ray with engines of their own) it gets no rollout engine."""
    a = cfg.actor
    lm = load_lm(cfg, a.model_name_or_path, True, device)
    aux = router_aux_loss(lm, a.aux_loss_coef, "--actor.aux_loss_coef", a.model_name_or_path)
    engine = _engine_for(lm, a.adam, a.muon, a.optim, cfg, total_updates, accum)
    rollout = rollout_engine(engine, tokenizer, cfg) if samples else None
    return LocalActor(engine, cfg.train.micro_batch_size, rollout, sync_options(cfg), aux)


def build_rewards(cfg: RLConfig, device: torch.device, tokenizer: Any) -> LocalRewards:
    from repulse.rl.rewards import build_reward_sources

    sources = build_reward_sources(cfg.reward, device, cfg.rollout.micro_batch_size)
    return LocalRewards(tokenizer, sources, cfg.reward.reduction)


def build_reference(cfg: RLConfig, device: torch.device) -> LocalReference:
    from repulse.engine import prepare_frozen

    path = cfg.ref.model_name_or_path or cfg.actor.model_name_or_path
    frozen = prepare_frozen(load_lm(cfg, path, False, device), device=device, offload=cfg.ref.offload)
    return LocalReference(frozen, cfg.train.micro_batch_size)


def build_critic(
    cfg: RLConfig, device: torch.device, total_updates: int, accum: int, tokenizer: Any
) -> LocalCritic:
    """The critic: a value head on the critic's (default: the actor's) LM; a fresh head is drawn from
    the torch RNG, so every process that builds it must be at the same RNG state."""
    from repulse.models.loading import disable_dropout, load_scalar_model

    model = disable_dropout(
        load_scalar_model(
            cfg.critic.model_name_or_path or cfg.actor.model_name_or_path,
            value_head_prefix="score",
            pad_token_id=tokenizer.pad_token_id,
            dtype=cfg.engine.param_dtype,
            attn=cfg.engine.attn_implementation,
            device=device,
        )
    )
    c = cfg.critic
    # an MoE critic gains the router loss at the actor's coefficient, as in OpenRLHF (one flag)
    aux = (
        router_aux_loss(model, cfg.actor.aux_loss_coef, "--actor.aux_loss_coef")
        if router_config(model) is not None
        else None
    )
    return LocalCritic(
        _engine_for(model, c.adam, c.muon, c.optim, cfg, total_updates, accum),
        cfg.train.micro_batch_size,
        aux,
    )


def build_proposal(
    cfg: RLConfig, device: torch.device, total_updates: int, accum: int, tokenizer: Any, samples: bool = True
) -> LocalActor:
    """RePULSe's proposal q: a copy of the policy's start with its own optimizer (``--repulse.proposal_lr``)."""
    a = cfg.actor
    q_adam = copy.deepcopy(a.adam)
    q_adam.lr = cfg.repulse.proposal_lr
    q_total = total_updates * max(1, cfg.repulse.q_updates_per_step)
    lm = load_lm(cfg, a.model_name_or_path, True, device)
    aux = router_aux_loss(lm, a.aux_loss_coef, "--actor.aux_loss_coef", a.model_name_or_path)
    engine = _engine_for(lm, q_adam, a.muon, a.optim, cfg, q_total, accum)
    rollout = rollout_engine(engine, tokenizer, cfg) if samples else None
    return LocalActor(engine, cfg.train.micro_batch_size, rollout, sync_options(cfg), aux)


def build_roles(
    cfg: RLConfig, needs: set[str], device: torch.device, total_updates: int, accum: int, tokenizer: Any
) -> Roles:
    """Build the roles in ``needs`` (``ref``, ``critic``, ``proposal``; the policy and rewards always)."""
    policy = build_policy(cfg, device, total_updates, accum, tokenizer)
    roles = Roles(tokenizer, LocalComm(policy.engine), policy, build_rewards(cfg, device, tokenizer))
    if "ref" in needs:
        roles.ref = build_reference(cfg, device)
    if "critic" in needs:
        roles.critic = build_critic(cfg, device, total_updates, accum, tokenizer)
    if "proposal" in needs:
        roles.proposal = build_proposal(cfg, device, total_updates, accum, tokenizer)
    return roles
