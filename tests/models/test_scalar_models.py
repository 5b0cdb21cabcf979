"""Reward models / critics: transformers round trip, pooling under padding, values, stats, legacy heads."""

from __future__ import annotations

import json

import pytest
import torch

from repulse.config.sections import LoraSection
from repulse.errors import UserError
from repulse.models.loading import load_scalar_model
from repulse.models.scalar import get_reward_stats, sequence_scores, set_reward_stats, token_values


def _rows(tiny):
    return [tiny.batch(1, n, seed=10 + n)[0] for n in (7, 3, 5)]


def _hf(path):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).eval()


def test_new_head_from_an_lm_and_missing_head_error(lm_dir, tiny):
    model = load_scalar_model(str(lm_dir), pad_token_id=tiny.PAD)
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert model.score.weight.shape == (1, 32) and model.score.weight.requires_grad
    with pytest.raises(UserError, match="no trained scalar head"):
        load_scalar_model(str(lm_dir), init_from_lm=False)


@pytest.mark.parametrize("side", ["left", "right"])
def test_saved_rm_reloads_in_transformers_with_identical_scores(lm_dir, tiny, tmp_path, side):
    torch.manual_seed(1)
    model = load_scalar_model(str(lm_dir), pad_token_id=tiny.PAD, trainable=False)
    with torch.no_grad():
        model.score.weight.normal_()  # a head that is not ~0
    set_reward_stats(model, 0.25, 2.0)
    model.save_pretrained(tmp_path / "rm")

    ids, mask = tiny.pad(_rows(tiny), side)
    reloaded = _hf(tmp_path / "rm")
    with torch.no_grad():
        ours = sequence_scores(model, ids, mask)
        theirs = reloaded(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
        ours_reloaded = sequence_scores(reloaded, ids, mask)
    assert ours.shape == (3,)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours_reloaded, theirs, atol=1e-6, rtol=0)
    assert get_reward_stats(reloaded.config) == (0.25, 2.0)
    assert get_reward_stats(json.loads((tmp_path / "rm" / "config.json").read_text())) == (0.25, 2.0)


def test_scores_do_not_depend_on_padding(lm_dir, tiny):
    model = load_scalar_model(str(lm_dir), pad_token_id=tiny.PAD, trainable=False)
    rows = _rows(tiny)
    with torch.no_grad():
        left = sequence_scores(model, *tiny.pad(rows, "left"))
        right = sequence_scores(model, *tiny.pad(rows, "right"))
        alone = torch.stack([sequence_scores(model, r[None])[0] for r in rows])
    torch.testing.assert_close(left, alone, atol=1e-6, rtol=0)
    torch.testing.assert_close(right, alone, atol=1e-6, rtol=0)


def test_token_values_and_batches_without_a_pad_id(lm_dir, tiny):
    model = load_scalar_model(str(lm_dir), trainable=False)
    model.config.pad_token_id = None  # transformers alone would refuse a batch of 3
    ids, mask = tiny.pad(_rows(tiny), "right")
    with torch.no_grad():
        values = token_values(model, ids, mask)
        scores = sequence_scores(model, ids, mask)
    assert values.shape == ids.shape and values.dtype == torch.float32
    lengths = mask.sum(-1)
    assert torch.equal(scores, values[torch.arange(3), lengths - 1])
    assert model.config.pad_token_id is None  # restored
    # per-token values equal the head over the backbone's hidden states
    with torch.no_grad():
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        manual = model.score(hidden).squeeze(-1)
    torch.testing.assert_close(values[mask.bool()], manual[mask.bool()], atol=1e-6, rtol=0)


def test_token_values_packed(lm_dir, tiny):
    model = load_scalar_model(str(lm_dir), pad_token_id=tiny.PAD, trainable=False)
    a, b = tiny.batch(1, 5, seed=1)[0], tiny.batch(1, 4, seed=2)[0]
    position_ids = torch.cat([torch.arange(5), torch.arange(4)])[None]
    with torch.no_grad():
        packed = token_values(model, torch.cat([a, b])[None], position_ids=position_ids)[0]
        va, vb = token_values(model, a[None])[0], token_values(model, b[None])[0]
    torch.testing.assert_close(packed, torch.cat([va, vb]), atol=1e-6, rtol=0)


def test_values_train_through_lora_and_checkpointing(lm_dir, tiny):
    """A LoRA reward model with gradient checkpointing trains only the adapters and the head,
    recomputes its decoder layers in backward, and each of them gets the gradient it gets without checkpointing (same seed, so the same
    adapter and head init; 1e-6); the head's and the adapters' B matrices a non-zero one."""
    ids, mask = tiny.pad(_rows(tiny), "right")
    grads = {}
    for ckpt in (True, False):
        torch.manual_seed(0)
        model = load_scalar_model(
            str(lm_dir), pad_token_id=tiny.PAD, lora=LoraSection(rank=4), gradient_checkpointing=ckpt
        )
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert any("lora_" in n for n in trainable) and any("score" in n for n in trainable)
        assert all("lora_" in n or "score" in n for n in trainable)
        calls = []
        model.get_base_model().model.layers[0].mlp.register_forward_pre_hook(
            lambda *_, calls=calls: calls.append(1)
        )
        sequence_scores(model, ids, mask).sum().backward()
        assert len(calls) == (2 if ckpt else 1)  # checkpointed: run again in backward
        grads[ckpt] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads[True].keys() == grads[False].keys()
    for name, g in grads[False].items():
        assert grads[True][name] is not None, name
        torch.testing.assert_close(grads[True][name], g, atol=1e-6, rtol=1e-5, msg=name)
        if "score" in name or "lora_B" in name:  # lora_A's gradient is 0 while B is still 0
            assert g.abs().sum() > 0, name


def test_reward_stats(lm_dir):
    model = load_scalar_model(str(lm_dir), trainable=False)
    assert get_reward_stats(model.config) == (0.0, 1.0)
    set_reward_stats(model, -1.5, 0.5)
    assert get_reward_stats(model) == (-1.5, 0.5)
    assert get_reward_stats({"mean": 2.0, "std": 3.0}) == (2.0, 3.0)  # OpenRLHF's keys
    with pytest.raises(ValueError):
        set_reward_stats(model, 0.0, 0.0)


def test_legacy_value_head_is_read_and_saved_as_score(lm_dir, tiny, tmp_path, fresh_warnings, capsys):
    """An OpenRLHF-style checkpoint (head named value_head) loads; the head is saved as 'score'."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(3)
    model = load_scalar_model(str(lm_dir), pad_token_id=tiny.PAD, trainable=False)
    model.save_pretrained(tmp_path / "rm")
    state = load_file(tmp_path / "rm" / "model.safetensors")
    head = torch.randn(1, 32)
    state.pop("score.weight")
    state["value_head.weight"] = head
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    save_file(state, legacy / "model.safetensors", metadata={"format": "pt"})
    (legacy / "config.json").write_text((tmp_path / "rm" / "config.json").read_text())

    with pytest.raises(UserError, match="no trained scalar head"):
        load_scalar_model(str(legacy), init_from_lm=False)
    loaded = load_scalar_model(
        str(legacy), value_head_prefix="value_head", init_from_lm=False, trainable=False
    )
    assert torch.equal(loaded.score.weight, head)
    # a prefix that names nothing in a checkpoint with a native head only warns
    load_scalar_model(str(tmp_path / "rm"), value_head_prefix="value_head", trainable=False)
    assert "value_head_prefix value_head" in capsys.readouterr().err


def test_pad_equal_to_eos_warns(lm_dir, tiny, fresh_warnings, capsys):
    load_scalar_model(str(lm_dir), pad_token_id=tiny.EOS, trainable=False)
    assert "pad token is the eos token" in capsys.readouterr().err
