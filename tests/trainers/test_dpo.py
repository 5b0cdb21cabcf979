"""``repulse dpo`` end to end: learning on held-out pairs, the loss variants' first-step values,
packing, reference offload and choice, 2 processes (fsdp / deepspeed ZeRO-3), recipes."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_rm import (
    DS_REASON,
    HAS_DS,
    RECIPES,
    assert_two_processes_match,
    cfg_file,
    eval_rows,
    pairs_cfg,
    run_recipe,
    series,
    torchrun,
    train_rows,
)

from repulse.config.sections import OfflineConfig
from repulse.trainers import dpo


@pytest.mark.slow
def test_dpo_raises_the_heldout_margin_and_accuracy(toy, tmp_path):
    out = tmp_path / "dpo"
    cfg = pairs_cfg(toy, out, train__batch_size=16, train__micro_batch_size=16, train__max_steps=24)
    cfg.adam.lr = 2e-3
    cfg.eval.dataset = str(toy.pairs_eval)
    dpo.run(cfg)
    first, last = eval_rows(out)[0], eval_rows(out)[-1]
    # the policy starts as the reference: every implicit reward is exactly 0
    assert first["step"] == 0 and first["eval_margin"] == 0.0 and first["eval_acc"] == 0.0
    assert first["eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert last["eval_margin"] > 1.0, last
    assert last["eval_acc"] >= 0.9, last
    assert last["eval_chosen_reward"] > last["eval_rejected_reward"]
    assert last["eval_loss"] < 0.5 * first["eval_loss"]
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out).config.architectures == ["LlamaForCausalLM"]


@pytest.mark.slow
def test_dpo_variants_first_step_values_packing_and_reference(toy, tmp_path):
    def go(name: str, **over) -> list[dict]:
        dpo.run(pairs_cfg(toy, tmp_path / name, data__max_samples=16, **over))
        return train_rows(tmp_path / name)

    base = go("dpo")
    # step 1 (policy = reference): h = 0 so DPO and cDPO give log 2, IPO (0 - 1/(2 beta))^2
    assert base[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert base[0]["margin"] == 0.0 and base[0]["chosen_reward"] == 0.0
    assert go("cdpo", model__label_smoothing=0.2)[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    ipo = go("ipo", model__ipo_enable=True, model__beta=0.5)
    assert ipo[0]["loss"] == pytest.approx(1.0, abs=1e-6)
    nll = go("nll", model__nll_loss_coef=0.5)
    assert nll[0]["loss"] == pytest.approx(math.log(2) + 0.5 * nll[0]["nll"], abs=1e-5)
    assert nll[0]["nll"] > 1.0  # a random model: per-token NLL near log(vocab)
    # separate chosen/rejected rows (no shared prompt), eager attention, reference offload and
    # micro-batch accumulation change nothing (packing: test_dpo_packed_equals_padded_on_mixed_lengths)
    for name, over in {
        "unshared": {"engine__shared_prompt_enable": False},
        "eager": {"engine__attn_implementation": "eager"},
        "offload": {"ref__offload": True},
        "micro2": {"train__micro_batch_size": 2},
    }.items():
        rows = go(name, **over)
        for key in ("loss", "margin", "chosen_logp", "rejected_logp"):
            assert [r[key] for r in rows] == pytest.approx([r[key] for r in base], abs=1e-5), (name, key)
    # an explicit, different reference: rewards are non-zero from the first step
    other = go("ref", ref__model_name_or_path=str(toy.gpt2))
    assert other[0]["chosen_reward"] != 0.0
    assert other[0]["chosen_logp"] == pytest.approx(base[0]["chosen_logp"], abs=1e-5)


@pytest.mark.slow
def test_dpo_packed_equals_padded_on_mixed_lengths(toy, tmp_path):
    """16 pairs of mixed lengths (every fourth pair four joined), micro-batches of 8, 2 steps, with
    an NLL term, in four layouts: one pair per row (prompt shared, the default), pairs packed into
    rows as long as the longest pair, chosen and rejected as separate padded rows, and all 16
    sequences of a micro-batch packed into one row. The packed layouts put several pairs in a row
    (at most 3/4 of the rows, fewer positions) and every step's loss, margin, log-probabilities and
    NLL equal the default layout's (1e-5, or a relative 1e-6 for the log-probability sums of
    ~60 tokens: fp32 summation order); the gradient norm within ``same_update.METRIC_RTOL``."""
    from packing import TrainedForwards, assert_packed_fewer, mixed_length_pairs
    from same_update import approx

    data = str(mixed_length_pairs(toy.pairs, tmp_path / "mixed.jsonl", n=16))

    def go(name: str, **over) -> tuple[TrainedForwards, list[dict]]:
        cfg = pairs_cfg(toy, tmp_path / name, data__max_len=96, train__micro_batch_size=8, **over)
        cfg.data.dataset = data
        cfg.model.nll_loss_coef = 0.5
        with TrainedForwards() as seen:
            dpo.run(cfg)
        return seen, train_rows(tmp_path / name)

    pad_fw, base = go("pad")
    assert [r["step"] for r in base] == [1, 2] and base[1]["margin"] != 0.0
    pack_fw, packed = go("pack", engine__packing_samples=True)
    assert_packed_fewer(pad_fw, pack_fw, rows_per_forward=8)
    unshared_fw, unshared = go("unshared", engine__shared_prompt_enable=False)
    assert {r for r, _ in unshared_fw.shapes} == {16}  # chosen and rejected rows
    one_row_fw, one_row = go("one_row", engine__packing_samples=True, engine__shared_prompt_enable=False)
    assert {r for r, _ in one_row_fw.shapes} == {1}  # the whole micro-batch in one row
    assert one_row_fw.positions < unshared_fw.positions
    for name, rows in (("pack", packed), ("unshared", unshared), ("one_row", one_row)):
        for key in ("loss", "margin", "chosen_logp", "rejected_logp", "nll"):
            expected = pytest.approx([r[key] for r in base], rel=1e-6, abs=1e-5)
            assert [r[key] for r in rows] == expected, (name, key)
        assert [r["grad_norm"] for r in rows] == approx([r["grad_norm"] for r in base]), name


def test_cdpo_label_smoothing_reaches_the_loss_at_a_nonzero_margin(toy, tmp_path):
    """cDPO with ε = 0.2 against a different reference (toy GPT-2: the implicit rewards are
    non-zero from step 1), one pair per step: each step's loss is the documented
    −(1−ε)·log σ(m) − ε·log σ(−m) of its logged margin m = β·h (1e-6), at margins where the
    smoothing moves the loss by ε·|m| > 1e-3 from plain DPO's −log σ(m)."""
    import torch.nn.functional as F

    over = {"train__batch_size": 1, "train__micro_batch_size": 1, "train__max_steps": 3}
    cfg = pairs_cfg(toy, tmp_path / "cdpo", data__max_samples=8, model__label_smoothing=0.2, **over)
    cfg.ref.model_name_or_path = str(toy.gpt2)
    dpo.run(cfg)
    rows = train_rows(tmp_path / "cdpo")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        m = torch.tensor(r["margin"], dtype=torch.float64)
        smoothed = float(-(0.8 * F.logsigmoid(m) + 0.2 * F.logsigmoid(-m)))
        plain = float(-F.logsigmoid(m))
        assert abs(smoothed - plain) > 1e-3, r  # = 0.2·|m|: the smoothing matters here
        assert r["loss"] == pytest.approx(smoothed, abs=1e-6), r


def test_dpo_sequence_logps_padded_equal_packed():
    from repulse.trainers.dpo import sequence_logps

    torch.manual_seed(0)
    lens = torch.tensor([4, 6, 3])
    masks = [torch.tensor(m) for m in ([0, 0, 1, 1], [0, 1, 1, 1, 1, 0], [0, 0, 1])]
    logp = [torch.randn(n - 1) for n in lens.tolist()]
    width = int(lens.max()) - 1
    pad_lp = torch.full((3, width), float("nan"))
    pad_m = torch.zeros(3, width, dtype=torch.long)
    for i in range(3):
        pad_lp[i, : lens[i] - 1], pad_m[i, : lens[i] - 1] = logp[i], masks[i][1:]
    sums, counts = sequence_logps(pad_lp, pad_m)
    # packed row: the column before each sample's first token scores across the boundary
    packed_lp = torch.cat([torch.cat([lp, torch.tensor([float("nan")])]) for lp in logp])[:-1][None]
    packed_m = torch.cat(masks)[1:][None]
    psums, pcounts = sequence_logps(packed_lp, packed_m, lens)
    torch.testing.assert_close(psums, sums)
    torch.testing.assert_close(pcounts, counts)
    expected = torch.stack([(lp * m[1:]).sum() for lp, m in zip(logp, masks)])
    torch.testing.assert_close(sums, expected)
    assert counts.tolist() == [2.0, 4.0, 1.0]


def test_dpo_flags_are_checked_at_parse_time():
    from repulse.config import parse_config
    from repulse.errors import UserError

    base = ["--model.model_name_or_path", "m", "--data.dataset", "d"]
    for extra, flag in [
        (["--model.ipo_enable", "--model.label_smoothing", "0.1"], "--model.ipo_enable"),
        (["--model.beta", "0"], "--model.beta"),
        (["--model.label_smoothing", "0.7"], "--model.label_smoothing"),
        (["--model.nll_loss_coef", "-1"], "--model.nll_loss_coef"),
    ]:
        with pytest.raises(UserError, match=flag):
            parse_config("dpo", OfflineConfig, base + extra, dpo.validate)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted((RECIPES / "dpo").glob("*.yaml")), ids=lambda p: p.stem)
def test_dpo_recipes_run(toy, tmp_path, monkeypatch, recipe):
    run_recipe(toy, tmp_path, "dpo", recipe, monkeypatch)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(
    "engine",
    ["fsdp", pytest.param("deepspeed", marks=pytest.mark.skipif(not HAS_DS, reason=DS_REASON))],
)
def test_dpo_two_processes_reproduce_one(toy, tmp_path, engine):
    """2 gloo processes (fsdp, or deepspeed ZeRO-3; the reference a full replica on each) vs 1
    local process: losses and metrics within a relative 1e-4, and the same update (fp32;
    ``same_update``)."""
    one = tmp_path / "one"
    over = {"train__max_steps": 3, "model__nll_loss_coef": 0.1, "data__max_samples": 24}
    dpo.run(pairs_cfg(toy, one, **over))
    two_cfg = pairs_cfg(toy, tmp_path / "two", engine__backend=engine, engine__zero_stage=3, **over)
    two_cfg.engine.param_dtype = "fp32"
    torchrun(["dpo", "--config", cfg_file(two_cfg, tmp_path / "two.yaml")], cwd=tmp_path)
    assert_two_processes_match(
        toy.llama, one, tmp_path / "two", ("loss", "acc", "margin", "nll", "chosen_logp", "grad_norm")
    )
    assert json.loads((tmp_path / "two" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert series(tmp_path / "two", "margin")[-1] != 0.0


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(toy, tmp_path):
    """``repulse dpo`` (with an NLL term) for 12 steps, checkpoints every 4, SIGKILLed after
    step_4 is on disk and later steps are logged, resumed with ``--ckpt.load_enable``: every
    logged metric and the final weights equal an uninterrupted run's bit for bit, and
    metrics.jsonl holds steps 1..12 once each (``resume.py``)."""
    from resume import assert_kill_and_resume_is_bit_identical

    argv = [
        "dpo",
        "--model.model_name_or_path", str(toy.llama),
        "--data.dataset", str(toy.pairs), "--data.prompt_key", "prompt",
        "--data.input_template", "User: {}\nAssistant: ", "--data.max_len", "64",
        "--model.nll_loss_coef", "0.1",
        "--train.batch_size", "8", "--train.micro_batch_size", "4", "--train.max_steps", "12",
        "--adam.lr", "1e-3", "--ckpt.save_steps", "4", "--logger.progress_bar", "false",
    ]  # fmt: skip
    full, _ = assert_kill_and_resume_is_bit_identical(argv, tmp_path, every=4, n=12)
    assert series(full, "margin")[-1] != 0.0  # the policy moved away from its reference
