"""Load tokenizers, causal LMs and scalar (reward / value) models from HF directories.

Everything a trainer needs to turn ``--model.*`` / ``--engine.*`` flags into a ready
``nn.Module`` lives here, so that dtype, attention, checkpointing and LoRA choices are
made once, the same way for every method. Bad input (a wrong path, an impossible
dtype/attention/QLoRA combination) raises ``UserError`` naming the flag; a missing
optional accelerator (CUDA, flash-attn) falls back to a working default with one warning.

Scalar models are plain ``AutoModelForSequenceClassification(num_labels=1)`` models, so
what we save is what users load back with transformers alone. Their helpers
(``sequence_scores``, ``token_values``, reward statistics) live in ``repulse.models.scalar``
and are re-exported here.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import torch

from repulse.config.paths import model_path_problem
from repulse.errors import UserError, warn_once
from repulse.models.files import weights_default_mode
from repulse.models.lora import apply_lora, check_4bit_possible, four_bit_config
from repulse.models.scalar import (
    attach_legacy_head,
    get_reward_stats,
    head_name,
    sequence_scores,
    set_reward_stats,
    token_values,
)

__all__ = [
    "enable_gradient_checkpointing",
    "get_reward_stats",
    "load_causal_lm",
    "load_scalar_model",
    "load_tokenizer",
    "merge_lora",
    "resolve_attn",
    "resolve_dtype",
    "sequence_scores",
    "set_reward_stats",
    "token_values",
]

# --------------------------------------------------------------------------- dtype / attention

_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}


def _cuda(device: str | torch.device | None) -> bool:
    """True when ``device`` is a CUDA device (or, with no device given, when CUDA exists)."""
    if device is None:
        return torch.cuda.is_available()
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


def resolve_dtype(name: str | torch.dtype, device: str | torch.device | None = None) -> torch.dtype:
    """Map ``--engine.param_dtype`` onto a torch dtype for weights on ``device``.

    ``auto`` is bf16 on a CUDA device that supports it and fp32 elsewhere. ``fp16`` off
    CUDA falls back to fp32 with one warning: CPU fp16 kernels are slow or missing and
    fp16 training needs loss scaling that only makes sense on GPUs. ``bf16`` on CPU is
    honoured (it runs, slowly, and halves memory), because the user asked for it.
    """
    if isinstance(name, torch.dtype):
        return name
    key = str(name).strip().lower()
    if key == "auto":
        if _cuda(device):
            if torch.cuda.is_bf16_supported():
                return torch.bfloat16
            warn_once("dtype:auto:nobf16", "this GPU has no bf16; --engine.param_dtype auto uses fp32.")
        return torch.float32
    if key not in _DTYPES:
        raise UserError(f"--engine.param_dtype {name!r} is not a dtype: use auto | bf16 | fp16 | fp32.")
    dtype = _DTYPES[key]
    if dtype == torch.float16 and not _cuda(device):
        warn_once(
            "dtype:fp16:cpu",
            "--engine.param_dtype fp16 needs a CUDA device; using fp32 on CPU (bf16 also works on CPU).",
        )
        return torch.float32
    return dtype


_PLAIN_ATTN = ("eager", "sdpa", "flex_attention")
# attention implementation -> the importable package it needs (besides CUDA)
_CUDA_ATTN = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}
_ATTN_CHOICES = (
    "eager | sdpa | flex_attention | flash_attention_2 | flash_attention_3 | kernels-<org>/<kernel>"
)


def _is_hub_kernel(name: str) -> bool:
    """Transformers also accepts Hub kernels, e.g. ``kernels-community/flash-attn3``."""
    return name.startswith("kernels-") or "/" in name


def resolve_attn(
    name: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> str:
    """Map ``--engine.attn_implementation`` onto a name transformers accepts here.

    Flash attention and Hub kernels need CUDA, their package and half-precision weights;
    without any of these we warn once and use ``sdpa``, so one recipe runs both on a
    laptop and on a GPU node. Unknown names are a ``UserError`` at load time.
    """
    key = str(name).strip()
    if key in _PLAIN_ATTN:
        return key
    if key not in _CUDA_ATTN and not _is_hub_kernel(key):
        raise UserError(f"--engine.attn_implementation {name!r} is not known: use {_ATTN_CHOICES}.")
    flag = f"--engine.attn_implementation {key}"
    if not _cuda(device):
        warn_once(f"attn:{key}:nocuda", f"{flag} needs a CUDA device; using sdpa.")
        return "sdpa"
    package = _CUDA_ATTN.get(key, "kernels")
    if importlib.util.find_spec(package) is None:
        hint = "pip install 'repulse[flash]'" if package == "flash_attn" else f"pip install {package}"
        warn_once(f"attn:{key}:nopkg", f"{flag} needs the package '{package}' ({hint}); using sdpa.")
        return "sdpa"
    if dtype == torch.float32:
        warn_once(f"attn:{key}:fp32", f"{flag} needs bf16/fp16 weights (--engine.param_dtype); using sdpa.")
        return "sdpa"
    return key


# --------------------------------------------------------------------------- tokenizer


def _load_error(path: str, what: str, exc: Exception) -> UserError:
    """Turn transformers' long OSError/ValueError into one line that says what to fix."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    first = lines[0] if lines else type(exc).__name__
    if what == "tokenizer" and any("sentencepiece or tiktoken" in ln for ln in lines):
        first = "its tokenizer files need the package sentencepiece or tiktoken to be read"
    if Path(path).is_dir():
        return UserError(f"{path} is a directory but no {what} could be loaded from it ({first}).")
    return UserError(
        f"cannot load the {what} '{path}': it is neither a local directory nor a model reachable on the "
        f"Hugging Face Hub (check the path, or the network / HF_HUB_OFFLINE). ({first})"
    )


def _pretrained(loader: Any, path: str, what: str, **kwargs: Any) -> Any:
    # offline first: a local-looking path that is not a loadable directory never reaches the Hub
    problem = model_path_problem(path, need_model=what == "model", need_tokenizer=what == "tokenizer")
    if problem:
        raise UserError(f"cannot load the {what}: {problem}.")
    try:
        return loader.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        # A local dir raising ValueError is mostly an unsupported option or a bug: keep its traceback,
        # except for transformers' "Unrecognized model / configuration" (a broken config.json) and
        # a tokenizer it cannot build (e.g. "need sentencepiece or tiktoken" to convert a slow one).
        unreadable = "Unrecognized" in str(exc) or what == "tokenizer"
        if isinstance(exc, ValueError) and Path(path).is_dir() and not unreadable:
            raise
        raise _load_error(path, what, exc) from None


def load_tokenizer(
    path: str,
    chat_template: str | None = None,
    use_fast: bool = True,
    padding_side: str = "left",
) -> Any:
    """Load a tokenizer and make it ready for batching.

    A pad token is required by every collate function; when the tokenizer has none we
    reuse eos (then unk), never add a token (that would change the vocabulary and the
    embedding matrix). ``chat_template`` (``--data.tokenizer_chat_template``) replaces the
    tokenizer's template: a jinja string, or a path to a file holding one.
    ``padding_side``: generation and RL batches want ``left``; training batches ``right``.

    ``use_fast=False`` (``--data.disable_fast_tokenizer``) asks for the slow, pure-Python
    tokenizer. Since transformers 5 ``AutoTokenizer`` ignores ``use_fast``: slow tokenizers remain
    only for the families that have no fast form (ByT5, CANINE, ...), which load as such. When
    the model's tokenizer exists only in its fast form (Llama, GPT-2, Qwen, ... and the toy's
    byte-level BPE), asking for a slow one is refused rather than silently answered with the
    fast one.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    from transformers import AutoTokenizer

    tok = _pretrained(AutoTokenizer, path, "tokenizer", use_fast=use_fast)
    if not use_fast and getattr(tok, "is_fast", False):
        import transformers

        raise UserError(
            f"--data.disable_fast_tokenizer asks for a slow (pure-Python) tokenizer, but the tokenizer of {path} "
            f"({type(tok).__name__}) has only a fast form in transformers {transformers.__version__}: since "
            "transformers 5, slow tokenizers exist only for the families that have no fast one. Drop the flag to "
            "use the fast tokenizer."
        )
    if chat_template:
        template_file = Path(chat_template)
        if len(chat_template) < 4096 and "{" not in chat_template and template_file.is_file():
            chat_template = template_file.read_text()
        tok.chat_template = chat_template
    if tok.pad_token is None:
        fallback = tok.eos_token or tok.unk_token
        if fallback is None:
            raise UserError(
                f"the tokenizer at {path} has no pad, eos or unk token to pad batches with; add a pad token to it."
            )
        tok.pad_token = fallback
    tok.padding_side = padding_side
    return tok


# --------------------------------------------------------------------------- models


def _model_kwargs(
    dtype: str | torch.dtype, attn: str, load_in_4bit: bool, device: torch.device, lora: Any, trainable: bool
) -> dict[str, Any]:
    """from_pretrained arguments; every flag combination is checked here, before any loading."""
    torch_dtype = resolve_dtype(dtype, device)
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype,
        "attn_implementation": resolve_attn(attn, device, torch_dtype),
    }
    if load_in_4bit:
        check_4bit_possible(device)
        if trainable and not (lora is not None and lora.rank > 0):
            raise UserError("--model.load_in_4bit trains LoRA adapters only: set --model.lora.rank > 0.")
        kwargs["quantization_config"] = four_bit_config(torch_dtype)
        kwargs["device_map"] = {"": device.index if device.index is not None else torch.cuda.current_device()}
    return kwargs


def _finish(
    model: torch.nn.Module,
    *,
    task_type: str,
    gradient_checkpointing: bool,
    reentrant: bool,
    lora: Any,
    load_in_4bit: bool,
    device: torch.device,
    trainable: bool,
) -> torch.nn.Module:
    """Shared tail of both loaders: training flags, LoRA, placement."""
    if not load_in_4bit:
        model.to(device)
    if not trainable:
        model.requires_grad_(False)
        model.eval()
        return model
    # A KV cache is useless in training and, worse, switches off transformers' detection
    # of packed sequences from position_ids.
    model.config.use_cache = False
    lora_on = lora is not None and lora.rank > 0
    if gradient_checkpointing and not load_in_4bit:
        enable_gradient_checkpointing(model, reentrant)
    if lora_on:
        model = apply_lora(
            model,
            lora,
            task_type=task_type,
            quantized=load_in_4bit,
            gradient_checkpointing=gradient_checkpointing,
            reentrant=reentrant,
        )
    model.train()
    return model


def enable_gradient_checkpointing(model: torch.nn.Module, reentrant: bool = False) -> None:
    """Recompute each decoder layer's activations in backward.

    Recent transformers 5.x renamed the method ``activation_checkpointing_enable`` (the
    old name warns); earlier 5.x releases only have ``gradient_checkpointing_enable``. Input embeddings are made
    to require grad so reentrant checkpointing works with frozen embeddings (LoRA).
    """
    kwargs = {"use_reentrant": bool(reentrant)}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # earlier transformers 5.x
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if reentrant and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Set every dropout probability of ``model`` to 0 (its saved config keeps the original rates).

    Why: RL compares log-probs of the same tokens from different forwards (old vs new policy
    for PPO ratios, p vs q for importance weights, policy vs reference for KL). With dropout
    on in the training forward those differ by dropout noise, so the first update of a fresh
    rollout would not see a ratio of exactly 1 and the weights would be noisy. Covers
    ``nn.Dropout`` modules and the float ``attention_dropout`` / ``dropout`` attributes that
    attention layers pass to their kernels.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name in ("attention_dropout", "dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
    return model


def load_causal_lm(
    path: str,
    *,
    dtype: str | torch.dtype = "fp32",
    attn: str = "sdpa",
    gradient_checkpointing: bool = False,
    reentrant: bool = False,
    lora: Any = None,
    load_in_4bit: bool = False,
    device: str | torch.device = "cpu",
    trainable: bool = True,
) -> torch.nn.Module:
    """Load a causal LM (policy, reference, SFT/DPO model) ready for training or inference.

    ``lora`` is a ``LoraSection``; with ``rank > 0`` the returned model is a
    ``peft.PeftModel`` whose only trainable parameters are the adapters
    (``save_pretrained`` then writes the adapter; ``merge_lora`` folds it back).
    ``load_in_4bit`` (QLoRA) needs CUDA, bitsandbytes and LoRA. ``trainable=False``
    (reference / teacher models) freezes every weight and puts the model in eval mode;
    ``lora`` and ``gradient_checkpointing`` are then ignored.
    """
    from transformers import AutoModelForCausalLM

    device = torch.device(device)
    kwargs = _model_kwargs(dtype, attn, load_in_4bit, device, lora, trainable)
    model = _pretrained(AutoModelForCausalLM, str(path), "model", **kwargs)
    return _finish(
        model,
        task_type="CAUSAL_LM",
        gradient_checkpointing=gradient_checkpointing,
        reentrant=reentrant,
        lora=lora,
        load_in_4bit=load_in_4bit,
        device=device,
        trainable=trainable,
    )


def load_scalar_model(
    path: str,
    *,
    value_head_prefix: str = "score",
    init_from_lm: bool = True,
    pad_token_id: int | None = None,
    dtype: str | torch.dtype = "fp32",
    attn: str = "sdpa",
    gradient_checkpointing: bool = False,
    reentrant: bool = False,
    lora: Any = None,
    load_in_4bit: bool = False,
    device: str | torch.device = "cpu",
    trainable: bool = True,
) -> torch.nn.Module:
    """Load a sequence-scalar model (reward model, critic): ``AutoModelForSequenceClassification``, one label.

    Being a stock transformers class is the point: a saved RM reloads with
    ``AutoModelForSequenceClassification.from_pretrained(out, num_labels=1)`` and gives
    the same scores as ``sequence_scores`` gave during training.

    The head keeps the architecture's own attribute name (``score`` for Llama, Qwen,
    Mistral, GPT-2, ...) and is always saved under it. ``value_head_prefix``
    (``--model.value_head_prefix``) only matters when reading: if the checkpoint has no
    native head but holds ``<prefix>.weight`` (OpenRLHF-style RMs, e.g. ``value_head``),
    that tensor is copied into the native head. With neither present, the head is
    freshly initialised when ``init_from_lm`` (a new RM / critic started from an LM),
    else it is an error (a reward model without a trained head scores noise).

    ``pad_token_id`` (the tokenizer's) is written into the config: transformers' own
    pooling needs it for batches of more than one sequence.
    """
    from transformers import AutoModelForSequenceClassification

    device = torch.device(device)
    kwargs = _model_kwargs(dtype, attn, load_in_4bit, device, lora, trainable)
    model, info = _pretrained(
        AutoModelForSequenceClassification,
        str(path),
        "model",
        num_labels=1,
        output_loading_info=True,
        **kwargs,
    )
    native = head_name(model)
    # a dict in every 5.x release seen; read defensively in case it becomes an object
    missing = set(
        info.get("missing_keys", ()) if isinstance(info, dict) else getattr(info, "missing_keys", ())
    )
    if any(k == native or k.startswith(native + ".") for k in missing):
        if value_head_prefix != native and attach_legacy_head(model, str(path), value_head_prefix):
            pass
        elif not init_from_lm:
            raise UserError(
                f"{path} has no trained scalar head ('{native}.weight' or '{value_head_prefix}.weight'): "
                "is it a reward model? Check --model.value_head_prefix and the model path."
            )
    elif value_head_prefix != native:
        warn_once(
            f"value_head_prefix:{value_head_prefix}",
            f"--model.value_head_prefix {value_head_prefix}: the head of this architecture is '{native}' and is "
            f"saved under that name so AutoModelForSequenceClassification loads it; '{value_head_prefix}' is only "
            "used to read OpenRLHF-style checkpoints.",
        )
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
        if cfg is not model.config:
            cfg.pad_token_id = pad_token_id
    pad = cfg.pad_token_id
    eos = cfg.eos_token_id
    if pad is not None and (pad == eos or (isinstance(eos, (list, tuple)) and pad in eos)):
        warn_once(
            "scalar:pad_is_eos",
            "the pad token is the eos token: transformers' AutoModelForSequenceClassification scores the last "
            "token that is not pad, i.e. one token before a trailing eos, while repulse scores the last "
            "attended token. Give the tokenizer a distinct pad token for identical scores outside repulse.",
        )
    return _finish(
        model,
        task_type="SEQ_CLS",
        gradient_checkpointing=gradient_checkpointing,
        reentrant=reentrant,
        lora=lora,
        load_in_4bit=load_in_4bit,
        device=device,
        trainable=trainable,
    )


# --------------------------------------------------------------------------- LoRA merge


def merge_lora(
    base_path: str,
    lora_path: str,
    out_path: str,
    is_rm: bool = False,
    dtype: str | torch.dtype = "fp32",
) -> Path:
    """Fold a saved LoRA adapter into its base model and write a plain HF directory.

    ``is_rm``: the adapter was trained on a scalar model (RM / critic); its head is in
    the adapter (peft's ``modules_to_save``) and ends up as the native head. Reward
    statistics are carried over when the adapter directory has a ``config.json`` holding
    them. The tokenizer is copied from the adapter directory if it has one, else the base;
    for an RM its pad id goes into the config (transformers' pooling needs one).
    """
    import peft
    from transformers import AutoTokenizer

    if not Path(lora_path, "adapter_config.json").is_file():
        raise UserError(
            f"--lora_path {lora_path}: no adapter_config.json there; is it a LoRA adapter directory?"
        )
    tok_src = lora_path if _has_tokenizer(lora_path) else base_path
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_src)
    except (OSError, ValueError) as exc:
        tokenizer = None
        warn_once("merge:tokenizer", f"no tokenizer saved with the merged model ({exc}).")
    if is_rm:
        pad = tokenizer.pad_token_id if tokenizer is not None else None
        base = load_scalar_model(base_path, dtype=dtype, trainable=False, pad_token_id=pad)
    else:
        base = load_causal_lm(base_path, dtype=dtype, trainable=False)
    merged = peft.PeftModel.from_pretrained(base, lora_path).merge_and_unload()
    if is_rm:
        stats_file = Path(lora_path, "config.json")
        if stats_file.is_file():
            mean, std = get_reward_stats(json.loads(stats_file.read_text()))
            if (mean, std) != (0.0, 1.0):
                set_reward_stats(merged, mean, std)
    out = Path(out_path)
    out.mkdir(parents=True, exist_ok=True)
    merged.config.use_cache = True
    merged.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    weights_default_mode(out)
    return out


def _has_tokenizer(path: str) -> bool:
    return any(
        os.path.isfile(os.path.join(path, name)) for name in ("tokenizer.json", "tokenizer_config.json")
    )
