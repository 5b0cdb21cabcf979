"""The RL roles behind small protocols: what an RL method may ask of each model.

Methods (``repulse.trainers.rl.methods``) talk to roles only through these calls, with whole
batches of samples, never to engines or modules. In one process (and under ``torchrun``, one
copy per rank) the roles hold engines directly (``repulse.trainers.rl.local_roles``); on Ray
each role is a group of actors running the same code (``repulse.launch``), and the calls
below become remote calls that shard the batch over the group.

``Comm`` is how a method reduces numbers over the samples of one step: over the ranks of a
``torchrun`` world (each rank holds a slice of the step), or nothing at all when one
controller holds the whole step (Ray).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from repulse.rl.rollout import RolloutEngine, Samples


class Comm(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor: ...


class MicroLoss(Protocol):
    """A loss over micro-batches (see ``repulse.trainers.fit.run_micro_batches``), given the model:
    hyper-parameters only, so that it can be sent to the processes that hold the model."""

    def units(self, batch: Any) -> float: ...
    def loss(self, model: torch.nn.Module, batch: Any) -> Any: ...


class TrainedRole(Protocol):
    """A trained model: the policy, RePULSe's proposal, the critic."""

    def train_step(
        self, loss: MicroLoss, micro_batches: Sequence[Any]
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Forward and backward every micro-batch, then one optimizer step.

        Returns (the loss's stats averaged over every unit on every process, the optimizer
        step's stats: ``grad_norm``, ``lr``)."""

    def save(self, directory: Path) -> None: ...
    def load(self, directory: Path) -> None: ...
    def export_hf(self, directory: Path, tokenizer: Any) -> None: ...
    def first_nonfinite_parameter(self) -> str | None: ...  # checked before every checkpoint


class ActorRole(TrainedRole, Protocol):
    """A trained causal LM with a rollout engine of its own (policy p, proposal q)."""

    rollout: RolloutEngine

    def logprobs(self, samples: Samples, temperature: float = 1.0) -> torch.Tensor:
        """log π(a_t | ·) of every response token at ``temperature`` (no gradient, dropout off)."""

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The full weights by HF name (gathered when sharded), for the rollout engine's update."""

    def sync_rollout(self, version: int) -> None:
        """Bring ``rollout`` to the current weights; afterwards ``rollout.weight_version == version``."""


class CriticRole(TrainedRole, Protocol):
    def values(self, samples: Samples) -> torch.Tensor:
        """V(s_t) before every response token, [B, T] (no gradient)."""


class ReferenceRole(Protocol):
    def logprobs(self, samples: Samples, temperature: float = 1.0) -> torch.Tensor: ...


class RewardRole(Protocol):
    """The reward sources together: one float per sample, and the decoded texts they scored."""

    def score(self, samples: Samples, items: list[dict]) -> tuple[torch.Tensor, Any]: ...
