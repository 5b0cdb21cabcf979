"""Tiny randomly initialised causal LMs (Llama and GPT-2) saved as plain HF directories.

Each directory holds the weights (safetensors), config, generation config and the tokenizer,
so ``AutoModelForCausalLM`` / ``AutoModelForSequenceClassification`` / ``AutoTokenizer`` load
it exactly as they would a Hub model.  Two architectures cover both the Llama path (RoPE,
GQA, untied head, BOS) and the GPT-2 path (learned positions, tied head).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ARCHS = ("llama", "gpt2")


def model_config(arch: str, tokenizer: Any, hidden_size: int = 192, num_layers: int = 3) -> Any:
    """The HF config of a toy model; vocabulary and special ids come from ``tokenizer``."""
    from transformers import GPT2Config, LlamaConfig

    ids = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "llama":
        return LlamaConfig(
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=False,
            **ids,
        )
    if arch == "gpt2":
        return GPT2Config(
            n_embd=hidden_size, n_inner=2 * hidden_size, n_layer=num_layers, n_head=4, n_positions=512, **ids
        )
    raise ValueError(f"unknown toy architecture {arch!r}; choose one of {', '.join(ARCHS)}")


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """``save_pretrained`` draws a progress bar per file; in a build log it is only noise."""
    from transformers.utils import logging

    was_on = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            logging.enable_progress_bar()


def build_model(
    out_dir: Path,
    tokenizer_dir: Path,
    arch: str = "llama",
    seed: int = 0,
    hidden_size: int = 192,
    num_layers: int = 3,
) -> Path:
    """Save a randomly initialised toy causal LM (fixed ``seed``) with its tokenizer into ``out_dir``.

    The global torch RNG is left as it was, so building assets inside a test does not shift
    the random numbers the test draws afterwards.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = model_config(arch, tokenizer, hidden_size, num_layers)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _quiet_progress():
        model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def count_parameters(model: Any) -> int:
    """Distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())


def moe_config(
    tokenizer: Any, hidden_size: int = 64, num_layers: int = 2, num_experts: int = 4, top_k: int = 2
) -> Any:
    """A tiny Mixtral (mixture-of-experts) config: ``num_experts`` experts, ``top_k`` per token."""
    from transformers import MixtralConfig

    return MixtralConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        num_local_experts=num_experts,
        num_experts_per_tok=top_k,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_moe_model(
    out_dir: Path,
    tokenizer_dir: Path,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_experts: int = 4,
    top_k: int = 2,
) -> Path:
    """Save a randomly initialised tiny Mixtral (2 layers, 4 experts, top-2 routing by default)
    with its tokenizer into ``out_dir``: the MoE model of the router auxiliary-loss tests.

    Not part of ``build_all``: only the tests that need a mixture of experts build it.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = moe_config(tokenizer, hidden_size, num_layers, num_experts, top_k)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _quiet_progress():
        model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
