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


@pytest.mark.parametrize("max_norm", [0.3, 1e6, 0.0])
def test_step_clips_gradients_like_an_independent_reference(max_norm):
    """``step`` reports the pre-clip global L2 norm and hands the optimizer gradients scaled by
    min(1, max_norm / (norm + 1e-6)) (``0`` disables clipping), checked against a copy of the
    model that takes the same loss in one full-batch backward, with the norm computed by hand in
    float64 and ``torch.nn.utils.clip_grad_norm_`` applied to the copy. The engine accumulates
    4 micro-batches instead: only float summation order differs (fp32: per tensor, the error's
    norm within 1e-5 of the gradient's; element-wise, near-zero entries differ by more).
    The gradients are read by an optimizer step pre-hook, i.e. exactly what AdamW consumes."""
    import copy
    import dataclasses

    import torch.nn.functional as F  # noqa: N812

    spec = dataclasses.replace(w.opt_spec("adam"), max_norm=max_norm)
    model = w.tiny_llama(0)
    ref = copy.deepcopy(model)
    engine = build_engine(model, spec, EngineSection(backend="local"))
    seen: dict[str, torch.Tensor] = {}
    engine.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: seen.update(
            {n: p.grad.clone() for n, p in engine.module.named_parameters()}
        )
    )
    out = w.train_step(engine, 0)

    ids, labels = w.global_batch(0)
    shifted = labels[:, 1:]
    logits = ref(input_ids=ids).logits[:, :-1].float()
    loss = F.cross_entropy(
        logits.reshape(-1, w.VOCAB), shifted.reshape(-1), ignore_index=-100, reduction="sum"
    )
    (loss / (shifted != -100).sum()).backward()
    grads = {n: p.grad.detach().clone() for n, p in ref.named_parameters()}
    norm = float(sum(g.double().pow(2).sum() for g in grads.values()) ** 0.5)
    assert out["grad_norm"] == pytest.approx(norm, rel=1e-5)
    coef = min(1.0, max_norm / (norm + 1e-6)) if max_norm > 0 else 1.0
    if max_norm == 0.3:
        assert norm > 2 * max_norm, "the toy gradient (~0.96) must be large enough for clipping to bite"
    torch_norm = torch.nn.utils.clip_grad_norm_(
        list(ref.parameters()), max_norm if max_norm > 0 else float("inf")
    )
    assert float(torch_norm) == pytest.approx(norm, rel=1e-5)
    assert seen.keys() == grads.keys()
    clipped_ref = {n: p.grad for n, p in ref.named_parameters()}
    for n, g in grads.items():
        for expected in (g * coef, clipped_ref[n]):  # by hand, and torch's clip on the copy
            err = float((seen[n] - expected).norm() / expected.norm())
            assert err <= 1e-5, f"{n}: the clipped gradient differs by {err:.1e} of its norm"
    clipped = float(sum(g.double().pow(2).sum() for g in seen.values()) ** 0.5)
    assert clipped == pytest.approx(min(norm, max_norm) if max_norm > 0 else norm, rel=1e-5)
