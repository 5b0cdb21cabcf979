"""The local engine in this process: exact resume, HF export (incl. merged LoRA), frozen models."""

from __future__ import annotations

import engine_dist_worker as w
import pytest
import torch

from repulse.config.sections import EngineSection
from repulse.engine import BACKENDS, build_engine, prepare_frozen
from repulse.errors import UserError


@pytest.mark.parametrize("optim", ["adam", "muon"])
def test_local_save_load_continue_is_bit_identical(tmp_path, optim):
    res = w.train("local", optim, ckpt_dir=tmp_path / "ck")
    cont = res["metrics"][w.SAVE_AFTER :]
    assert [m["loss"] for m in res["resumed_metrics"]] == [m["loss"] for m in cont]
    assert [m["grad_norm"] for m in res["resumed_metrics"]] == [m["grad_norm"] for m in cont]
    assert [m["lr"] for m in res["resumed_metrics"]] == [m["lr"] for m in cont]
    for k, v in res["state"].items():
        assert torch.equal(res["resumed_state"][k], v), k
    assert res["metrics"][-1]["loss"] < res["metrics"][0]["loss"]


def test_local_export_hf_loads_with_automodel(tmp_path):
    from transformers import AutoModelForCausalLM

    res = w.train("local", "adam", ckpt_dir=tmp_path / "ck")
    loaded = AutoModelForCausalLM.from_pretrained(res["export_dir"])
    assert loaded.config.architectures == ["LlamaForCausalLM"]
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, res["state"][k]), k


def test_peft_model_exports_merged(tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    model = peft.get_peft_model(
        w.tiny_llama(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)  # B starts at zero; make the adapter matter
    engine = build_engine(model, w.opt_spec("adam"), EngineSection(backend="local"))
    engine.export_hf(tmp_path / "hf")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids, _ = w.global_batch(0)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=1e-5
        )
    rollout = engine.state_for_rollout()
    assert set(rollout) == set(merged.state_dict()) and not any("lora" in k for k in rollout)


def test_build_engine_rejects_unknown_backend_and_fp16():
    with pytest.raises(UserError, match="--engine.backend"):
        build_engine(w.tiny_llama(), w.opt_spec("adam"), EngineSection(backend="ddp"))
    assert BACKENDS == ("local", "fsdp", "deepspeed")
    with pytest.raises(UserError, match="fp16"):
        from repulse.engine.local import LocalEngine

        LocalEngine(w.tiny_llama(), w.opt_spec("adam"), param_dtype=torch.float16)


def test_local_engine_trains_bf16_parameters_directly():
    model = w.tiny_llama().to(torch.bfloat16)
    engine = build_engine(model, w.opt_spec("adam"), EngineSection(backend="local", param_dtype="bf16"))
    before = next(engine.unwrapped().parameters()).detach().clone()
    for step in range(2):
        out = w.train_step(engine, step)
    assert next(engine.unwrapped().parameters()).dtype == torch.bfloat16
    assert not torch.equal(before, next(engine.unwrapped().parameters()))
    assert out["lr"] > 0 and out["grad_norm"] > 0


def test_frozen_model_offload_moves_on_demand():
    model = w.tiny_llama()
    frozen = prepare_frozen(model, torch.device("cpu"), offload=True)
    assert not frozen.module.training and not any(p.requires_grad for p in frozen.module.parameters())
    ids, _ = w.global_batch(0)
    out = frozen(input_ids=ids[:2])
    assert out.logits.shape == (2, w.SEQ, w.VOCAB) and not out.logits.requires_grad
    with frozen.on_device() as m:
        assert next(m.parameters()).device.type == "cpu"
