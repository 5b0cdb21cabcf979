"""``repulse prm`` end to end: held-out step accuracy on the toy task, hard / soft / text labels,
the loss only at placeholder positions, bad placeholders, recipes.

The toy task (``toy.prm``, ``repulse.toy.datasets.process``): running sums
``add up: x + d = y ки y + d' = y' ки ...``; a step is '+' iff y == x + d, so every label is a
local check of the three numbers just before its placeholder (each a single token of the toy
tokenizer) - learnable from the text alone. About 60% of the steps are '+'.
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
from same_update import approx, assert_same_update
from test_rm import (
    RECIPES,
    assert_clean_error,
    cli,
    eval_rows,
    offline_cfg,
    run_recipe,
    series,
    train_rows,
)

from repulse.config.sections import OfflineConfig
from repulse.trainers import prm

PLACEHOLDER = "ки"


def prm_cfg(toy, out: Path, data: Path | None = None, label_key: str = "value", **over) -> OfflineConfig:
    cfg = offline_cfg(toy.llama, data or toy.prm, out, **over)
    cfg.model.placeholder_token = PLACEHOLDER
    cfg.model.reward_tokens = ["+", "-"]
    cfg.data.input_key, cfg.data.label_key = "input", label_key
    return cfg


def heldout_prm(path: Path, n: int = 200) -> Path:
    """Fresh rows from the toy generator with a stream the training file never used."""
    from repulse.toy.datasets import process, write_jsonl

    rng = random.Random("test_prm:heldout")
    write_jsonl(path, [process(rng) for _ in range(n)])
    return path


def rows_of(path: Path, n: int | None = None) -> list[dict]:
    lines = [ln for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
    return [json.loads(ln) for ln in lines[:n]]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def hand_step_logits(model, tok, rows: list[dict]) -> torch.Tensor:
    """[N, 2] logits of ('+', '-') at every placeholder, one unpadded HF forward per row."""
    ph = tok.convert_tokens_to_ids(PLACEHOLDER)
    cols = [tok.convert_tokens_to_ids(t) for t in ("+", "-")]
    out = []
    for row in rows:
        ids = torch.tensor([tok(row["input"])["input_ids"]])
        assert int((ids == ph).sum()) == len(row["value"])  # the placeholder is one token here
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]
        out.append(logits[ids[0] == ph][:, cols])
    return torch.cat(out).double()


def hard_targets(rows: list[dict]) -> torch.Tensor:
    return torch.tensor([0 if v == "+" else 1 for r in rows for v in r["value"]])


# --------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_prm_reaches_90pct_heldout_step_accuracy(toy, tmp_path):
    """200 held-out rows drawn fresh from the toy generator (about 650 steps; majority class
    '+' ~ 60%). 300 steps of 32 training rows (~32 epochs of toy.prm) must reach ≥ 90% held-out
    step accuracy (data-order seeds 0-3 gave 0.93-0.97 when this test was written). Muon is used
    because AdamW needs ~1000 such steps here (a long attention plateau first). The saved model, read as documented (softmax over the two reward-token logits at
    each placeholder, through plain ``AutoModelForCausalLM``), gives the same accuracy (1e-9)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "prm"
    heldout = heldout_prm(tmp_path / "heldout.jsonl")
    cfg = prm_cfg(toy, out, train__batch_size=32, train__micro_batch_size=32, train__max_steps=300)
    cfg.train.max_epochs = 100
    cfg.optim.name, cfg.optim.lr_scheduler = "muon", "constant"
    cfg.adam.lr = 3e-3
    cfg.eval.dataset, cfg.eval.steps = str(heldout), 300
    prm.run(cfg)
    evals = eval_rows(out)
    assert [r["step"] for r in evals] == [0, 300]
    assert evals[-1]["eval_acc"] >= 0.9, evals
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert all(math.isfinite(v) for v in series(out, "loss"))

    rows = rows_of(heldout)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    scores = torch.softmax(hand_step_logits(model, AutoTokenizer.from_pretrained(out), rows), dim=-1)[:, 0]
    acc = float(((scores >= 0.5).long() == 1 - hard_targets(rows)).double().mean())
    assert acc == pytest.approx(evals[-1]["eval_acc"], abs=1e-9)


def test_prm_loss_is_the_cross_entropy_at_the_placeholders_only(toy, tmp_path):
    """Step-1 loss (8 rows = one batch of 2 micro-batches, so the loss is over all of them)
    equals the hand cross-entropy over the ('+', '-') logits at the placeholder tokens only,
    hard labels and soft labels p (1e-5); ``steps`` counts placeholders. And the gradient of
    ``PRMMethod``'s loss w.r.t. the logits is non-zero only at the placeholder rows and the two
    reward-token columns."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from repulse.data.collate import pad_collate
    from repulse.data.process import ProcessRewardDataset

    rows = rows_of(toy.prm, 8)
    tok = AutoTokenizer.from_pretrained(toy.llama)
    logits = hand_step_logits(AutoModelForCausalLM.from_pretrained(toy.llama).eval(), tok, rows)
    logp = torch.log_softmax(logits, dim=-1)
    n = len(hard_targets(rows))

    prm.run(prm_cfg(toy, tmp_path / "hard", data__max_samples=8, train__max_steps=1))
    first = train_rows(tmp_path / "hard")[0]
    hard = -logp.gather(-1, hard_targets(rows)[:, None]).mean()
    assert first["loss"] == pytest.approx(float(hard), abs=1e-5)
    assert first["steps"] * 2 == n  # per micro-batch mean, 2 micro-batches

    rng = random.Random(0)
    soft_rows = [{**r, "value": [round(rng.random(), 3) for _ in r["value"]]} for r in rows]
    soft_file = write_rows(tmp_path / "soft.jsonl", soft_rows)
    prm.run(prm_cfg(toy, tmp_path / "soft", soft_file, train__max_steps=1))
    p = torch.tensor([v for r in soft_rows for v in r["value"]], dtype=torch.float64)
    soft = -(p * logp[:, 0] + (1 - p) * logp[:, 1]).mean()
    assert train_rows(tmp_path / "soft")[0]["loss"] == pytest.approx(float(soft), abs=1e-5)

    cfg = prm_cfg(toy, tmp_path / "unused")
    data = ProcessRewardDataset(rows[:4], tok, cfg.data, PLACEHOLDER, ["+", "-"])
    batch = pad_collate(list(data), pad_id=tok.pad_token_id)
    vocab = len(tok)
    fake_logits = torch.nn.Parameter(torch.randn(*batch["input_ids"].shape, vocab))
    model = lambda **kw: SimpleNamespace(logits=fake_logits)  # noqa: E731
    method = prm.PRMMethod(SimpleNamespace(module=model, device=torch.device("cpu")), data.reward_token_ids)
    method.loss(batch).loss_sum.backward()
    touched = fake_logits.grad.abs() > 0
    assert torch.equal(touched.any(-1), batch["input_ids"] == tok.convert_tokens_to_ids(PLACEHOLDER))
    assert torch.equal(touched.any(0).any(0).nonzero().flatten().sort().values,
                       torch.tensor(sorted(data.reward_token_ids)))  # fmt: skip


def test_prm_hard_soft_and_text_labels_agree(toy, tmp_path):
    """Over 3 steps on 16 rows: hard labels from the ``value`` list, from Math-Shepherd's ``label``
    text, and as soft labels 1.0 / 0.0 give the same losses, accuracies and weights (1e-5);
    so do packing and micro-batches of 1 (token-level units)."""
    rows = rows_of(toy.prm, 16)
    soft = write_rows(tmp_path / "soft.jsonl", [{**r, "value": [1.0 if v == "+" else 0.0 for v in r["value"]]}
                                                for r in rows])  # fmt: skip

    def go(name: str, data: Path | None = None, label_key: str = "value", **over) -> list[dict]:
        cfg = prm_cfg(toy, tmp_path / name, data, label_key, data__max_samples=16, train__max_steps=3, **over)
        cfg.train.max_epochs = 2
        prm.run(cfg)
        return train_rows(tmp_path / name)

    base = go("hard")
    assert len(base) == 3
    variants = {
        "text": go("text", label_key="label"),
        "soft": go("soft", soft),
        "pack": go("pack", engine__packing_samples=True),
        "micro1": go("micro1", train__micro_batch_size=1),
    }
    for name, got in variants.items():
        for key in ("loss", "acc", "grad_norm"):
            assert [r[key] for r in got] == approx([r[key] for r in base]), (name, key)
    for name in variants:
        assert_same_update(toy.llama, tmp_path / "hard", tmp_path / name)


def test_prm_flags_are_checked_at_parse_time():
    from repulse.config import parse_config
    from repulse.errors import UserError

    base = ["--model.model_name_or_path", "m", "--data.dataset", "d"]
    with pytest.raises(UserError, match="--model.placeholder_token"):
        parse_config("prm", OfflineConfig, base, prm.validate)
    base += ["--model.placeholder_token", PLACEHOLDER]
    for extra, flag in [
        (["--model.reward_tokens", "+", "-", "?"], "--model.reward_tokens"),
        (["--model.reward_tokens", "+", "+"], "--model.reward_tokens"),
        (["--model.reward_tokens", PLACEHOLDER, "-"], "--model.placeholder_token"),
    ]:
        with pytest.raises(UserError, match=flag):
            parse_config("prm", OfflineConfig, base + extra, prm.validate)


def _in_process(argv: list[str], capsys) -> subprocess.CompletedProcess:
    from repulse import cli as repulse_cli

    code = repulse_cli.main(argv)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, captured.out, captured.err)


@pytest.mark.slow
def test_prm_bad_placeholders_and_labels(toy, tmp_path, capsys):
    """A placeholder that is not one token of the tokenizer (through the CLI), a reward token that
    is not one, and a label count that does not match the steps: one ``error:`` paragraph naming
    the flag, no traceback."""
    base = ["prm", "--model.model_name_or_path", str(toy.llama), "--data.dataset", str(toy.prm),
            "--data.input_key", "input", "--data.max_len", "64", "--train.batch_size", "4",
            "--train.micro_batch_size", "4", "--train.max_steps", "1", "--logger.progress_bar", "false",
            "--ckpt.output_dir", str(tmp_path / "out")]  # fmt: skip
    proc = cli([*base, "--model.placeholder_token", "<step>"])
    assert_clean_error(proc, "--model.placeholder_token", "'<step>'", "not a single token")
    reward = _in_process([*base, "--model.placeholder_token", PLACEHOLDER, "--model.reward_tokens", "+", "<bad>"],
                         capsys)  # fmt: skip
    assert_clean_error(reward, "--model.reward_tokens", "'<bad>'")
    rows = rows_of(toy.prm, 8)
    short = write_rows(tmp_path / "short.jsonl", [{**r, "value": r["value"][:-1]} for r in rows])
    mismatch = _in_process(
        [*base, "--model.placeholder_token", PLACEHOLDER, "--data.dataset", str(short)], capsys
    )
    assert_clean_error(mismatch, "row 1 (", "short.jsonl, line 1)", "--data.label_key", "must match")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted((RECIPES / "prm").glob("*.yaml")), ids=lambda p: p.stem)
def test_prm_recipes_run(toy, tmp_path, monkeypatch, recipe):
    run_recipe(toy, tmp_path, "prm", recipe, monkeypatch)
