"""``repulse kto`` end to end: the desirable/undesirable gap widens on held-out data, the
desirable/undesirable weights, the KL reference point from mismatched pairs, bad labels, recipes.

Toy data (``toy.unpaired``, ``repulse.toy.datasets.unpaired``): desirable = the right answer and a
polite phrase, undesirable = a right or wrong answer and a rude phrase; labels are booleans.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_rm import (
    RECIPES,
    TEMPLATE,
    assert_clean_error,
    cli,
    eval_rows,
    offline_cfg,
    run_recipe,
    series,
    train_rows,
)

from repulse.config.sections import OfflineConfig
from repulse.trainers import kto


def kto_cfg(toy, out: Path, data: Path | None = None, **over) -> OfflineConfig:
    cfg = offline_cfg(toy.llama, data or toy.unpaired, out, **over)
    cfg.data.input_key, cfg.data.output_key, cfg.data.label_key = "input", "output", "label"
    cfg.data.input_template = TEMPLATE
    return cfg


def heldout_unpaired(path: Path, n: int = 96) -> Path:
    """Fresh unpaired rows from the toy generator with a stream the training file never used."""
    from repulse.toy.datasets import unpaired, write_jsonl

    rng = random.Random("test_kto:heldout")
    write_jsonl(path, [unpaired(rng, good=i % 2 == 0) for i in range(n)])
    return path


def items_and_tokenizer(toy, rows: list[dict]):
    from repulse.data.unpaired import UnpairedDataset
    from repulse.models.loading import load_tokenizer

    tok = load_tokenizer(str(toy.llama), padding_side="right")
    return list(UnpairedDataset(rows, tok, kto_cfg(toy, Path("unused")).data)), tok


def response_logp(model, prompt: list[int], response: list[int]) -> float:
    """log p(response | prompt) of one unpadded sequence, straight from the HF logits."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
    targets = ids[0, 1:]
    per_token = logp.gather(-1, targets[:, None]).squeeze(-1)
    return float(per_token[len(prompt) - 1 :].sum())


def split(item: dict) -> tuple[list[int], list[int]]:
    start = item["loss_mask"].index(1)
    return item["input_ids"][:start], item["input_ids"][start:]


def sequence_scores(model, items: list[dict]) -> torch.Tensor:
    return torch.tensor([response_logp(model, *split(it)) for it in items], dtype=torch.float64)


def no_dropout_copy(model_dir: Path, dest: Path) -> Path:
    """A copy of an HF model directory with every dropout probability set to 0."""
    import shutil

    shutil.copytree(model_dir, dest)
    config = json.loads((dest / "config.json").read_text())
    config.update({k: 0.0 for k in config if k.endswith("pdrop") or k.endswith("dropout")})
    (dest / "config.json").write_text(json.dumps(config))
    return dest


# --------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_kto_widens_the_heldout_desirable_undesirable_gap(toy, tmp_path):
    """Held-out rows drawn fresh from the toy generator. Step 0: policy = reference, so every
    implicit reward and the KL point are exactly 0 and the loss is 1 − σ(0) = ½ (1e-6).
    After 24 steps: (a) the logged held-out gap mean log π(desirable) − mean log π(undesirable)
    has grown by ≥ 1 nat; (b) re-scored with the saved model, the per-sample log-ratio
    log π_θ(y|x) − log π_ref(y|x) averages ≥ 1 nat higher on desirable than on undesirable
    held-out samples, and its sign after centring on its mean classifies ≥ 80% of them
    (chance: 50%)."""
    from transformers import AutoModelForCausalLM

    from repulse.toy.datasets import read_jsonl

    out = tmp_path / "kto"
    heldout = heldout_unpaired(tmp_path / "heldout.jsonl")
    cfg = kto_cfg(toy, out, train__batch_size=16, train__micro_batch_size=8, train__max_steps=24)
    cfg.train.max_epochs = 2
    cfg.adam.lr = 2e-3
    cfg.eval.dataset = str(heldout)
    kto.run(cfg)
    first, last = eval_rows(out)[0], eval_rows(out)[-1]
    assert first["step"] == 0 and last["step"] == 24
    assert first["eval_chosen_reward"] == 0.0 and first["eval_rejected_reward"] == 0.0
    assert first["eval_kl"] == 0.0
    assert first["eval_loss"] == pytest.approx(0.5, abs=1e-6)
    gap = lambda r: r["eval_chosen_logp"] - r["eval_rejected_logp"]  # noqa: E731
    assert gap(last) >= gap(first) + 1.0, (first, last)
    assert last["eval_chosen_reward"] > 0.0 > last["eval_rejected_reward"], last
    assert last["eval_loss"] < first["eval_loss"]
    assert all(math.isfinite(v) for v in series(out, "loss") + series(out, "kl"))

    items, _ = items_and_tokenizer(toy, read_jsonl(heldout))
    trained = AutoModelForCausalLM.from_pretrained(out).eval()
    ref = AutoModelForCausalLM.from_pretrained(toy.llama).eval()
    ratio = sequence_scores(trained, items) - sequence_scores(ref, items)
    good = torch.tensor([it["label"] for it in items])
    assert ratio[good].mean() >= ratio[~good].mean() + 1.0, ratio
    centred = ratio - ratio.mean()
    assert ((centred > 0) == good).double().mean() >= 0.8, ratio


def test_kto_desirable_and_undesirable_weights_take_effect(toy, tmp_path):
    """8 rows (6 desirable, 2 undesirable) = one batch. Step 1 (policy = reference, r = z0 = 0):
    ℓ = λ/2 per sample, so the loss is (6 λ_D + 2 λ_U) / 16 (1e-6). With λ_U = 0 the first update
    raises the desirable implicit rewards (> 0 at step 2), with λ_D = 0 it lowers the undesirable
    ones (< 0 at step 2), and each group moves further when it alone carries weight. Packing (the KL batch packed too) and reference offload
    change nothing (1e-5)."""
    rows = [json.loads(ln) for ln in toy.unpaired.read_text().splitlines()]
    good = [r for r in rows if r["label"] is True][:6]
    bad = [r for r in rows if r["label"] is False][:2]
    data = tmp_path / "eight.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in good[:3] + bad[:1] + good[3:] + bad[1:]))

    def go(name: str, d: float, u: float, **over) -> list[dict]:
        cfg = kto_cfg(
            toy, tmp_path / name, data, model__desirable_weight=d, model__undesirable_weight=u, **over
        )
        cfg.train.max_epochs = 2
        kto.run(cfg)
        return train_rows(tmp_path / name)

    for name, d, u in [("even", 1.0, 1.0), ("skew", 2.0, 0.5)]:
        assert go(name, d, u)[0]["loss"] == pytest.approx((6 * d + 2 * u) / 16, abs=1e-6), name
    even = train_rows(tmp_path / "even")
    assert even[1]["kl"] > 0.0 and even[1]["chosen_reward"] != 0.0  # step 2 has something to compare
    for name, over in {"pack": {"engine__packing_samples": True}, "offload": {"ref__offload": True}}.items():
        rows = go(name, 1.0, 1.0, **over)
        for key in ("loss", "kl", "chosen_reward", "rejected_reward", "chosen_logp", "grad_norm"):
            assert [r[key] for r in rows] == pytest.approx([r[key] for r in even], abs=1e-5), (name, key)
    only_good = go("only_good", 1.0, 0.0)
    assert only_good[0]["loss"] == pytest.approx(6 / 16, abs=1e-6)
    assert only_good[1]["chosen_reward"] > 0.0
    only_bad = go("only_bad", 0.0, 1.0)
    assert only_bad[0]["loss"] == pytest.approx(2 / 16, abs=1e-6)
    assert only_bad[1]["rejected_reward"] < 0.0
    # the weights steer the update: each group moves most when only it carries weight
    assert only_good[1]["chosen_reward"] > only_bad[1]["chosen_reward"]
    assert only_bad[1]["rejected_reward"] < only_good[1]["rejected_reward"]


def test_kto_reference_point_is_the_mismatched_pairs_kl(toy, tmp_path):
    """Policy toy.llama, reference toy.gpt2 (same tokenizer), so log-ratios are non-zero.
    (a) ``KTOMethod`` on a 4-sample micro-batch: z0 = mean over i of
    log π_θ(y_{i+1}|x_i) − log π_ref(y_{i+1}|x_i) (hand-scored, one unpadded HF forward per
    sequence; 1e-4 in fp32), which differs from the matched pairs' mean; the loss is Σ ℓ with
    ℓ from the hand formula at max(0, z0) (1e-4). (b) ``repulse kto`` on one desirable and one
    undesirable sample as a batch of 2 (pairing 0↔1 whatever the order) logs kl = z0 > 0 at
    step 1 (1e-4); policy and reference are swapped where that makes z0 positive (it flips z0's
    sign), so the clamp at 0 cannot hide a wrong value (GPT-2's dropout is switched off: the
    trained policy runs in train mode)."""
    from transformers import AutoModelForCausalLM

    from repulse.data.collate import kto_collate
    from repulse.engine import prepare_frozen

    rows = [json.loads(ln) for ln in toy.unpaired.read_text().splitlines()]
    items, tok = items_and_tokenizer(toy, rows[:4])
    llama = AutoModelForCausalLM.from_pretrained(toy.llama).eval()
    gpt2 = AutoModelForCausalLM.from_pretrained(toy.gpt2).eval()

    def hand_kl(items: list[dict], shift: int, policy=llama, ref=gpt2) -> float:
        n = len(items)
        diffs = []
        for i in range(n):
            prompt, response = split(items[i])[0], split(items[(i + shift) % n])[1]
            diffs.append(response_logp(policy, prompt, response) - response_logp(ref, prompt, response))
        return sum(diffs) / n

    engine = SimpleNamespace(module=llama, device=torch.device("cpu"), world_size=1)
    method = kto.KTOMethod(engine, prepare_frozen(gpt2, torch.device("cpu")), 0.1, 1.0, 1.0)
    batch = kto_collate(items, pad_id=tok.pad_token_id)
    z0 = float(method._kl_point(batch))
    assert z0 == pytest.approx(hand_kl(items, 1), abs=1e-4)
    assert abs(hand_kl(items, 1) - hand_kl(items, 0)) > 1e-2  # the pairing is visible
    res = method.loss(batch)
    r = sequence_scores(llama, items) - sequence_scores(gpt2, items)
    kl = max(0.0, z0)
    labels = torch.tensor([it["label"] for it in items])
    expected = torch.where(labels, 1 - torch.sigmoid(0.1 * (r - kl)), 1 - torch.sigmoid(0.1 * (kl - r)))
    assert float(res.loss_sum.detach()) == pytest.approx(float(expected.sum()), abs=1e-4)
    assert res.stats["kl"][0] == pytest.approx(kl, abs=1e-4)

    pair = [next(r for r in rows if r["label"]), next(r for r in rows if not r["label"])]
    data = tmp_path / "pair.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in pair))
    z0 = hand_kl(items_and_tokenizer(toy, pair)[0], 1)
    gpt2_dir = no_dropout_copy(toy.gpt2, tmp_path / "gpt2")  # a trained policy runs in train mode
    policy, ref = (toy.llama, gpt2_dir) if z0 > 0 else (gpt2_dir, toy.llama)
    out = tmp_path / "two"
    cfg = kto_cfg(toy, out, data, train__batch_size=2, train__micro_batch_size=2, train__max_steps=1)
    cfg.model.model_name_or_path, cfg.ref.model_name_or_path = str(policy), str(ref)
    kto.run(cfg)
    assert abs(z0) > 1e-2
    assert train_rows(out)[0]["kl"] == pytest.approx(abs(z0), abs=1e-4)


def test_kto_flags_are_checked_at_parse_time():
    from repulse.config import parse_config
    from repulse.errors import UserError

    base = ["--model.model_name_or_path", "m", "--data.dataset", "d", "--data.output_key", "output"]
    for extra, flag in [
        (["--model.desirable_weight", "-1"], "--model.desirable_weight"),
        (["--model.desirable_weight", "0", "--model.undesirable_weight", "0"], "--model.undesirable_weight"),
        (["--model.beta", "0"], "--model.beta"),
    ]:
        with pytest.raises(UserError, match=flag):
            parse_config("kto", OfflineConfig, base + extra, kto.validate)
    with pytest.raises(UserError, match="--data.output_key"):
        parse_config("kto", OfflineConfig, base[:4], kto.validate)


def _in_process(argv: list[str], capsys) -> subprocess.CompletedProcess:
    from repulse import cli as repulse_cli

    code = repulse_cli.main(argv)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, captured.out, captured.err)


@pytest.mark.slow
def test_kto_bad_labels_through_the_cli(toy, tmp_path, capsys):
    """A non-boolean label (through the CLI), or a label key the rows lack (the same entry point,
    in process): one ``error:`` paragraph naming the key and ``--data.label_key``, no traceback."""
    rows = [json.loads(ln) for ln in toy.unpaired.read_text().splitlines()[:8]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({**r, "label": "good" if i == 5 else r["label"]}) + "\n"
                           for i, r in enumerate(rows)))  # fmt: skip
    base = ["kto", "--model.model_name_or_path", str(toy.llama), "--data.input_key", "input",
            "--data.output_key", "output", "--data.max_len", "64", "--train.batch_size", "4",
            "--train.micro_batch_size", "2", "--train.max_steps", "1", "--logger.progress_bar", "false",
            "--ckpt.output_dir", str(tmp_path / "out")]  # fmt: skip
    proc = cli([*base, "--data.dataset", str(bad), "--data.label_key", "label"])
    assert_clean_error(proc, "row 6 (", "bad.jsonl, line 6)", "'label'", "--data.label_key", "'good'")
    missing = _in_process([*base, "--data.dataset", str(toy.unpaired), "--data.label_key", "score"], capsys)
    assert_clean_error(missing, "'score'", "--data.label_key")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted((RECIPES / "kto").glob("*.yaml")), ids=lambda p: p.stem)
def test_kto_recipes_run(toy, tmp_path, monkeypatch, recipe):
    run_recipe(toy, tmp_path, "kto", recipe, monkeypatch)
