"""LoRA / QLoRA through peft.

Kept apart from ``loading`` so the peft and bitsandbytes specifics sit in one small place;
peft is imported only when an adapter is actually requested.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from repulse.errors import UserError


def lora_target_modules(target_modules: list[str] | str) -> list[str] | str:
    """peft wants the shorthand ``all-linear`` as a bare string, names as a list."""
    if isinstance(target_modules, str):
        return target_modules
    names = list(target_modules)
    if len(names) == 1 and names[0].lower() == "all-linear":
        return "all-linear"
    if any(n.lower() == "all-linear" for n in names):
        raise UserError("--model.lora.target_modules: 'all-linear' cannot be combined with module names.")
    return names


def check_4bit_possible(device: torch.device) -> None:
    """QLoRA needs a CUDA device and bitsandbytes; say so in one line before loading anything."""
    if device.type != "cuda" or not torch.cuda.is_available():
        raise UserError(
            "--model.load_in_4bit (QLoRA) needs a CUDA device and bitsandbytes "
            "(pip install 'repulse[qlora]'); drop the flag to train on CPU."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(
            "--model.load_in_4bit (QLoRA) needs the optional package 'bitsandbytes': pip install 'repulse[qlora]'."
        )


def four_bit_config(compute_dtype: torch.dtype) -> Any:
    """NF4 with double quantisation: the QLoRA paper's recipe."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def apply_lora(
    model: torch.nn.Module,
    lora: Any,
    *,
    task_type: str = "CAUSAL_LM",
    quantized: bool = False,
    gradient_checkpointing: bool = False,
    reentrant: bool = False,
) -> torch.nn.Module:
    """Wrap ``model`` with LoRA adapters from a ``LoraSection``; only the adapters train.

    With ``task_type="SEQ_CLS"`` peft also trains (and saves) the scalar head, as a
    ``modules_to_save`` copy, since a fresh head must learn. For 4-bit bases, peft's
    ``prepare_model_for_kbit_training`` upcasts norms and sets up checkpointing first.
    """
    import peft

    if quantized:
        peft.prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": bool(reentrant)},
        )
    config = peft.LoraConfig(
        r=int(lora.rank),
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_target_modules(lora.target_modules),
        task_type=task_type,
        bias="none",
    )
    return peft.get_peft_model(model, config)
