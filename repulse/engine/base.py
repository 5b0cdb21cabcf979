"""The narrow training-engine interface every backend implements.

Trainers never touch DDP/FSDP/DeepSpeed. They hand an engine a model and optimizer
settings and then call ``forward``/``backward``/``step``.

Loss scaling contract (what makes micro-batching and world size invisible):
a trainer calls ``backward(loss)`` once per micro-batch with a ``loss`` already
normalised so that **the sum of the losses passed on all micro-batches of one step
and on all ranks is the global mean loss** of that step.  The engine therefore must
*sum* (not average) gradients across ranks and accumulation micro-batches; backends
whose runtime averages (DDP/FSDP reduce-scatter mean, DeepSpeed's 1/gas scaling)
multiply the loss back internally.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn


@dataclass
class OptimSpec:
    """Everything an engine needs to build the optimizer and the scheduler."""

    name: str  # "adam" | "muon"
    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    muon_lr: float
    muon_momentum: float
    muon_nesterov: bool
    muon_ns_steps: int
    lr_scheduler: str  # "cosine_with_min_lr" | "constant" | "linear"
    warmup_ratio: float
    min_lr_ratio: float
    max_norm: float
    total_steps: int


class Engine(Protocol):
    """A model + optimizer + scheduler on one or many processes."""

    rank: int
    world_size: int
    device: torch.device
    module: nn.Module  # call this for forwards (wrapped for FSDP/DeepSpeed)

    def unwrapped(self) -> nn.Module: ...
    def train(self) -> None: ...
    def eval(self) -> None: ...
    def backward(self, loss: torch.Tensor) -> None: ...
    def step(
        self,
    ) -> dict[str, float]: ...  # clip, optimizer step, scheduler step, zero grad; returns grad_norm, lr
    # (a non-finite grad norm: no update, no scheduler step, grads dropped; adds update_skipped: 1.0)
    def first_nonfinite_parameter(self) -> str | None: ...  # collective; same answer on every rank
    def save(self, directory: Path) -> None: ...  # full training state (weights, optimizer, scheduler)
    def load(self, directory: Path) -> None: ...
    def export_hf(self, directory: Path, tokenizer: Any | None = None) -> None: ...
    def full_state_dict(self) -> dict[str, torch.Tensor]: ...  # gathered, on CPU, rank 0 gets all keys
    def state_for_rollout(self) -> dict[str, torch.Tensor]: ...
    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor: ...
    def barrier(self) -> None: ...
