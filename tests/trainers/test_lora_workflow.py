"""LoRA runs save the adapter in PEFT format, as OpenRLHF does, so the seed's workflow runs as
documented: ``repulse sft --lora_rank 8 ...`` then ``repulse lora-merge --model_path BASE
--lora_path OUT --output_path MERGED`` (OpenRLHF's ``lora_combiner``) gives a plain model whose
logits are the LoRA-trained model's."""

from __future__ import annotations

import json

import pytest
import torch
from test_rm import cli

from repulse.models.merge_cli import main as lora_merge

TEMPLATE = "User: {}\nAssistant: "


def _ids(tokenizer) -> torch.Tensor:
    return tokenizer(["User: hello there\nAssistant: the cat sat", "User: a b\nAssistant: c"], return_tensors="pt",
                     padding=True).input_ids  # fmt: skip


@pytest.mark.slow
def test_the_merged_adapter_reproduces_the_trained_model(toy, tmp_path):
    """Train in-process with the trainer's own pieces, keep the live model's logits, save with the
    trainers' ``export_model``, merge with ``repulse lora-merge``: same logits."""
    from transformers import AutoModelForCausalLM

    from repulse.config.sections import OfflineConfig
    from repulse.data.sft import SFTDataset
    from repulse.engine import export_model
    from repulse.models.loading import load_causal_lm, load_tokenizer
    from repulse.run.start import start_run
    from repulse.trainers.common import build_trained_engine, fit_spec, load_split, token_collate
    from repulse.trainers.fit import fit
    from repulse.trainers.sft import SFTMethod

    cfg = OfflineConfig()
    cfg.model.model_name_or_path, cfg.data.dataset = str(toy.llama), str(toy.sft)
    cfg.data.input_key, cfg.data.output_key, cfg.data.input_template = "input", "output", TEMPLATE
    cfg.data.max_len, cfg.train.batch_size, cfg.train.micro_batch_size, cfg.train.max_steps = 64, 8, 8, 4
    cfg.adam.lr, cfg.optim.lr_warmup_ratio, cfg.logger.progress_bar = 1e-2, 0.0, False
    cfg.model.lora.rank, cfg.model.lora.alpha = 8, 16
    out = tmp_path / "sft_lora"
    cfg.ckpt.output_dir = str(out)
    run = start_run(cfg)
    tokenizer = load_tokenizer(str(toy.llama), padding_side="right")
    rows = load_split(str(toy.sft), "train", 64, None, 0, "--data.dataset")
    spec = fit_spec(cfg, run, SFTDataset(rows, tokenizer, cfg.data), None, token_collate(cfg, 0), "sft")
    model = load_causal_lm(str(toy.llama), lora=cfg.model.lora)
    engine = build_trained_engine(cfg, run, model, spec)
    fit(engine, SFTMethod(engine), spec)
    export_model(engine, out, tokenizer)

    ids = _ids(tokenizer)
    live = engine.unwrapped().eval()
    with torch.no_grad():
        trained = live(input_ids=ids).logits
    files = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json", "tokenizer.json"} <= files
    assert "model.safetensors" not in files  # as OpenRLHF: the adapter, not merged weights
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["lora_alpha"] == 16 and adapter["peft_type"] == "LORA"

    merged_dir = tmp_path / "merged"
    assert (
        lora_merge(
            ["--model_path", str(toy.llama), "--lora_path", str(out), "--output_path", str(merged_dir)]
        )
        == 0
    )
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    base = AutoModelForCausalLM.from_pretrained(toy.llama).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, trained, atol=1e-5, rtol=1e-5)
        assert (base(input_ids=ids).logits - trained).abs().max() > 1e-2  # the adapter learned something


@pytest.mark.slow
def test_seed_lora_rm_then_lora_combiner_with_is_rm(toy, tmp_path):
    """``repulse rm --lora_rank 8 ...`` then the seed's ``lora_combiner --is_rm``: the merged reward
    model scores as the adapter on its base does, and keeps the reward statistics."""
    import peft
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from repulse.config.legacy import split_launcher
    from repulse.models.loading import load_scalar_model
    from repulse.models.scalar import get_reward_stats, sequence_scores

    out, merged_dir = tmp_path / "rm_lora", tmp_path / "rm_merged"
    flags = ["--pretrain", str(toy.llama), "--dataset", str(toy.pairs), "--prompt_key", "prompt",
             "--input_template", TEMPLATE, "--max_len", "64", "--train_batch_size", "8",
             "--micro_train_batch_size", "8", "--max_samples", "32", "--learning_rate", "1e-2", "--lora_rank", "8",
             "--lora_alpha", "16", "--save_path", str(out), "--logger.progress_bar", "false"]  # fmt: skip
    proc = cli(["rm", *flags], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "repulse lora-merge" in proc.stdout
    # the seed's command (openrlhf-rlhf-options.txt:60), its model and paths swapped for ours
    seed = (f"python -m openrlhf.cli.lora_combiner --model_path {toy.llama} --lora_path {out} "
            f"--output_path {merged_dir} --is_rm --bf16")  # fmt: skip
    command, argv = split_launcher(seed.split())
    assert command == "lora-merge"
    proc = cli([command, *argv], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    enc = tokenizer([TEMPLATE.format("hi") + "thank you", TEMPLATE.format("hi") + "go away"], return_tensors="pt",
                    padding=True)  # fmt: skip
    merged = AutoModelForSequenceClassification.from_pretrained(merged_dir, num_labels=1).eval()
    assert merged.dtype == torch.bfloat16  # the seed's --bf16
    base = load_scalar_model(str(toy.llama), pad_token_id=tokenizer.pad_token_id, trainable=False)
    adapted = peft.PeftModel.from_pretrained(base, str(out)).eval()
    untrained = load_scalar_model(str(toy.llama), pad_token_id=tokenizer.pad_token_id, trainable=False)
    with torch.no_grad():
        expected = sequence_scores(adapted, enc.input_ids, enc.attention_mask)
        got = merged(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits.squeeze(-1).float()
        fresh = sequence_scores(untrained, enc.input_ids, enc.attention_mask)
    torch.testing.assert_close(got, expected, atol=0.05, rtol=0.02)  # bf16 weights vs fp32
    assert (expected - fresh).abs().max() > 0.5  # the adapter (and its head) learned something
    stats = get_reward_stats(json.loads((out / "config.json").read_text()))
    assert stats != (0.0, 1.0) and get_reward_stats(merged.config) == pytest.approx(stats)
