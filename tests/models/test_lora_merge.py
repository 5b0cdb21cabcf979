"""``merge_lora`` and ``repulse lora-merge``: the merged plain model equals the adapter model."""

from __future__ import annotations

import json

import pytest
import torch

from repulse.config.sections import LoraSection
from repulse.errors import UserError
from repulse.models.loading import load_causal_lm, load_scalar_model, merge_lora
from repulse.models.scalar import get_reward_stats, sequence_scores


def _perturb_adapters(model):
    """Fresh LoRA B matrices are zero; make the adapter actually change the model."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)


def test_merge_causal_lm(lm_dir, tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    model = load_causal_lm(str(lm_dir), lora=LoraSection(rank=4))
    _perturb_adapters(model)
    model.save_pretrained(tmp_path / "adapter")
    out = merge_lora(str(lm_dir), str(tmp_path / "adapter"), str(tmp_path / "merged"))
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = tiny.batch(2, 6)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
        base = load_causal_lm(str(lm_dir), trainable=False)
        assert not torch.allclose(base(ids).logits, merged(ids).logits, atol=1e-3)
    assert (out / "tokenizer.json").is_file() or (out / "tokenizer_config.json").is_file()


def test_merge_reward_model_via_cli(lm_dir, tiny, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from repulse.models.merge_cli import main

    model = load_scalar_model(str(lm_dir), pad_token_id=tiny.PAD, lora=LoraSection(rank=4))
    _perturb_adapters(model)
    with torch.no_grad():
        model.base_model.model.score.modules_to_save["default"].weight.normal_()
    model.save_pretrained(tmp_path / "adapter")
    (tmp_path / "adapter" / "config.json").write_text(
        json.dumps({"repulse_reward_mean": 1.0, "repulse_reward_std": 3.0})
    )
    rc = main(
        [
            "--model_path", str(lm_dir),
            "--lora_path", str(tmp_path / "adapter"),
            "--output_path", str(tmp_path / "merged"),
            "--is_rm",
        ]
    )  # fmt: skip
    assert rc == 0
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged", num_labels=1).eval()
    ids, mask = tiny.pad([tiny.batch(1, n, seed=n)[0] for n in (5, 3)], "right")
    model.eval()
    with torch.no_grad():
        expected = sequence_scores(model, ids, mask)
        got = merged(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert get_reward_stats(merged.config) == (1.0, 3.0)


def test_merge_errors(lm_dir, tmp_path):
    from repulse.models.merge_cli import main

    with pytest.raises(UserError, match="adapter_config.json"):
        merge_lora(str(lm_dir), str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(UserError, match="--lora_path is required"):
        main(["--model_path", str(lm_dir), "--output_path", str(tmp_path / "o")])
