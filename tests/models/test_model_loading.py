"""Tokenizer / causal LM loading: dtype, attention fallback, LoRA, QLoRA errors, checkpointing."""

from __future__ import annotations

import pytest
import torch

from repulse.config.sections import LoraSection
from repulse.errors import UserError
from repulse.models.loading import load_causal_lm, load_tokenizer, resolve_attn, resolve_dtype
from repulse.models.logprobs import token_logprobs_from_model


def test_resolve_dtype(fresh_warnings, capsys):
    assert resolve_dtype("fp32", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    assert resolve_dtype(torch.float16, "cpu") == torch.float16
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("fp16", "cpu") == torch.float32
    assert "fp16 needs a CUDA device" in capsys.readouterr().err
    resolve_dtype("fp16", "cpu")
    assert capsys.readouterr().err == ""  # once
    with pytest.raises(UserError, match="--engine.param_dtype"):
        resolve_dtype("fp8", "cpu")


def test_resolve_attn(fresh_warnings, capsys, monkeypatch):
    assert resolve_attn("sdpa") == "sdpa"
    assert resolve_attn("eager", "cpu") == "eager"
    assert resolve_attn("flash_attention_2", "cpu") == "sdpa"
    assert "needs a CUDA device; using sdpa" in capsys.readouterr().err
    assert resolve_attn("kernels-community/flash-attn3", "cpu") == "sdpa"
    with pytest.raises(UserError, match="--engine.attn_implementation"):
        resolve_attn("flash_attn_2")
    # with CUDA but without the package: also sdpa
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert resolve_attn("flash_attention_2", "cuda") == "sdpa"
    assert "needs the package 'flash_attn'" in capsys.readouterr().err


def test_tokenizer_pad_fallback_and_template(lm_dir, nopad_tokenizer_dir, tmp_path):
    tok = load_tokenizer(str(lm_dir), padding_side="right")
    assert tok.pad_token == "<pad>" and tok.padding_side == "right"
    tok = load_tokenizer(str(nopad_tokenizer_dir))
    assert tok.pad_token == tok.eos_token == "</s>" and tok.padding_side == "left"
    template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    assert load_tokenizer(str(lm_dir), chat_template=template).chat_template == template
    f = tmp_path / "t.jinja"
    f.write_text(template)
    assert load_tokenizer(str(lm_dir), chat_template=str(f)).chat_template == template


def test_missing_paths_are_user_errors(tmp_path):
    missing = str(tmp_path / "no_such_model")
    with pytest.raises(UserError, match="no_such_model: no such directory"):
        load_tokenizer(missing)
    with pytest.raises(UserError, match="no_such_model"):
        load_causal_lm(missing)
    with pytest.raises(UserError, match="has no config.json"):
        load_causal_lm(str(tmp_path))


def test_load_causal_lm_trainable_and_frozen(lm_dir):
    model = load_causal_lm(str(lm_dir))
    assert model.training and not model.config.use_cache
    assert all(p.requires_grad for p in model.parameters())
    assert next(model.parameters()).dtype == torch.float32
    ref = load_causal_lm(str(lm_dir), dtype="bf16", trainable=False)
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    assert next(ref.parameters()).dtype == torch.bfloat16


def test_lora_trains_only_adapters(lm_dir):
    model = load_causal_lm(str(lm_dir), lora=LoraSection(rank=4, alpha=8, dropout=0.0))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # all-linear: every attention and MLP projection, never the LM head
    assert any("q_proj" in n for n in trainable) and any("down_proj" in n for n in trainable)
    assert not any("lm_head" in n for n in trainable)
    named = load_causal_lm(str(lm_dir), lora=LoraSection(rank=2, target_modules=["q_proj", "v_proj"]))
    names = {n for n, p in named.named_parameters() if p.requires_grad}
    assert names and all(("q_proj" in n or "v_proj" in n) for n in names)


def test_qlora_needs_cuda(lm_dir):
    with pytest.raises(UserError) as err:
        load_causal_lm(str(lm_dir), load_in_4bit=True, lora=LoraSection(rank=4))
    msg = str(err.value)
    assert "--model.load_in_4bit" in msg and "repulse[qlora]" in msg and "\n" not in msg


@pytest.mark.parametrize("reentrant, lora", [(False, False), (True, False), (True, True), (False, True)])
def test_gradient_checkpointing_backward(lm_dir, tiny, reentrant, lora):
    """With checkpointing on (reentrant or not, with or without LoRA) the decoder layers are
    recomputed in backward and every trainable parameter gets the gradient it gets without
    checkpointing (same seed, so the same LoRA init; 1e-6)."""
    lora_cfg = LoraSection(rank=4) if lora else None
    ids, mask = tiny.pad([tiny.batch(1, 8, seed=1)[0], tiny.batch(1, 5, seed=2)[0]], "right")
    grads = {}
    for ckpt in (True, False):
        torch.manual_seed(0)
        model = load_causal_lm(str(lm_dir), gradient_checkpointing=ckpt, reentrant=reentrant, lora=lora_cfg)
        base = model.get_base_model() if lora else model
        assert base.model.gradient_checkpointing is ckpt
        calls = []
        base.model.layers[0].mlp.register_forward_pre_hook(lambda *_, calls=calls: calls.append(1))
        logp = token_logprobs_from_model(model, ids, mask)
        (-(logp * mask[:, 1:]).sum()).backward()
        assert len(calls) == (2 if ckpt else 1)  # checkpointed: run again in backward
        grads[ckpt] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads[True].keys() == grads[False].keys() and grads[True]
    assert any(g.abs().sum() > 0 for g in grads[False].values())
    for name, g in grads[False].items():
        assert grads[True][name] is not None, f"{name}: no gradient through the checkpointed layers"
        torch.testing.assert_close(grads[True][name], g, atol=1e-6, rtol=1e-5, msg=name)


def test_importing_the_models_floor_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, repulse.models; print(sorted(m for m in ('peft', 'bitsandbytes') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
