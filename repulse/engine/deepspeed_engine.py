"""The ``deepspeed`` engine: DeepSpeed ZeRO 0-3 (optional extra ``repulse[deepspeed]``).

DeepSpeed is imported inside the constructor only, so the package works without it.

Accumulation: the config sets ``managed_gradient_accumulation: false`` (DeepSpeed
>= 0.19): DeepSpeed does not count micro-steps, our :meth:`step` is the boundary. So
a trainer may call ``backward`` any number of times per step, exactly as with the other
engines. ``gradient_accumulation_steps`` is still set to the caller's count so that
DeepSpeed's batch-size bookkeeping (``train_batch_size``) is consistent.

Loss scaling (the contract in :mod:`repulse.engine.base`): ``backward`` passes
``scale_wrt_gas=False`` (no 1/gas factor) and multiplies the loss by the world size,
because ZeRO's gradient reduction averages over data-parallel ranks. The net effect
is a sum over micro-batches and ranks.

Offload: ``--engine.adam_offload`` keeps the optimizer state on CPU (``offload_optimizer``, any
stage); ``--engine.cpu_offload`` keeps the parameters there between uses (``offload_param``,
ZeRO-3 only; other stages warn, see ``repulse.config.engine_fields``).

Optimizer and schedule: for ``adam`` our own AdamW object (or DeepSpeed's CPU Adam
with ``--engine.adam_offload``, which ZeRO-Offload requires) and our LambdaLR are
passed to ``deepspeed.initialize``, so the lr curve and AdamW math match the other
engines. ``muon`` uses DeepSpeed's built-in Muon (ZeRO flattens parameters, so an
outside Muon cannot see matrices): DeepSpeed picks the Muon set itself (2-D weights
whose name has neither ``embed`` nor ``lm_head``), hard-codes Nesterov and 5
Newton-Schulz steps, and applies one weight decay to all parameters; a warning says so.

Precision: ``bf16`` enables DeepSpeed's bf16 mode (bf16 module, fp32 master weights in
the optimizer); ``fp16`` its dynamic loss scaling; fp32 otherwise.

CPU: works with gloo (we create the process group before DeepSpeed, which then uses
it), under ``torchrun`` as well as the ``deepspeed`` launcher. The first run on a
machine JIT-compiles DeepSpeed's CPU ops (~35 s; CPU Adam ~60 s more).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from repulse.engine import dist as rdist
from repulse.engine._common import (
    check_meta,
    check_zero_stage,
    export_hf_model,
    merge_peft_state_dict,
    optimizer_settings,
    reapply_optimizer_settings,
    refuse_nonfinite_export,
    write_meta,
)
from repulse.engine.base import OptimSpec
from repulse.engine.finite import agreed, first_nonfinite, module_nonfinite
from repulse.engine.optim import build_optimizer, build_scheduler, current_lrs, param_groups
from repulse.errors import UserError, require_extra, warn_once

TAG = "ds"


def _deep_update(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


def ds_config(
    cfg: Any,
    spec: OptimSpec,
    dtype: torch.dtype,
    accumulation_steps: int,
    micro_batch_size: int,
    world_size: int,
    on_cuda: bool,
    hidden_size: int | None = None,
) -> dict[str, Any]:
    """The DeepSpeed config dict for ``EngineSection`` ``cfg`` (see the module docstring).

    ZeRO-3 keeps parameters of at most ``stage3_param_persistence_threshold`` elements gathered
    on every process (DeepSpeed's default: 1e5), to spare all-gathers of norms and biases. With
    the model's ``hidden_size`` known, the threshold is 10 x hidden_size, the value transformers'
    Trainer gives DeepSpeed's ``"auto"``: norms and biases stay gathered, weight matrices are
    sharded whatever the model's size (with 1e5 a small model would not be sharded at all).
    """
    stage = check_zero_stage(cfg.zero_stage)
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": bool(cfg.overlap_comm) and stage >= 2}
    if cfg.adam_offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_cuda}
    if cfg.cpu_offload and stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_cuda}
    if stage == 3 and cfg.zpg > 1:
        zero["zero_hpz_partition_size"] = int(cfg.zpg)
    if stage == 3 and hidden_size:
        zero["stage3_param_persistence_threshold"] = 10 * int(hidden_size)
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": int(micro_batch_size),
        "gradient_accumulation_steps": int(accumulation_steps),
        "train_batch_size": int(micro_batch_size) * int(accumulation_steps) * int(world_size),
        "managed_gradient_accumulation": False,
        "gradient_clipping": float(spec.max_norm),
        "zero_optimization": zero,
        # ZeRO checks bf16 gradients for NaN/inf only when asked (fp32 and fp16 always): an update
        # with a non-finite gradient norm is then dropped, as in the other engines
        "bf16": {"enabled": dtype == torch.bfloat16, "check_grad_overflow": True},
        "fp16": {"enabled": dtype == torch.float16, "initial_scale_power": 16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
    }
    if cfg.grad_accum_dtype:
        config["data_types"] = {"grad_accum_dtype": cfg.grad_accum_dtype}
    if spec.name == "muon":
        config["optimizer"] = {
            "type": "Muon",
            "params": {
                "lr": spec.lr,
                "muon_lr": spec.muon_lr,
                "adam_lr": spec.lr,
                "momentum": spec.muon_momentum,
                "betas": list(spec.betas),
                "eps": spec.eps,
                "weight_decay": spec.weight_decay,
            },
        }
    return config


def _hidden_size(model: nn.Module) -> int | None:
    """The model's hidden size from its HF config (the text model's for multimodal configs), or None."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    size = getattr(config, "hidden_size", None)
    return int(size) if isinstance(size, int) else None


class DeepSpeedEngine:
    """A DeepSpeed engine behind the repulse Engine interface (see the module docstring)."""

    backend = "deepspeed"

    def __init__(
        self,
        model: nn.Module,
        spec: OptimSpec,
        cfg: Any,
        param_dtype: torch.dtype,
        accumulation_steps: int = 1,
        micro_batch_size: int = 1,
        config_overrides: dict[str, Any] | None = None,
    ):
        _rank, _world, local_rank, device = rdist.init_distributed()
        if device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        # DeepSpeed asserts LOCAL_RANK is set even when it runs on one process without a launcher.
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
        deepspeed = require_extra("deepspeed", "deepspeed")
        rdist.ensure_process_group(device)
        deepspeed.init_distributed(dist_backend=rdist.backend_for(device), auto_mpi_discovery=False)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.device = device
        self.spec = spec
        self.zero_stage = check_zero_stage(cfg.zero_stage)
        self.compute_dtype = param_dtype
        config = ds_config(
            cfg,
            spec,
            param_dtype,
            accumulation_steps,
            micro_batch_size,
            self.world_size,
            device.type == "cuda",
            hidden_size=_hidden_size(model),
        )
        _deep_update(config, config_overrides or {})
        model = model.to(device)
        if spec.name == "muon":
            if cfg.adam_offload:
                raise UserError(
                    "--optim.name muon does not work with --engine.adam_offload (DeepSpeed's Muon keeps its state on the device)."
                )
            if not spec.muon_nesterov or spec.muon_ns_steps != 5:
                warn_once(
                    "ds-muon",
                    "DeepSpeed's Muon always uses Nesterov and 5 Newton-Schulz steps; --muon.nesterov/--muon.ns_steps are ignored.",
                )
            if spec.max_norm > 0:
                warn_once(
                    "ds-muon-clip",
                    "with DeepSpeed's Muon, gradient clipping and the reported grad_norm apply to the "
                    "orthogonalised update (norm ~ sqrt(sum of min(rows, cols))), which clipping then shrinks; "
                    "consider --optim.max_norm 0.",
                )
            # our groups, so biases and norms get no weight decay here either (DeepSpeed splits
            # each group into its Muon and AdamW halves and keeps the group's lr and decay)
            engine, *_ = deepspeed.initialize(
                model=model,
                model_parameters=param_groups(model, spec),
                lr_scheduler=lambda opt: build_scheduler(opt, spec),
                config=config,
            )
        else:
            if cfg.adam_offload:
                from deepspeed.ops.adam import DeepSpeedCPUAdam

                optimizer = DeepSpeedCPUAdam(
                    param_groups(model, spec),
                    lr=spec.lr,
                    betas=spec.betas,
                    eps=spec.eps,
                    weight_decay=0.0,
                    adamw_mode=True,
                )
            else:
                optimizer = build_optimizer(model, spec)
            engine, *_ = deepspeed.initialize(
                model=model, optimizer=optimizer, lr_scheduler=build_scheduler(optimizer, spec), config=config
            )
        self.ds = engine
        self.module = engine  # forwards go through DeepSpeed (ZeRO-3 gathers parameters there)
        self.optimizer = engine.optimizer
        self.scheduler = engine.lr_scheduler

    # ------------------------------------------------------------------ training

    def unwrapped(self) -> nn.Module:
        return self.ds.module

    def train(self) -> None:
        self.ds.train()

    def eval(self) -> None:
        self.ds.eval()

    def backward(self, loss: torch.Tensor) -> None:
        """Sum semantics: no 1/gas, and x world size against ZeRO's mean over ranks."""
        self.ds.backward(loss * self.world_size, scale_wrt_gas=False)

    def step(self) -> dict[str, float]:
        """Reduce, clip, step and schedule (DeepSpeed does all four in ``engine.step``).

        A non-finite gradient norm drops the update, as in the other engines: ZeRO 1-3 detect it
        themselves (an "overflow": no optimizer or scheduler step, gradients cleared); at stage 0
        the gradients are checked here first. Reported as ``update_skipped``, except under fp16,
        whose dynamic loss scaler skips overflowing steps as a matter of course.
        """
        lrs = current_lrs(self.ds.optimizer)
        if self.zero_stage == 0 and self._local_grads_nonfinite():
            self.ds.zero_grad()
            return {"grad_norm": float("nan"), "update_skipped": 1.0, **lrs}
        skipped_before = getattr(self.ds, "skipped_steps", 0)
        self.ds.step()
        norm = self.ds.get_global_grad_norm()
        if isinstance(norm, torch.Tensor):
            norm = norm.item()
        out = {"grad_norm": float(norm) if norm is not None else float("nan"), **lrs}
        if getattr(self.ds, "skipped_steps", 0) > skipped_before and self.compute_dtype != torch.float16:
            out["update_skipped"] = 1.0
        return out

    def _local_grads_nonfinite(self) -> bool:
        """Whether any process holds a NaN/infinite gradient (stage 0: gradients live on the parameters)."""
        grads = [(n, p.grad) for n, p in self.ds.module.named_parameters() if p.grad is not None]
        return agreed(first_nonfinite(grads)) is not None

    def first_nonfinite_parameter(self) -> str | None:
        """The first weight or buffer (ZeRO-3: its partition) holding a NaN/infinity, agreed by every rank."""
        return module_nonfinite(self.ds.module)

    # ------------------------------------------------------------------ state

    def save(self, directory: Path) -> None:
        """DeepSpeed checkpoint (weights, ZeRO optimizer partitions, scheduler) under ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.ds.save_checkpoint(str(directory), tag=TAG)
        if rdist.is_main():
            write_meta(
                directory,
                {"backend": self.backend, "world_size": self.world_size, "zero_stage": self.zero_stage},
            )
        rdist.barrier()

    def load(self, directory: Path) -> None:
        """Load into this (freshly built) engine; DeepSpeed restores optimizer and scheduler too."""
        directory = Path(directory)
        check_meta(directory, self.backend)
        settings = optimizer_settings(self.ds.optimizer, self.scheduler)
        path, _client = self.ds.load_checkpoint(
            str(directory), tag=TAG, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise UserError(f"DeepSpeed could not load the checkpoint in {directory}.")
        reapply_optimizer_settings(self.ds.optimizer, self.scheduler, settings)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Gathered weights on CPU on rank 0 (ZeRO-3 gathers module by module; collective)."""
        model = self.ds.module
        out: dict[str, torch.Tensor] = {}
        if self.zero_stage < 3:
            if rdist.is_main():
                out = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            return out
        import deepspeed

        for prefix, mod in model.named_modules():
            params = list(mod.parameters(recurse=False))
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                if rdist.is_main():
                    for name, p in mod.named_parameters(recurse=False):
                        out[f"{prefix}.{name}" if prefix else name] = p.detach().to("cpu", copy=True)
            if rdist.is_main():
                for name, buf in mod.named_buffers(recurse=False):
                    if name not in mod._non_persistent_buffers_set:
                        out[f"{prefix}.{name}" if prefix else name] = buf.detach().to("cpu", copy=True)
        if rdist.is_main():  # keep state_dict order and tied-weight aliases
            keys = list(model.state_dict().keys())
            out = {k: out[k] for k in keys if k in out}
        return out

    def state_for_rollout(self) -> dict[str, torch.Tensor]:
        return merge_peft_state_dict(self.ds.module, self.full_state_dict())

    def export_hf(self, directory: Path, tokenizer: Any | None = None) -> None:
        """Gather (collective), then rank 0 writes an HF directory."""
        state = self.full_state_dict()
        refuse_nonfinite_export(state, Path(directory))
        if rdist.is_main():
            export_hf_model(self.ds.module, Path(directory), state, tokenizer)
        rdist.barrier()

    # ------------------------------------------------------------------ collectives

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        return rdist.all_reduce(tensor, op)

    def barrier(self) -> None:
        rdist.barrier()
