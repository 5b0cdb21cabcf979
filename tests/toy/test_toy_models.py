"""The toy models: sizes, HF reload (causal LM and reward head), and seeded initialisation."""

from __future__ import annotations

import pytest
import torch

from repulse.toy import build_model
from repulse.toy.models import count_parameters


def _batch(path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    return tok, tok(["This man is a doctor.", "what comes after three?"], padding=True, return_tensors="pt")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_causal_lm_reloads_and_saves_with_identical_logits(toy, arch, tmp_path):
    from transformers import AutoModelForCausalLM

    path = getattr(toy, arch)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    assert type(model).__name__ == {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}[arch]
    assert 1_000_000 <= count_parameters(model) <= 5_000_000
    tok, batch = _batch(path)
    assert model.config.vocab_size == len(tok)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(model.config, key) == getattr(tok, key) == getattr(model.generation_config, key)
    assert (path / "model.safetensors").is_file()
    with torch.no_grad():
        logits = model(**batch).logits
        model.save_pretrained(tmp_path)
        again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()(**batch).logits
    assert logits.shape == (*batch["input_ids"].shape, len(tok))
    assert torch.equal(logits, again)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_loads_as_a_one_label_reward_model(toy, arch):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(getattr(toy, arch), num_labels=1).eval()
    _, batch = _batch(getattr(toy, arch))
    with torch.no_grad():
        scores = model(**batch).logits
    assert scores.shape == (2, 1) and torch.isfinite(scores).all()


def test_same_seed_same_weights_and_global_rng_untouched(toy, tmp_path):
    from safetensors.torch import load_file

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    build_model(tmp_path / "again", toy.tokenizer, "llama", seed=0)
    assert torch.equal(torch.rand(3), expected_next)
    build_model(tmp_path / "other", toy.tokenizer, "llama", seed=1)
    ref = load_file(toy.llama / "model.safetensors")
    again = load_file(tmp_path / "again" / "model.safetensors")
    other = load_file(tmp_path / "other" / "model.safetensors")
    assert ref.keys() == again.keys()
    assert all(torch.equal(ref[k], again[k]) for k in ref)
    assert not torch.equal(ref["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


def test_size_knobs_and_unknown_arch(toy, tmp_path):
    from transformers import AutoConfig

    build_model(tmp_path / "small", toy.tokenizer, "gpt2", hidden_size=32, num_layers=1)
    cfg = AutoConfig.from_pretrained(tmp_path / "small")
    assert (cfg.n_embd, cfg.n_layer) == (32, 1)
    with pytest.raises(ValueError, match="unknown toy architecture"):
        build_model(tmp_path / "x", toy.tokenizer, "mamba")
