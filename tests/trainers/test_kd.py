"""``repulse kd`` end to end: the student moves towards an SFT-trained teacher on held-out data,
kd_coef = 0 is plain SFT, the loss mixes its two terms as documented, the teacher runs without
gradient (offloaded or not), recipes.

The teacher is an SFT-trained copy of ``toy.llama`` (same tokenizer and vocabulary); the student
starts from the untrained ``toy.llama``.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_rm import RECIPES, TEMPLATE, eval_rows, offline_cfg, run_recipe, series, train_rows

from repulse.config.sections import OfflineConfig
from repulse.trainers import kd


def sft_cfg(toy, model: Path, out: Path, **over) -> OfflineConfig:
    cfg = offline_cfg(model, toy.sft, out, **over)
    cfg.data.input_key, cfg.data.output_key = "input", "output"
    cfg.data.input_template = TEMPLATE
    return cfg


def kd_cfg(toy, teacher: Path, out: Path, **over) -> OfflineConfig:
    cfg = sft_cfg(toy, toy.llama, out, **over)
    cfg.model.teacher_model = str(teacher)
    return cfg


@pytest.fixture(scope="module")
def teacher(toy, tmp_path_factory) -> Path:
    """toy.llama after 30 SFT steps on toy.sft: a peaked, useful teacher."""
    from repulse.trainers import sft

    out = tmp_path_factory.mktemp("kd_teacher")
    cfg = sft_cfg(toy, toy.llama, out, train__batch_size=16, train__micro_batch_size=16, train__max_steps=30)
    cfg.train.max_epochs = 2
    cfg.adam.lr = 3e-3
    sft.run(cfg)
    assert series(out, "loss")[-1] < 0.5 * series(out, "loss")[0]
    return out


def response_divergence(student, teacher, items: list[dict]) -> tuple[float, float]:
    """Per-response-token means of KL(p_T ‖ p_S) and of the cross-entropy −Σ p_T log p_S (fp64),
    one unpadded HF forward per sample."""
    kl, ce, count = 0.0, 0.0, 0
    for it in items:
        ids = torch.tensor([it["input_ids"]])
        keep = torch.tensor(it["loss_mask"][1:], dtype=torch.bool)
        with torch.no_grad():
            log_s = torch.log_softmax(student(input_ids=ids).logits[0, :-1].double(), -1)[keep]
            log_t = torch.log_softmax(teacher(input_ids=ids).logits[0, :-1].double(), -1)[keep]
        kl += float((log_t.exp() * (log_t - log_s)).sum())
        ce += float(-(log_t.exp() * log_s).sum())
        count += int(keep.sum())
    return kl / count, ce / count


def sft_items(toy, path: Path, n: int | None = None) -> list[dict]:
    from repulse.data.sft import SFTDataset
    from repulse.data.sources import load_rows
    from repulse.models.loading import load_tokenizer

    tok = load_tokenizer(str(toy.llama), padding_side="right")
    data = sft_cfg(toy, toy.llama, Path("unused")).data
    return list(SFTDataset(load_rows(str(path), max_samples=n), tok, data))


# --------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_kd_lowers_the_heldout_divergence_to_the_teacher(toy, teacher, tmp_path):
    """Pure distillation (kd_coef 1) for 24 steps, evaluated on toy.sft_eval (never trained on).
    Re-scored with the saved student, the per-token KL(p_T ‖ p_S) on the held-out responses at
    least halves; the logged held-out ``eval_kd`` (= KL + H(p_T), H fixed) moves by exactly the
    same amount (1e-3); and the held-out NLL falls, though the student never saw a label."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "kd"
    cfg = kd_cfg(toy, teacher, out, train__batch_size=16, train__micro_batch_size=8, train__max_steps=24)
    cfg.train.max_epochs = 2
    cfg.model.kd_coef = 1.0
    cfg.adam.lr = 3e-3
    cfg.eval.dataset = str(toy.sft_eval)
    kd.run(cfg)
    first, last = eval_rows(out)[0], eval_rows(out)[-1]
    assert first["step"] == 0 and last["step"] == 24
    assert all(math.isfinite(v) for v in series(out, "loss"))
    assert series(out, "loss") == pytest.approx(series(out, "kd"), abs=1e-6)

    items = sft_items(toy, toy.sft_eval)
    t_model = AutoModelForCausalLM.from_pretrained(teacher).eval()
    before = response_divergence(AutoModelForCausalLM.from_pretrained(toy.llama).eval(), t_model, items)[0]
    after = response_divergence(AutoModelForCausalLM.from_pretrained(out).eval(), t_model, items)[0]
    assert after <= 0.5 * before, (before, after)
    assert last["eval_kd"] - first["eval_kd"] == pytest.approx(after - before, abs=1e-3)
    assert last["eval_nll"] < first["eval_nll"]


def test_kd_coef_zero_is_sft_and_the_terms_mix_as_documented(toy, teacher, tmp_path):
    """16 rows, 2 steps. kd_coef 0: the same losses (1e-6) and final weights (1e-6) as
    ``repulse sft``. kd_coef 0.4: loss = 0.6·nll + 0.4·kd each step and step-1 nll = SFT's
    step-1 loss (1e-6). kd_coef 1 on 8 rows (one batch): the step-1 kd is the hand-scored
    teacher → student cross-entropy −Σ p_T log p_S per response token (1e-4). Teacher offload
    changes nothing (1e-5)."""
    from safetensors.torch import load_file

    from repulse.trainers import sft

    over = {"data__max_samples": 16}
    sft.run(sft_cfg(toy, toy.llama, tmp_path / "sft", **over))
    base = series(tmp_path / "sft", "loss")

    def go(name: str, coef: float, **extra) -> list[dict]:
        kd.run(kd_cfg(toy, teacher, tmp_path / name, model__kd_coef=coef, **{**over, **extra}))
        return train_rows(tmp_path / name)

    zero = go("zero", 0.0)
    assert [r["loss"] for r in zero] == pytest.approx(base, abs=1e-6)
    assert [r["nll"] for r in zero] == pytest.approx(base, abs=1e-6)
    wa, wb = (
        load_file(tmp_path / "sft" / "model.safetensors"),
        load_file(tmp_path / "zero" / "model.safetensors"),
    )
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-6, rtol=0, msg=k)

    mixed = go("mixed", 0.4)
    for r in mixed:
        assert r["loss"] == pytest.approx(0.6 * r["nll"] + 0.4 * r["kd"], abs=1e-6)
    assert mixed[0]["nll"] == pytest.approx(base[0], abs=1e-6)
    # the kd term is the teacher -> student cross-entropy: step 1 over all 8 rows, hand-scored
    from transformers import AutoModelForCausalLM

    all8 = go("all8", 1.0, data__max_samples=8, train__max_steps=1)[0]
    _, ce = response_divergence(
        AutoModelForCausalLM.from_pretrained(toy.llama).eval(),
        AutoModelForCausalLM.from_pretrained(teacher).eval(),
        sft_items(toy, toy.sft, 8),
    )
    assert all8["kd"] == pytest.approx(ce, abs=1e-4) and all8["loss"] == pytest.approx(ce, abs=1e-4)
    offload = go("offload", 0.4, model__teacher_offload=True)
    for key in ("loss", "nll", "kd", "grad_norm"):
        assert [r[key] for r in offload] == pytest.approx([r[key] for r in mixed], abs=1e-5), key


def test_kd_packed_equals_padded_on_mixed_lengths(toy, teacher, tmp_path):
    """On data of mixed lengths (every fourth sample four joined), 2 steps at kd_coef
    0.4: packing puts several samples in a row (at most 3/4 of the padded rows reach the
    student, fewer positions) and loss, nll, kd and gradient norm are the padded run's (1e-5)."""
    from packing import TrainedForwards, assert_packed_fewer, mixed_length_sft

    data = str(mixed_length_sft(toy.sft, tmp_path / "mixed.jsonl", n=16))
    runs = {}
    for name, packing in (("pad", False), ("pack", True)):
        cfg = kd_cfg(
            toy,
            teacher,
            tmp_path / name,
            model__kd_coef=0.4,
            engine__packing_samples=packing,
            train__micro_batch_size=8,
        )
        cfg.data.dataset = data
        with TrainedForwards() as seen:
            kd.run(cfg)
        runs[name] = (seen, train_rows(tmp_path / name))
    assert_packed_fewer(runs["pad"][0], runs["pack"][0], rows_per_forward=8)
    padded, packed = runs["pad"][1], runs["pack"][1]
    assert [r["step"] for r in padded] == [1, 2]
    for key in ("loss", "nll", "kd", "grad_norm"):
        assert [r[key] for r in packed] == pytest.approx([r[key] for r in padded], abs=1e-5), key


def test_kd_teacher_runs_without_gradient(toy, teacher):
    """``KDMethod`` on one micro-batch, with grad enabled and the teacher's parameters even set to
    require grad: the teacher's forward runs with autograd off, its parameters get no gradient and
    its weights are unchanged; every student parameter gets the gradient of the documented loss,
    written out by hand on a copy of the student (1e-4)."""
    from transformers import AutoModelForCausalLM

    from repulse.data.collate import pad_collate
    from repulse.engine import prepare_frozen
    from repulse.models.loading import load_tokenizer

    tok = load_tokenizer(str(toy.llama), padding_side="right")
    batch = pad_collate(sft_items(toy, toy.sft, 4), tok.pad_token_id)
    student = AutoModelForCausalLM.from_pretrained(toy.llama)
    frozen = prepare_frozen(AutoModelForCausalLM.from_pretrained(teacher), torch.device("cpu"))
    frozen.module.requires_grad_(True)
    before = {k: v.clone() for k, v in frozen.module.state_dict().items()}
    grad_modes = []
    frozen.module.register_forward_hook(lambda *_: grad_modes.append(torch.is_grad_enabled()))
    by_hand = copy.deepcopy(student)
    method = kd.KDMethod(SimpleNamespace(module=student, device=torch.device("cpu")), frozen, 0.4)
    with torch.enable_grad():
        method.loss(batch).loss_sum.backward()
    assert grad_modes == [False]
    assert all(p.grad is None for p in frozen.module.parameters())
    for k, v in frozen.module.state_dict().items():
        assert torch.equal(v, before[k]), k
    # the student's gradient is that of the documented sum over response tokens t,
    # 0.6·(−log p_S(x_t)) + 0.4·(−Σ_v p_T(v) log p_S(v)), with the teacher a constant
    pos = batch["attention_mask"].cumsum(1) - 1
    with torch.no_grad():
        p_t = torch.softmax(
            frozen.module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          position_ids=pos).logits[:, :-1], -1)  # fmt: skip
    log_s = torch.log_softmax(
        by_hand(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=pos
        ).logits[:, :-1],
        -1,
    )
    keep = batch["loss_mask"][:, 1:].bool()
    nll = -log_s.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    ce = -(p_t * log_s).sum(-1)
    (0.6 * nll[keep].sum() + 0.4 * ce[keep].sum()).backward()
    for (name, p), q in zip(student.named_parameters(), by_hand.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_kd_flags_are_checked_at_parse_time():
    from repulse.config import parse_config
    from repulse.errors import UserError

    base = ["--model.model_name_or_path", "m", "--data.dataset", "d"]
    with pytest.raises(UserError, match="--model.teacher_model"):
        parse_config("kd", OfflineConfig, base, kd.validate)
    for coef in ("-0.1", "1.5"):
        with pytest.raises(UserError, match="--model.kd_coef"):
            parse_config("kd", OfflineConfig, [*base, "--model.teacher_model", "t", "--model.kd_coef", coef],
                         kd.validate)  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted((RECIPES / "kd").glob("*.yaml")), ids=lambda p: p.stem)
def test_kd_recipes_run(toy, tmp_path, monkeypatch, recipe):
    run_recipe(toy, tmp_path, "kd", recipe, monkeypatch)
