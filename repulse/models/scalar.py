"""Scores and per-token values from sequence-scalar models (reward models, critics).

A scalar model is a stock ``AutoModelForSequenceClassification`` with one label, whose
linear head ``score`` runs over every position. transformers pools it at "the rightmost
token that is not ``pad_token_id``"; we pool at the rightmost position whose
``attention_mask`` is 1. The two agree, for left and right padding, whenever the pad id
never occurs inside the text (a tokenizer whose pad token is its eos token breaks this:
transformers then scores the token before a trailing eos). Using the mask makes our
scores independent of the pad id and of how much padding a batch happens to need.

Position ids default to ``cumsum(attention_mask) - 1`` (as transformers' ``generate``
does), so a sequence gets the same positions whatever its padding. For right-padded
batches this is exactly what a plain transformers forward uses; for left-padded batches
rotary models (Llama, Qwen, ...) agree with it up to float rounding, while absolute-position
models (GPT-2) only agree with us, which is the padding-invariant answer.

Reward normalisation statistics live in the model config (``repulse_reward_mean`` /
``repulse_reward_std``), and so does the input format a reward model was trained on
(``repulse_reward_format``), so they travel with the saved model and survive transformers
round trips.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from repulse.errors import UserError
from repulse.models.positions import (
    check_not_packed,
    last_token_index,
    model_attention_mask,
    positions_from_mask,
)

HEAD_NAME = "score"
MEAN_KEY = "repulse_reward_mean"
STD_KEY = "repulse_reward_std"
FORMAT_KEY = "repulse_reward_format"


def head_name(model: nn.Module) -> str:
    """The attribute name of a sequence-classification model's scalar head (always ``score``)."""
    if isinstance(getattr(model, HEAD_NAME, None), nn.Module):
        return HEAD_NAME
    raise UserError(
        f"{type(model).__name__} has no linear '{HEAD_NAME}' head: reward models and critics need an architecture "
        "whose AutoModelForSequenceClassification scores with one (Llama, Qwen, Mistral, Gemma, GPT-2, ...)."
    )


def _find_head(model: nn.Module) -> nn.Module:
    """The ``score`` module inside ``model``, through peft / DDP / FSDP / DeepSpeed wrappers.

    The shortest module path whose last component is ``score`` wins; under peft that is
    the ``ModulesToSaveWrapper``, which forwards to the trained copy.
    """
    best: tuple[int, nn.Module] | None = None
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == HEAD_NAME and (best is None or name.count(".") < best[0]):
            best = (name.count("."), module)
    if best is None:
        head_name(model)  # raises the explanatory UserError
    return best[1]  # type: ignore[index]


def _hf_config(model: nn.Module) -> Any:
    """The config of the outermost transformers model inside ``model`` (or of ``model``)."""
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            return module.config
    config = getattr(model, "config", None)
    if config is None:
        raise TypeError(f"{type(model).__name__} holds no transformers model")
    return config


def _text_config(config: Any) -> Any:
    return config.get_text_config() if hasattr(config, "get_text_config") else config


@contextlib.contextmanager
def _poolable(model: nn.Module, batch_size: int) -> Iterator[None]:
    """transformers refuses batches > 1 without a pad id even though we discard its pooling.

    When the config has none, lend it a harmless one for the duration of the forward.
    """
    cfg = _text_config(_hf_config(model))
    if batch_size == 1 or cfg.pad_token_id is not None:
        yield
        return
    cfg.pad_token_id = 0
    try:
        yield
    finally:
        cfg.pad_token_id = None


def token_values(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """The head's output at every position, ``[B, T]`` in fp32 (the critic's values).

    ``values[:, t]`` is the value of the state "tokens 0..t seen"; aligning it to actions
    is the caller's job (for PPO, action t+1 is taken in state t). The model is called
    whole (its ``score`` output is caught by a forward hook) rather than as backbone +
    head, so engine wrappers that gather parameters in the root forward (FSDP,
    ZeRO-3) keep working. Packed rows: pass ``position_ids`` restarting at 0 per sample
    and no ``attention_mask``.
    """
    if position_ids is None and attention_mask is not None:
        position_ids = positions_from_mask(attention_mask)
    elif position_ids is not None and attention_mask is not None:
        check_not_packed(position_ids, attention_mask)
    attention_mask = model_attention_mask(model, attention_mask)
    head = _find_head(model)
    outputs: list[torch.Tensor] = []
    handle = head.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    try:
        with _poolable(model, input_ids.shape[0]):
            model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            )
    finally:
        handle.remove()
    if not outputs:
        raise RuntimeError("the scalar head was not called in the forward pass")
    return outputs[-1].squeeze(-1).float()


def sequence_scores(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """One score per sequence, ``[B]`` in fp32: the head at the last attended token.

    Equals ``AutoModelForSequenceClassification``'s pooled logit for the same batch
    (left or right padded) when the pad id does not occur in the text; see the module
    docstring. Without a mask every row is taken to end at the last position.
    """
    values = token_values(model, input_ids, attention_mask, position_ids)
    if attention_mask is None:
        return values[:, -1]
    idx = last_token_index(attention_mask).to(values.device)
    return values.gather(1, idx[:, None]).squeeze(1)


# --------------------------------------------------------------------------- reward statistics


def set_reward_stats(model: nn.Module | Any, mean: float, std: float) -> None:
    """Store the reward normalisation statistics in the model config (saved with it)."""
    if not std > 0:
        raise ValueError(f"reward std must be > 0, got {std}")
    config = _hf_config(model) if isinstance(model, nn.Module) else model
    setattr(config, MEAN_KEY, float(mean))
    setattr(config, STD_KEY, float(std))


def get_reward_stats(config: Any) -> tuple[float, float]:
    """``(mean, std)`` stored by ``set_reward_stats``; ``(0.0, 1.0)`` (no-op) when absent.

    Accepts a config, a config dict (``config.json``), or a model. OpenRLHF-style
    ``mean`` / ``std`` keys are read too, so their normalised RMs keep their statistics.
    """
    if isinstance(config, nn.Module):
        config = _hf_config(config)
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    mean, std = get(MEAN_KEY), get(STD_KEY)
    if mean is None or std is None:
        mean, std = get("mean"), get("std")
    if mean is None or std is None:
        return 0.0, 1.0
    return float(mean), float(std)


def set_reward_format(model: nn.Module | Any, fmt: dict[str, Any]) -> None:
    """Store the reward model's input format (``repulse.data.preference.reward_format``) in its config."""
    config = _hf_config(model) if isinstance(model, nn.Module) else model
    setattr(config, FORMAT_KEY, dict(fmt))


def get_reward_format(config: Any) -> dict[str, Any] | None:
    """The input format stored by ``set_reward_format``; None for a model trained elsewhere."""
    if isinstance(config, nn.Module):
        config = _hf_config(config)
    fmt = config.get(FORMAT_KEY) if isinstance(config, dict) else getattr(config, FORMAT_KEY, None)
    return fmt


# --------------------------------------------------------------------------- legacy heads


def _read_checkpoint_tensors(path: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """Read a few named tensors from a local HF checkpoint (safetensors or .bin, sharded or not)."""
    found: dict[str, torch.Tensor] = {}
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = path / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            files = {weight_map[n] for n in names if n in weight_map}
        elif (path / single).is_file():
            files = {single}
        else:
            continue
        for file in sorted(files):
            if file.endswith(".safetensors"):
                from safetensors import safe_open

                with safe_open(str(path / file), framework="pt") as f:
                    for n in names:
                        if n in f.keys():
                            found[n] = f.get_tensor(n)
            else:
                state = torch.load(path / file, map_location="cpu", weights_only=True)
                found.update({n: state[n] for n in names if n in state})
        if found:
            break
    return found


def attach_legacy_head(model: nn.Module, path: str, prefix: str) -> bool:
    """Copy ``<prefix>.weight`` (and bias) from a local checkpoint into the native head.

    Reads OpenRLHF-style reward models/critics whose head is e.g. ``value_head``.
    Returns False when the checkpoint has no such tensor.
    """
    local = Path(path)
    if not local.is_dir():
        return False
    tensors = _read_checkpoint_tensors(local, [f"{prefix}.weight", f"{prefix}.bias"])
    weight = tensors.get(f"{prefix}.weight")
    if weight is None:
        return False
    head = getattr(model, head_name(model))
    bias = tensors.get(f"{prefix}.bias")
    if tuple(weight.shape) != tuple(head.weight.shape) or (bias is not None and head.bias is None):
        raise UserError(
            f"{path}: '{prefix}' has shape {tuple(weight.shape)}{' with a bias' if bias is not None else ''}, "
            f"but this model's head is {tuple(head.weight.shape)}; is --model.value_head_prefix right?"
        )
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight.dtype))
        if bias is not None:
            head.bias.copy_(bias.to(head.bias.dtype))
        elif head.bias is not None:
            head.bias.zero_()
    return True
