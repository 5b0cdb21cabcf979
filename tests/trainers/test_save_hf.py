"""``--ckpt.save_hf`` (seed ``--save_hf_ckpt``): an HF model directory beside each checkpoint's
engine state, which ``from_pretrained`` loads with the engine's weights at that step."""

from __future__ import annotations

import pytest
import torch
from test_moe_aux_loss import _config


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(["User: hello\nAssistant: the cat", "User: why\nAssistant: because"], return_tensors="pt",
                    padding=True)  # fmt: skip
    with torch.no_grad():
        return model.eval()(input_ids=ids.input_ids, attention_mask=ids.attention_mask).logits


@pytest.mark.slow
def test_each_checkpoint_holds_an_hf_model_of_its_step(toy, tmp_path):
    from safetensors.torch import load_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from repulse.trainers import sft

    out = tmp_path / "run"
    cfg = _config("sft", toy, toy.llama, out, 0.0)
    cfg.train.max_steps, cfg.ckpt.save_steps, cfg.ckpt.save_hf, cfg.adam.lr = 4, 2, True, 1e-2
    cfg.data.max_samples = 32
    sft.run(cfg)
    step = out / "checkpoints" / "step_2"
    hf = step / "model_hf"
    assert (hf / "config.json").is_file() and (hf / "model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(hf)  # the tokenizer is saved with it
    exported = AutoModelForCausalLM.from_pretrained(hf)

    # the engine's own weights at step 2, from its resumable state
    engine_state = AutoModelForCausalLM.from_pretrained(toy.llama)
    load_model(engine_state, str(step / "model" / "model.safetensors"))
    expected = _logits(engine_state, tokenizer)
    torch.testing.assert_close(_logits(exported, tokenizer), expected, atol=0, rtol=0)
    start = _logits(AutoModelForCausalLM.from_pretrained(toy.llama), tokenizer)
    final = _logits(AutoModelForCausalLM.from_pretrained(out), tokenizer)
    assert (expected - start).abs().max() > 1e-3 and (
        expected - final
    ).abs().max() > 1e-3  # step 2, not 0 or 4


@pytest.mark.slow
def test_without_the_flag_checkpoints_hold_only_the_state(toy, tmp_path):
    from repulse.trainers import sft

    out = tmp_path / "run"
    cfg = _config("sft", toy, toy.llama, out, 0.0)
    cfg.train.max_steps, cfg.ckpt.save_steps, cfg.data.max_samples = 3, 2, 32
    sft.run(cfg)
    assert sorted(p.name for p in (out / "checkpoints" / "step_2").iterdir()) == [
        "model", "rng_rank0.pt", "trainer.json"
    ]  # fmt: skip


def test_the_seed_flag_lands_on_the_field():
    from repulse.config import parse_config
    from repulse.config.sections import OfflineConfig

    cfg = parse_config("sft", OfflineConfig, ["--pretrain", "m", "--dataset", "d", "--save_hf_ckpt"])
    assert cfg.ckpt.save_hf is True


@pytest.mark.slow
def test_rl_checkpoints_hold_the_policys_hf_model_of_their_step(toy, tmp_path):
    """``repulse rl --ckpt.save_hf`` (the seed's ``train_ppo_ray --save_hf_ckpt``): ``step_N/actor_hf``
    loads with ``from_pretrained`` and holds the policy's weights at step N, not the final ones."""
    from safetensors.torch import load_model
    from test_rl import rl_cfg, run_rl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "rl"
    cfg = rl_cfg(toy, out, train__max_steps=2, ckpt__save_steps=1, ckpt__save_hf=True,
                 algo__advantage__estimator="group_norm")  # fmt: skip
    run_rl(cfg)
    step = out / "checkpoints" / "step_1"
    hf = step / "actor_hf"
    assert (hf / "config.json").is_file() and not (step / "critic_hf").exists()
    tokenizer = AutoTokenizer.from_pretrained(hf)
    engine_state = AutoModelForCausalLM.from_pretrained(toy.llama)
    load_model(engine_state, str(step / "actor" / "model.safetensors"))
    expected = _logits(engine_state, tokenizer)
    torch.testing.assert_close(
        _logits(AutoModelForCausalLM.from_pretrained(hf), tokenizer), expected, atol=0, rtol=0
    )
    final = _logits(AutoModelForCausalLM.from_pretrained(out), tokenizer)
    assert (expected - final).abs().max() > 1e-4  # step 1, not the final step 2
