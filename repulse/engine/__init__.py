"""engine floor of repulse: one training-engine interface, three backends.

``build_engine`` picks the backend named by ``--engine.backend``:

* ``local``     - a plain module (one process; replicated with a gradient all-reduce
                  under a multi-process launcher);
* ``fsdp``      - torch FSDP2 ``fully_shard`` (gloo/CPU or NCCL/GPU);
* ``deepspeed`` - DeepSpeed ZeRO 0-3 (optional extra).

All three honour the loss-scaling contract of :mod:`repulse.engine.base` and build the
optimizer and schedule in :mod:`repulse.engine.optim`. ``fsdp`` and ``deepspeed`` also
run on a single process (they create a one-process group).

``FrozenModel`` / ``prepare_frozen`` place models that are never trained (reference,
reward, teacher) for forwards only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from repulse.config.engine_fields import check_engine_fields
from repulse.engine._common import resolve_dtype
from repulse.engine.base import Engine, OptimSpec
from repulse.errors import UserError

BACKENDS = ("local", "fsdp", "deepspeed")

__all__ = [
    "BACKENDS",
    "Engine",
    "FrozenModel",
    "OptimSpec",
    "build_engine",
    "export_model",
    "parameter_bytes",
    "prepare_frozen",
    "resolve_dtype",
]


def build_engine(
    model: nn.Module,
    spec: OptimSpec,
    cfg: Any,
    accumulation_steps: int = 1,
    micro_batch_size: int = 1,
    **backend_kwargs: Any,
) -> Engine:
    """Wrap ``model`` (already loaded in its dtype) in the engine ``cfg.backend`` names.

    ``cfg`` is an ``EngineSection``. ``accumulation_steps`` and ``micro_batch_size``
    only feed DeepSpeed's batch bookkeeping; every engine accepts any number of
    ``backward`` calls per ``step``. ``backend_kwargs`` go to the backend's constructor
    (e.g. ``config_overrides`` for DeepSpeed, in tests).
    """
    from repulse.engine.dist import init_distributed

    if cfg.backend not in BACKENDS:
        raise UserError(f"--engine.backend {cfg.backend!r} is unknown; choose one of: {', '.join(BACKENDS)}.")
    if cfg.ring_attn_size != 1 or cfg.tensor_parallel_size != 1:
        raise UserError(
            "--engine.ring_attn_size and --engine.tensor_parallel_size must be 1 in this version."
        )
    _rank, _world, _local, device = init_distributed()
    dtype = resolve_dtype(cfg.param_dtype, device)
    # Settings the chosen backend would not use (e.g. --adam_offload on the local engine) are
    # warned about by name; parse_config did this already for commands, this covers code.
    check_engine_fields(cfg)
    engine: Engine
    if cfg.backend == "local":
        from repulse.engine.local import LocalEngine

        engine = LocalEngine(model, spec, param_dtype=dtype, **backend_kwargs)
    elif cfg.backend == "fsdp":
        from repulse.engine.fsdp import FSDPEngine

        engine = FSDPEngine(
            model,
            spec,
            param_dtype=dtype,
            zero_stage=cfg.zero_stage,
            offload=bool(cfg.cpu_offload or cfg.adam_offload),
            **backend_kwargs,
        )
    else:
        from repulse.engine.deepspeed_engine import DeepSpeedEngine

        engine = DeepSpeedEngine(
            model,
            spec,
            cfg,
            param_dtype=dtype,
            accumulation_steps=max(1, int(accumulation_steps)),
            micro_batch_size=max(1, int(micro_batch_size)),
            **backend_kwargs,
        )
    if cfg.backend != "local" or engine.world_size > 1:
        report_parameter_memory(engine, cfg)
    return engine


def export_model(engine: Engine, directory: Path, tokenizer: Any | None = None) -> None:
    """Write a run's final model into ``directory`` (collective: call on every rank).

    A plain HF directory (``engine.export_hf``), or for a LoRA run the adapter in PEFT format,
    as OpenRLHF's ``save_model`` writes it (``adapter_config.json``,
    ``adapter_model.safetensors``, the base config and the tokenizer; see
    :func:`repulse.engine._common.export_peft_adapter`), ready for ``repulse lora-merge``.
    """
    from repulse.engine import dist as rdist
    from repulse.engine._common import export_peft_adapter, is_peft

    model = engine.unwrapped()
    if not is_peft(model):
        engine.export_hf(directory, tokenizer)
        return
    state = engine.full_state_dict()
    if rdist.is_main():
        export_peft_adapter(
            model, Path(directory), state, tokenizer, dtype=getattr(engine, "compute_dtype", None)
        )
        print(
            f"[repulse] LoRA run: saved the adapter (PEFT format) to {directory}; fold it into the base model "
            f"with repulse lora-merge --model_path BASE --lora_path {directory} --output_path OUT",
            flush=True,
        )
    rdist.barrier()


def parameter_bytes(module: nn.Module) -> tuple[int, int]:
    """``(resident, whole)``: bytes of ``module``'s parameters held by this process, and of all of them.

    Resident counts what this process stores during training: a DeepSpeed ZeRO-3 parameter's own
    partition (``ds_tensor``; the gathered ``data`` is freed after use) plus, for the small
    parameters ZeRO-3 keeps gathered throughout (``ds_persist``, below
    ``stage3_param_persistence_threshold``), the whole tensor; an FSDP2 DTensor's local shard; or
    the whole tensor. Whole counts every parameter at its full size, in the same dtype.
    """
    resident = whole = 0
    for p in module.parameters():
        size = p.element_size()
        if hasattr(p, "ds_tensor"):
            resident += p.ds_tensor.numel() * p.ds_tensor.element_size()
            if getattr(p, "ds_persist", False):
                resident += int(p.ds_numel) * size
            whole += int(p.ds_numel) * size
        elif hasattr(p, "to_local"):
            resident += p.to_local().numel() * size
            whole += p.numel() * size
        else:
            resident += p.numel() * size
            whole += p.numel() * size
    return resident, whole


def report_parameter_memory(engine: Engine, cfg: Any) -> list[int]:
    """Print (rank 0) the parameter bytes every process holds after the engine took the model.

    Collective. Returns the per-process byte counts (rank order). With sharding (fsdp, or
    deepspeed ZeRO-3) each is about 1/world of the unsharded figure, which the line also gives.
    """
    from repulse.engine import dist as rdist

    resident, whole = parameter_bytes(engine.unwrapped())
    per_rank = torch.zeros(engine.world_size, dtype=torch.float64, device=engine.device)
    per_rank[engine.rank] = float(resident)
    per_rank = engine.all_reduce(per_rank, "sum").cpu()
    counts = [int(v) for v in per_rank.tolist()]
    if rdist.is_main():
        stage = f" ZeRO-{cfg.zero_stage}" if cfg.backend == "deepspeed" else ""
        stage = f" zero_stage {cfg.zero_stage}" if cfg.backend == "fsdp" else stage
        print(
            f"[repulse] engine {cfg.backend}{stage} on {engine.world_size} process(es): parameter bytes "
            f"per process {counts} (unsharded {whole})",
            flush=True,
        )
    return counts


class FrozenModel:
    """A model that is only ever run forward: reference, reward, teacher.

    Every rank holds a full replica (nothing is sharded), in eval mode, with gradients
    off. With ``offload=True`` the weights live on CPU and move to ``device`` only
    inside ``with frozen.on_device(): ...`` (then back), which is what ``--ref.offload``
    / ``--reward.offload`` / ``--model.teacher_offload`` ask for: device memory is free
    while the trained model takes its step.
    """

    def __init__(self, model: nn.Module, device: torch.device, offload: bool = False):
        self.device = device
        self.offload = offload
        model.eval()
        model.requires_grad_(False)
        self.module = model.to("cpu" if offload else device)
        self._depth = 0

    @contextlib.contextmanager
    def on_device(self) -> Iterator[nn.Module]:
        """The module on the compute device for the duration of the block (re-entrant)."""
        if self.offload and self._depth == 0:
            self.module.to(self.device)
        self._depth += 1
        try:
            yield self.module
        finally:
            self._depth -= 1
            if self.offload and self._depth == 0:
                self.module.to("cpu")

    @torch.no_grad()
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """One no-grad forward on the device (moving the weights there and back if offloaded)."""
        with self.on_device() as module:
            return module(*args, **kwargs)

    def unwrapped(self) -> nn.Module:
        return self.module


def prepare_frozen(
    model: nn.Module, device: torch.device | None = None, offload: bool = False
) -> FrozenModel:
    """Wrap a never-trained model for forwards on this process's device.

    ``offload`` is the role's flag (``cfg.ref.offload``, ``cfg.reward.offload``,
    ``cfg.model.teacher_offload``); ``device`` defaults to :func:`init_distributed`'s.
    """
    if device is None:
        from repulse.engine.dist import init_distributed

        device = init_distributed()[3]
    return FrozenModel(model, device, offload=offload)
