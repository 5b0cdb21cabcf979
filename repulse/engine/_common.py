"""Helpers shared by the engine backends: dtypes, stage checks, PEFT merging, HF export."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from repulse.engine.finite import export_nonfinite
from repulse.errors import NonFiniteError, UserError
from repulse.models.files import weights_default_mode


def resolve_dtype(param_dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``--engine.param_dtype`` as a torch dtype (the models floor owns the rule: auto = bf16 on CUDA)."""
    from repulse.models.loading import resolve_dtype as _resolve

    return _resolve(param_dtype, device)


def check_zero_stage(stage: int) -> int:
    if stage not in (0, 1, 2, 3):
        raise UserError(f"--engine.zero_stage must be 0, 1, 2 or 3, got {stage}.")
    return stage


def check_no_fp16(dtype: torch.dtype, backend: str) -> None:
    """fp16 training needs a dynamic loss scaler, which only the DeepSpeed backend has."""
    if dtype == torch.float16:
        raise UserError(
            f"--engine.param_dtype fp16 needs a loss scaler, which --engine.backend {backend} does not have; "
            "use bf16, or --engine.backend deepspeed."
        )


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    """``engine.json``: which backend wrote a checkpoint, so loading it elsewhere fails clearly."""
    (directory / "engine.json").write_text(json.dumps(meta, indent=1, sort_keys=True))


def check_meta(directory: Path, backend: str) -> dict[str, Any]:
    path = directory / "engine.json"
    if not path.is_file():
        raise UserError(f"{directory} is not an engine checkpoint (no engine.json).")
    meta = json.loads(path.read_text())
    if meta.get("backend") != backend:
        raise UserError(
            f"checkpoint {directory} was written by --engine.backend {meta.get('backend')}; "
            f"resume with that backend (this run uses {backend})."
        )
    return meta


# --------------------------------------------------------------------------- PEFT


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """name -> LoRA-wrapped layer (modules holding ``lora_A``/``lora_B`` dicts)."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(getattr(mod, "lora_A", None), nn.ModuleDict) and hasattr(mod, "scaling"):
            out[name] = mod
    return out


def merge_peft_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fold LoRA adapters into the base weights of a full PEFT state dict.

    Works on gathered state dicts, so it is the same for every backend (weights may be
    FSDP shards or ZeRO partitions in the live model). For each LoRA linear layer with
    active adapter a: W <- W + scaling[a] * B_a @ A_a (transposed for ``fan_in_fan_out``
    layers such as GPT-2's Conv1D). Keys are renamed to the base model's own
    (``base_model.model.`` prefix and ``.base_layer`` dropped; ``modules_to_save`` copies
    replace the originals). Returns ``state`` unchanged for non-PEFT models.
    """
    if not is_peft(model) or not state:
        return state
    layers = _lora_layers(model)
    active = getattr(model, "active_adapters", None) or [getattr(model, "active_adapter", "default")]
    if callable(active):
        active = active()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_" in key or ".original_module." in key:
            continue
        out[key] = value
    for name, layer in layers.items():
        if getattr(layer, "use_dora", {}) and any(layer.use_dora.get(a, False) for a in active):
            raise UserError("exporting DoRA adapters merged is not supported; export with LoRA (no DoRA).")
        base_key = f"{name}.base_layer.weight"
        if base_key not in out:
            raise UserError(f"cannot merge LoRA layer {name}: only Linear LoRA layers are supported.")
        weight = out[base_key].float()
        for a in active:
            a_key, b_key = f"{name}.lora_A.{a}.weight", f"{name}.lora_B.{a}.weight"
            if a_key not in state:
                continue
            delta = state[b_key].float() @ state[a_key].float()
            if getattr(layer, "fan_in_fan_out", False):
                delta = delta.T
            weight = weight + layer.scaling[a] * delta
        out[base_key] = weight.to(state[base_key].dtype)
    renamed: dict[str, torch.Tensor] = {}
    for key, value in out.items():
        new = key[len("base_model.model.") :] if key.startswith("base_model.model.") else key
        new = new.replace(".base_layer.", ".")
        for a in active:
            new = new.replace(f".modules_to_save.{a}.", ".")
        renamed[new] = value
    return renamed


# --------------------------------------------------------------------------- HF export


@contextlib.contextmanager
def plain_class(model: nn.Module) -> Iterator[nn.Module]:
    """Temporarily give an FSDP2-wrapped model back its own class.

    ``fully_shard`` swaps ``model.__class__`` for a generated ``FSDP<Name>`` subclass;
    ``save_pretrained`` records the class name in ``config.json`` (``architectures``),
    which must stay ``<Name>`` for ``AutoModel*`` to load the export.
    """
    cls = type(model)
    original = cls
    if cls.__name__.startswith("FSDP"):
        for base in cls.__mro__[1:]:
            if base.__name__ == cls.__name__[4:]:
                original = base
                break
    if original is cls:
        yield model
        return
    model.__class__ = original
    try:
        yield model
    finally:
        model.__class__ = cls


def export_hf_model(
    model: nn.Module,
    directory: Path,
    state: dict[str, torch.Tensor],
    tokenizer: Any | None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write ``state`` as a plain HF directory (safetensors + config + tokenizer), rank 0 only.

    PEFT models are exported merged (adapters folded into the base weights), so the
    directory loads with ``AutoModelFor*.from_pretrained`` and no peft. ``dtype``
    casts floating tensors (FSDP keeps fp32 master weights under bf16 training; the
    export is in the training dtype).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = model
    if is_peft(model):
        state = merge_peft_state_dict(model, state)
        target = model.get_base_model()
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    state = {k: v.contiguous() for k, v in state.items()}
    with plain_class(target) as plain:
        plain.save_pretrained(str(directory), state_dict=state, safe_serialization=True)
    if dtype is not None:
        # save_pretrained records the live parameters' dtype (fp32 FSDP master weights);
        # config.json must name the dtype the weights were written in.
        cfg_path = directory / "config.json"
        if cfg_path.is_file():
            data = json.loads(cfg_path.read_text())
            data["dtype"] = str(dtype).removeprefix("torch.")
            data.pop("torch_dtype", None)
            cfg_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    weights_default_mode(directory)


def refuse_nonfinite_export(state: dict[str, torch.Tensor] | None, directory: Path) -> None:
    """Raise ``NonFiniteError`` on every process when the gathered ``state`` (rank 0's) holds a NaN or
    an infinity: an exported model is never non-finite (collective: call on every rank)."""
    bad = export_nonfinite(state)
    if bad is not None:
        raise NonFiniteError("parameter", f"{bad}; the model was not written to {directory}.")


def optimizer_settings(optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """This run's optimizer and schedule settings, taken before a checkpoint's state is loaded over them."""
    return {
        "groups": [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
        "base_lrs": list(scheduler.base_lrs),
        "lambdas": [dict(vars(fn)) if hasattr(fn, "__dict__") else None for fn in scheduler.lr_lambdas],
    }


def reapply_optimizer_settings(optimizer: Any, scheduler: Any, settings: dict[str, Any]) -> None:
    """After a resume, this run's settings win over the checkpoint's.

    An optimizer's and a LambdaLR's state dicts carry their hyperparameters - the peak lr
    (``base_lrs``, ``initial_lr``), betas, eps, weight decay, and our schedule's total and
    warm-up steps - so a plain load would keep the old run's values whatever the new flags
    say. Only the moments, step counts and the scheduler's position are the checkpoint's;
    the lr of the resumed step is recomputed from the new settings at that position
    (identical to the saved one when nothing changed, so resume stays bit-exact).
    """
    groups = optimizer.param_groups
    if len(groups) != len(settings["groups"]) or len(scheduler.lr_lambdas) != len(settings["lambdas"]):
        return
    for group, fresh in zip(groups, settings["groups"]):
        group.update({k: v for k, v in fresh.items() if k not in ("lr", "initial_lr")})
    for fn, fresh in zip(scheduler.lr_lambdas, settings["lambdas"]):
        if fresh is not None:
            vars(fn).update(fresh)
    scheduler.base_lrs = list(settings["base_lrs"])
    for group, base, fn in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["initial_lr"] = base
        group["lr"] = base * fn(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in groups]


def export_peft_adapter(
    model: nn.Module,
    directory: Path,
    state: dict[str, torch.Tensor],
    tokenizer: Any | None,
    dtype: torch.dtype | None = None,
) -> None:
    """Write a PEFT model's adapter as OpenRLHF saves a LoRA run (rank 0 only).

    ``directory`` gets ``adapter_config.json`` + ``adapter_model.safetensors`` (from ``state``,
    the gathered full state dict of the live model, so sharded engines work too), the base
    model's ``config.json`` (with whatever the run stored in it, e.g. reward statistics) and the
    tokenizer - no merged weights: ``repulse lora-merge`` (OpenRLHF's ``lora_combiner``) folds the
    adapter into the base, and ``AutoModelFor*.from_pretrained(directory)`` applies it to the base
    named in ``adapter_config.json``. (Merged weights beside the adapter would make
    ``from_pretrained`` apply the adapter twice.) ``dtype`` casts floating tensors, as
    :func:`export_hf_model` does.
    """
    if not is_peft(model):
        raise ValueError("export_peft_adapter needs a peft model")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    with plain_class(model) as plain:
        plain.save_pretrained(str(directory), state_dict=state, safe_serialization=True)
    config = model.get_base_model().config
    config.save_pretrained(str(directory))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def grad_norm_value(norm: torch.Tensor | float) -> float:
    """A python float of a (possibly DTensor) total norm."""
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def clipped_step(module: nn.Module, optimizer: Any, scheduler: Any, max_norm: float) -> dict[str, float]:
    """Clip by global norm, then optimizer and scheduler step - unless the norm is not finite.

    A NaN or infinite norm (a non-finite loss, or an update that has already blown the weights
    up) means this update would write NaN into every weight it touches: the gradients are
    dropped instead, the optimizer and scheduler do not step, and the result says
    ``update_skipped`` (the run's nan policy then stops or counts; ``repulse.run.finite``).
    The norm is global (all ranks' gradients), so every process decides the same.
    Returns the pre-clip norm (and ``update_skipped`` when dropped).
    """
    params = trainable_parameters(module)
    norm = grad_norm_value(torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf")))
    out = {"grad_norm": norm}
    if math.isfinite(norm):
        optimizer.step()
        scheduler.step()
    else:
        out["update_skipped"] = 1.0
    optimizer.zero_grad(set_to_none=True)
    return out
