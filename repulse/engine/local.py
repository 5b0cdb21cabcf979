"""The ``local`` engine: a plain module on one device.

On one process this is the whole story: autograd sums gradients over micro-batches,
which is exactly the loss-scaling contract of :mod:`repulse.engine.base` (losses are
already divided by the global unit count), so ``backward`` is ``loss.backward()``.

Under a multi-process launcher it is replicated data parallelism without DDP's
overlap: every rank holds the full model (rank 0's weights are broadcast at start)
and ``step`` all-reduces the gradients with SUM before clipping - the contract asks
for a sum, not a mean. Use ``fsdp`` for anything that must scale.

Dtype: the model trains in whatever dtype it was loaded in (bf16 parameters train
directly in bf16, no master copy or autocast); fp16 is refused (no loss scaler).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from repulse.engine import dist as rdist
from repulse.engine._common import (
    check_meta,
    check_no_fp16,
    clipped_step,
    export_hf_model,
    merge_peft_state_dict,
    optimizer_settings,
    reapply_optimizer_settings,
    refuse_nonfinite_export,
    trainable_parameters,
    write_meta,
)
from repulse.engine.base import OptimSpec
from repulse.engine.finite import module_nonfinite
from repulse.engine.optim import build_optimizer, build_scheduler, current_lrs
from repulse.models.files import default_mode

MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.pt"
SCHED_FILE = "scheduler.pt"


class LocalEngine:
    """Model + optimizer + scheduler in one process (replicated when launched on several)."""

    backend = "local"

    def __init__(
        self,
        model: nn.Module,
        spec: OptimSpec,
        param_dtype: torch.dtype | None = None,
        device: torch.device | None = None,
    ):
        rank, world, _local, default = rdist.init_distributed()
        self.rank, self.world_size = rank, world
        self.device = device or default
        self.spec = spec
        if param_dtype is not None:
            check_no_fp16(param_dtype, self.backend)
        self.module = model.to(self.device)
        if world > 1:
            with torch.no_grad():
                for t in list(self.module.parameters()) + list(self.module.buffers()):
                    dist.broadcast(t.data, src=0)
        self.optimizer = build_optimizer(self.module, spec)
        self.scheduler = build_scheduler(self.optimizer, spec)

    # ------------------------------------------------------------------ training

    def unwrapped(self) -> nn.Module:
        return self.module

    def train(self) -> None:
        self.module.train()

    def eval(self) -> None:
        self.module.eval()

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate gradients; the caller's loss is already normalised (see base)."""
        loss.backward()

    def _sum_gradients(self, params: list[nn.Parameter]) -> None:
        """All-reduce (SUM) every gradient, one flat buffer per dtype."""
        by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
        for p in params:
            if p.grad is None:  # unused on this rank: a zero keeps the collectives aligned
                p.grad = torch.zeros_like(p)
            by_dtype.setdefault(p.grad.dtype, []).append(p)
        for group in by_dtype.values():
            flat = torch.cat([p.grad.reshape(-1) for p in group])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for p in group:
                n = p.grad.numel()
                p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
                offset += n

    def step(self) -> dict[str, float]:
        """Sum gradients over ranks, clip, optimizer step, scheduler step, zero grads.

        Returns the pre-clip global gradient norm and the learning rate(s) this step used; a
        non-finite norm drops the update instead (``update_skipped``, see ``clipped_step``).
        """
        if self.world_size > 1:
            self._sum_gradients(trainable_parameters(self.module))
        lrs = current_lrs(self.optimizer)
        out = clipped_step(self.module, self.optimizer, self.scheduler, self.spec.max_norm)
        return {**out, **lrs}

    def first_nonfinite_parameter(self) -> str | None:
        """The first weight or buffer holding a NaN/infinity (same answer on every rank), or None."""
        return module_nonfinite(self.module)

    # ------------------------------------------------------------------ state

    def save(self, directory: Path) -> None:
        """Weights (safetensors), optimizer and scheduler state into ``directory`` (rank 0 writes)."""
        from safetensors.torch import save_model

        directory = Path(directory)
        if rdist.is_main():
            directory.mkdir(parents=True, exist_ok=True)
            save_model(self.module, str(directory / MODEL_FILE), force_contiguous=True)
            default_mode([directory / MODEL_FILE])
            torch.save(self.optimizer.state_dict(), directory / OPTIM_FILE)
            torch.save(self.scheduler.state_dict(), directory / SCHED_FILE)
            write_meta(directory, {"backend": self.backend, "world_size": self.world_size})
        rdist.barrier()

    def load(self, directory: Path) -> None:
        """Restore exactly what :meth:`save` wrote (resumed training is bit-identical); this run's
        optimizer and schedule settings (lr, ...) replace the saved ones (``reapply_optimizer_settings``)."""
        from safetensors.torch import load_model

        directory = Path(directory)
        check_meta(directory, self.backend)
        missing, unexpected = load_model(
            self.module, str(directory / MODEL_FILE), strict=True, device=str(self.device)
        )
        del missing, unexpected
        settings = optimizer_settings(self.optimizer, self.scheduler)
        self.optimizer.load_state_dict(
            torch.load(directory / OPTIM_FILE, map_location=self.device, weights_only=True)
        )
        self.scheduler.load_state_dict(torch.load(directory / SCHED_FILE, weights_only=True))
        reapply_optimizer_settings(self.optimizer, self.scheduler, settings)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Every weight and persistent buffer, detached on CPU (same on all ranks here)."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.module.state_dict().items()}

    def state_for_rollout(self) -> dict[str, torch.Tensor]:
        """Weights under the base model's names (LoRA merged) for a rollout engine."""
        return merge_peft_state_dict(self.module, self.full_state_dict())

    def export_hf(self, directory: Path, tokenizer: Any | None = None) -> None:
        """A plain HF directory on rank 0 (PEFT adapters merged into the weights); refused, on every
        rank, when a weight is not finite."""
        state = self.full_state_dict() if rdist.is_main() else None
        refuse_nonfinite_export(state, Path(directory))
        if rdist.is_main():
            export_hf_model(self.module, Path(directory), state, tokenizer)
        rdist.barrier()

    # ------------------------------------------------------------------ collectives

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        return rdist.all_reduce(tensor, op)

    def barrier(self) -> None:
        rdist.barrier()
