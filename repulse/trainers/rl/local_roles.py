"""The RL roles in this process: engines, a frozen reference, reward sources, rollout engines.

Under ``torchrun`` every rank builds the same roles and holds its slice of each step; gradients
are summed by the engines and ``LocalComm`` reduces the step's statistics over the ranks.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from repulse.config.sections import RLConfig
from repulse.rl.experience import batched_logprobs, batched_values
from repulse.rl.roles import MicroLoss
from repulse.rl.rollout import HFRolloutEngine, RolloutEngine, Samples
from repulse.rl.scoring import LocalRewards
from repulse.run.finite import FiniteGuard
from repulse.trainers.fit import run_micro_batches


@dataclass
class _Bound:
    """A ``MicroLoss`` bound to a model: the ``Method`` that ``run_micro_batches`` expects."""

    loss_fn: MicroLoss
    model: torch.nn.Module

    def units(self, batch: Any) -> float:
        return self.loss_fn.units(batch)

    def loss(self, batch: Any):
        return self.loss_fn.loss(self.model, batch)


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

    def __init__(self, engine, micro_batch_size: int):
        self.engine, self.micro = engine, micro_batch_size
        self.guard: FiniteGuard | None = None  # the run's nan policy (None: stop)

    def train_step(
        self, loss: MicroLoss, micro_batches: Sequence[Any]
    ) -> tuple[dict[str, float], dict[str, float]]:
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
        self.engine.export_hf(directory, tokenizer)


class LocalActor(LocalTrained):
    """A trained causal LM and the rollout engine that samples from it."""

    def __init__(self, engine, micro_batch_size: int, rollout: RolloutEngine | None = None):
        super().__init__(engine, micro_batch_size)
        self.rollout = rollout

    def unwrapped(self) -> torch.nn.Module:
        return self.engine.unwrapped()

    def logprobs(self, samples: Samples, temperature: float = 1.0) -> torch.Tensor:
        return batched_logprobs(self.engine.module, samples.to(self.engine.device), self.micro, temperature)

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        yield from self.engine.full_state_dict().items()

    def sync_rollout(self, version: int) -> None:
        engine = self.rollout
        engine.begin_update()
        if getattr(engine, "owns_weights", True):
            engine.load(self.named_weights())
        engine.end_update(version)


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
    """Everything a method may use; roles it does not need are None."""

    tokenizer: Any
    comm: LocalComm
    policy: LocalActor
    rewards: LocalRewards
    ref: LocalReference | None = None
    critic: LocalCritic | None = None
    proposal: LocalActor | None = None

    def trained(self) -> dict[str, LocalTrained]:
        """The roles with training state, by checkpoint directory name."""
        named = {"actor": self.policy, "critic": self.critic, "proposal": self.proposal}
        return {k: v for k, v in named.items() if v is not None}


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


def build_roles(
    cfg: RLConfig, needs: set[str], device: torch.device, total_updates: int, accum: int, tokenizer: Any
) -> Roles:
    """Build the roles in ``needs`` (``ref``, ``critic``, ``proposal``; the policy and rewards always)."""
    from repulse.engine import prepare_frozen
    from repulse.models.loading import disable_dropout, load_causal_lm, load_scalar_model
    from repulse.rl.rewards import build_reward_sources

    path = cfg.actor.model_name_or_path
    micro = cfg.train.micro_batch_size

    # every RL model runs with dropout off, in training forwards too (see ``disable_dropout``)
    def lm(p: str, trainable: bool):
        return disable_dropout(
            load_causal_lm(
                p,
                dtype=cfg.engine.param_dtype,
                attn=cfg.engine.attn_implementation,
                gradient_checkpointing=trainable and cfg.actor.gradient_checkpointing_enable,
                reentrant=cfg.actor.gradient_checkpointing_reentrant,
                device=device,
                trainable=trainable,
            )
        )

    a = cfg.actor
    policy_engine = _engine_for(lm(path, True), a.adam, a.muon, a.optim, cfg, total_updates, accum)
    comm = LocalComm(policy_engine)
    policy = LocalActor(policy_engine, micro, hf_rollout(policy_engine, tokenizer, cfg))
    rewards = LocalRewards(
        tokenizer,
        build_reward_sources(cfg.reward, device, cfg.rollout.micro_batch_size),
        cfg.reward.reduction,
    )
    roles = Roles(tokenizer, comm, policy, rewards)
    if "ref" in needs:
        frozen = prepare_frozen(
            lm(cfg.ref.model_name_or_path or path, False), device=device, offload=cfg.ref.offload
        )
        roles.ref = LocalReference(frozen, micro)
    if "critic" in needs:
        model = disable_dropout(
            load_scalar_model(
                cfg.critic.model_name_or_path or path,
                value_head_prefix="score",
                pad_token_id=tokenizer.pad_token_id,
                dtype=cfg.engine.param_dtype,
                attn=cfg.engine.attn_implementation,
                device=device,
            )
        )
        c = cfg.critic
        roles.critic = LocalCritic(
            _engine_for(model, c.adam, c.muon, c.optim, cfg, total_updates, accum), micro
        )
    if "proposal" in needs:
        q_adam = copy.deepcopy(a.adam)
        q_adam.lr = cfg.repulse.proposal_lr
        q_total = total_updates * max(1, cfg.repulse.q_updates_per_step)
        q_engine = _engine_for(lm(path, True), q_adam, a.muon, a.optim, cfg, q_total, accum)
        roles.proposal = LocalActor(q_engine, micro, hf_rollout(q_engine, tokenizer, cfg))
    return roles
