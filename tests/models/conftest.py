"""Self-contained tiny fixtures for the models floor: a word-level tokenizer and a 2-layer Llama.

Built here (not with ``repulse.toy``) so these tests depend on nothing but transformers.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import repulse.errors

VOCAB = 128
PAD, UNK, BOS, EOS = 0, 1, 2, 3


def tiny_llama_config(**overrides):
    from transformers import LlamaConfig

    kwargs = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def build_tokenizer(with_pad: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    vocab.update({f"w{i}": i for i in range(len(specials), VOCAB)})
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    kwargs = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
    if with_pad:
        kwargs["pad_token"] = "<pad>"
    return PreTrainedTokenizerFast(tokenizer_object=core, **kwargs)


@pytest.fixture(scope="session")
def lm_dir(tmp_path_factory) -> Path:
    """A tiny random Llama causal LM saved as an HF directory, with its tokenizer."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_lm")
    LlamaForCausalLM(tiny_llama_config()).save_pretrained(out)
    build_tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def nopad_tokenizer_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("nopad_tok")
    build_tokenizer(with_pad=False).save_pretrained(out)
    return out


@pytest.fixture
def fresh_warnings(monkeypatch) -> None:
    """Forget which one-time warnings were printed, so a test can see its own."""
    monkeypatch.setattr(repulse.errors, "_warned", set())


def random_batch(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Token ids that avoid the special tokens (so the pad id never occurs inside a text)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, VOCAB, (batch, length), generator=g)


def pad_rows(rows: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad 1-D id tensors to one batch with PAD on ``side``; returns ids and attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if side == "right":
            ids[i, : len(r)], mask[i, : len(r)] = r, 1
        else:
            ids[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
    return ids, mask


@pytest.fixture(scope="session")
def tiny():
    """The helpers above, as a fixture (test modules never import conftest directly)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        config=tiny_llama_config,
        tokenizer=build_tokenizer,
        batch=random_batch,
        pad=pad_rows,
        PAD=PAD,
        EOS=EOS,
        VOCAB=VOCAB,
    )
