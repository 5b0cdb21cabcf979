"""``repulse rm`` end to end: learning, HF export and scores, reward statistics, loss variants,
packing, 2 processes (fsdp / deepspeed ZeRO-3), bad input, recipes.

The helpers at the top (config builder, CLI runner, recipe runner, torchrun launcher) are
shared by the other offline-trainer tests (``from test_rm import ...``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from repulse.config.sections import OfflineConfig

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
HAS_DS = importlib.util.find_spec("deepspeed") is not None
DS_REASON = "needs the deepspeed extra (pip install 'repulse[deepspeed]')"


def needs_deepspeed() -> None:
    """Skip the calling test, saying why, where DeepSpeed is not installed."""
    pytest.importorskip("deepspeed", reason=DS_REASON)


TEMPLATE = "User: {}\nAssistant: "


# --------------------------------------------------------------------------- shared helpers


def offline_cfg(model: Path, data: Path, out: Path, **over) -> OfflineConfig:
    """A small fp32 CPU config; ``over`` sets ``section__name=value``."""
    cfg = OfflineConfig()
    cfg.model.model_name_or_path = str(model)
    cfg.data.dataset = str(data)
    cfg.data.max_len = 64
    cfg.train.batch_size, cfg.train.micro_batch_size = 8, 4
    cfg.train.max_steps = 2
    cfg.adam.lr = 1e-3
    cfg.optim.lr_warmup_ratio = 0.0
    cfg.ckpt.output_dir = str(out)
    cfg.logger.progress_bar = False
    for key, value in over.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


def pairs_cfg(toy, out: Path, **over) -> OfflineConfig:
    cfg = offline_cfg(toy.llama, toy.pairs, out, **over)
    cfg.data.prompt_key = "prompt"
    cfg.data.input_template = TEMPLATE
    return cfg


def metrics(out: Path) -> list[dict]:
    return [
        json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines() if line.strip()
    ]


def train_rows(out: Path) -> list[dict]:
    return [r for r in metrics(out) if "loss" in r]


def eval_rows(out: Path) -> list[dict]:
    return [r for r in metrics(out) if "eval_loss" in r]


def series(out: Path, key: str) -> list[float]:
    return [r[key] for r in train_rows(out)]


def cli(args: list[str], cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "repulse", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )


def assert_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Non-zero exit, one ``error:`` paragraph on stderr naming ``needles``, no traceback."""
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    err = proc.stderr.strip()
    lines = err.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("error:"))
    paragraph = "\n".join(lines[start:])
    assert paragraph.strip() and "\n\n" not in paragraph, err
    flat = " ".join(paragraph.split())  # the CLI wraps the paragraph at 100 columns
    for needle in needles:
        assert needle in flat, (needle, err)


def run_recipe(toy, tmp_path: Path, command: str, recipe: Path, monkeypatch) -> Path:
    """Run ``repulse <command> --config recipe`` for 2 steps where ``toy_assets/`` is the toy build."""
    from repulse import cli as repulse_cli

    (tmp_path / "toy_assets").symlink_to(toy.root, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    argv = [command, "--config", str(recipe), "--ckpt.output_dir", str(out), "--train.max_steps", "2"]
    argv += ["--logger.progress_bar", "false"]
    assert repulse_cli.main(argv) == 0
    rows = train_rows(out)
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)
    return out


def torchrun(args: list[str], cwd: Path, timeout: int = 600) -> None:
    """``repulse <args>`` on 2 gloo processes (CPU)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    proc = subprocess.run(
        [*cmd, "-m", "repulse", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


def cfg_file(cfg: OfflineConfig, path: Path) -> str:
    """Write ``cfg`` as a YAML recipe (every leaf, so nothing depends on defaults)."""
    from repulse.config.schema import to_yaml

    path.write_text(to_yaml(cfg))
    return str(path)


def assert_two_processes_match(start: Path, one: Path, two: Path, keys: tuple[str, ...]) -> None:
    """Per-step metrics within ``METRIC_RTOL`` and the same update from ``start`` (``same_update``)."""
    from same_update import approx, assert_same_update

    a, b = train_rows(one), train_rows(two)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in keys:
            assert rb[key] == approx(ra[key]), (key, ra["step"], ra[key], rb[key])
    assert_same_update(start, one, two)


# --------------------------------------------------------------------------- tests


def _hf_scores(model, items: list[dict], pad_id: int) -> torch.Tensor:
    """Transformers' own pooled scores of every chosen and rejected sequence (right padded)."""
    seqs = [it["chosen_ids"] for it in items] + [it["rejected_ids"] for it in items]
    out = []
    for i in range(0, len(seqs), 64):
        chunk = seqs[i : i + 64]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), pad_id)
        attn = torch.zeros_like(ids)
        for j, s in enumerate(chunk):
            ids[j, : len(s)], attn[j, : len(s)] = torch.tensor(s), 1
        with torch.no_grad():
            out.append(model(input_ids=ids, attention_mask=attn).logits.squeeze(-1))
    return torch.cat(out)


@pytest.mark.slow
def test_rm_learns_the_preference_and_exports_an_identical_hf_scorer(toy, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from repulse.data.collate import preference_collate
    from repulse.data.preference import PreferenceDataset
    from repulse.data.sources import load_rows
    from repulse.models.loading import get_reward_stats, load_scalar_model, sequence_scores
    from repulse.trainers import rm

    out = tmp_path / "rm"
    cfg = pairs_cfg(toy, out, train__batch_size=16, train__micro_batch_size=16, train__max_steps=24)
    cfg.adam.lr = 2e-3
    cfg.eval.dataset = str(toy.pairs_eval)
    rm.run(cfg)
    evals = eval_rows(out)
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 24
    assert evals[-1]["eval_acc"] >= 0.9, evals[-1]
    assert evals[-1]["eval_margin"] > evals[0]["eval_margin"]
    for key in ("loss", "acc", "chosen_reward", "rejected_reward", "margin"):
        assert all(math.isfinite(r[key]) for r in train_rows(out)), key

    hf = AutoModelForSequenceClassification.from_pretrained(out, num_labels=1).eval()
    ours = load_scalar_model(str(out), init_from_lm=False, trainable=False)
    tok = AutoTokenizer.from_pretrained(out)
    data = PreferenceDataset(load_rows(str(toy.pairs_eval), "train", 32, "--eval.dataset"), tok, cfg.data)
    batch = preference_collate(list(data), pad_id=tok.pad_token_id)
    with torch.no_grad():
        mine = sequence_scores(ours, batch["input_ids"], batch["attention_mask"])
    theirs = _hf_scores(hf, list(data), tok.pad_token_id)
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)

    # the training-set reward statistics travel in config.json
    mean, std = get_reward_stats(json.loads((out / "config.json").read_text()))
    train = PreferenceDataset(load_rows(str(toy.pairs), "train", None, "--data.dataset"), tok, cfg.data)
    scores = _hf_scores(hf, list(train), tok.pad_token_id).double()
    assert mean == pytest.approx(scores.mean().item(), abs=1e-4)
    assert std == pytest.approx(scores.std().item(), abs=1e-4)
    assert (mean, std) == get_reward_stats(hf.config)


@pytest.mark.slow
def test_rm_packing_accumulation_and_loss_variants(toy, tmp_path):
    from repulse.trainers import rm

    def go(name: str, **over) -> list[float]:
        rm.run(pairs_cfg(toy, tmp_path / name, data__max_samples=16, **over))
        return series(tmp_path / name, "loss")

    base = go("pad")
    # chosen and rejected as separate padded rows = one row per pair holding the prompt once
    assert go("unshared", engine__shared_prompt_enable=False) == pytest.approx(base, abs=1e-5)
    assert go("eager", engine__attn_implementation="eager") == pytest.approx(base, abs=1e-5)
    # 8 pairs as 8 micro-batches of 1 (accumulated) = 2 micro-batches of 4
    assert go("micro1", train__micro_batch_size=1) == pytest.approx(base, abs=1e-5)
    # log-exp equals Bradley-Terry term by term (without a margin)
    assert go("logexp", model__loss_type="logexp") == pytest.approx(base, abs=1e-5)
    assert go("fp32", model__compute_fp32_loss_enable=True) == pytest.approx(base, abs=1e-6)
    # the margin (0.5 or 1.0 per toy pair) must be beaten: a larger loss at the same scores
    margin = go("margin", model__margin_loss_enable=True)
    assert margin[0] > base[0] + 0.1
    assert series(tmp_path / "margin", "margin")[0] == pytest.approx(series(tmp_path / "pad", "margin")[0])


@pytest.mark.slow
def test_rm_packed_equals_padded_on_mixed_lengths(toy, tmp_path):
    """16 pairs of mixed lengths (every fourth pair four joined), micro-batches of 8, 2 steps, in
    four layouts: one pair per row (prompt shared, the default), pairs packed into rows as long as
    the longest pair, chosen and rejected as separate padded rows, and all 16 sequences of a
    micro-batch packed into one row. The packed layouts put several pairs in a row (at most 3/4
    of the rows, fewer positions) and every step's loss, margin and gradient norm equal the
    default layout's (1e-5; the gradient norm within ``same_update.METRIC_RTOL``): each score is
    read at its own sequence's last token."""
    from packing import TrainedForwards, assert_packed_fewer, mixed_length_pairs
    from same_update import approx

    from repulse.trainers import rm

    data = str(mixed_length_pairs(toy.pairs, tmp_path / "mixed.jsonl", n=16))

    def go(name: str, **over) -> tuple[TrainedForwards, list[dict]]:
        cfg = pairs_cfg(toy, tmp_path / name, data__max_len=96, train__micro_batch_size=8, **over)
        cfg.data.dataset = data
        with TrainedForwards() as seen:
            rm.run(cfg)
        return seen, train_rows(tmp_path / name)

    pad_fw, base = go("pad")
    assert [r["step"] for r in base] == [1, 2]
    pack_fw, packed = go("pack", engine__packing_samples=True)
    assert_packed_fewer(pad_fw, pack_fw, rows_per_forward=8)
    unshared_fw, unshared = go("unshared", engine__shared_prompt_enable=False)
    assert {r for r, _ in unshared_fw.shapes} == {16}  # chosen and rejected rows
    one_row_fw, one_row = go("one_row", engine__packing_samples=True, engine__shared_prompt_enable=False)
    assert {r for r, _ in one_row_fw.shapes} == {1}  # the whole micro-batch in one row
    assert one_row_fw.positions < unshared_fw.positions
    for name, rows in (("pack", packed), ("unshared", unshared), ("one_row", one_row)):
        for key in ("loss", "margin"):
            assert [r[key] for r in rows] == pytest.approx([r[key] for r in base], abs=1e-5), (name, key)
        assert [r["grad_norm"] for r in rows] == approx([r["grad_norm"] for r in base]), name


def test_rm_flags_are_checked_at_parse_time():
    from repulse.config import parse_config
    from repulse.errors import UserError
    from repulse.trainers import rm

    with pytest.raises(UserError, match="--model.loss_type"):
        parse_config("rm", OfflineConfig, ["--model.model_name_or_path", "m", "--data.dataset", "d",
                                           "--model.loss_type", "hinge"], rm.validate)  # fmt: skip
    with pytest.raises(UserError, match="--model.model_name_or_path"):
        parse_config("rm", OfflineConfig, ["--data.dataset", "d"], rm.validate)


@pytest.mark.slow
def test_rm_bad_pairs_through_the_cli(toy, tmp_path):
    base = ["rm", "--model.model_name_or_path", str(toy.llama), "--data.max_len", "64",
            "--train.batch_size", "4", "--train.micro_batch_size", "4", "--train.max_steps", "1",
            "--logger.progress_bar", "false", "--ckpt.output_dir", str(tmp_path / "out")]  # fmt: skip
    rows = [json.loads(ln) for ln in toy.pairs.read_text().splitlines()[:8]]
    missing = tmp_path / "missing.jsonl"
    missing.write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "rejected"}) + "\n" for r in rows)
    )
    assert_clean_error(cli([*base, "--data.dataset", str(missing)]), "'rejected'", "--data.rejected_key")
    renamed = cli([*base, "--data.dataset", str(toy.pairs), "--data.chosen_key", "preferred"])
    assert_clean_error(renamed, "'preferred'", "--data.chosen_key")
    same = tmp_path / "same.jsonl"
    same.write_text("".join(json.dumps({**r, "rejected": r["chosen"]} if i < 3 else r) + "\n"
                            for i, r in enumerate(rows)))  # fmt: skip
    proc = cli([*base, "--data.dataset", str(same), "--data.prompt_key", "prompt"])
    assert proc.returncode == 0, proc.stderr
    assert (
        "warning" in proc.stderr
        and "3 of 8 preference pairs have identical chosen and rejected" in proc.stderr
    )
    no_margin = tmp_path / "no_margin.jsonl"
    no_margin.write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "margin"}) + "\n" for r in rows)
    )
    proc = cli(
        [*base, "--data.dataset", str(no_margin), "--data.prompt_key", "prompt", "--model.margin_loss_enable",
         "--ckpt.overwrite"]
    )  # fmt: skip
    assert_clean_error(proc, "--model.margin_loss_enable", "'margin'", "8 of 8 rows")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted((RECIPES / "rm").glob("*.yaml")), ids=lambda p: p.stem)
def test_rm_recipes_run(toy, tmp_path, monkeypatch, recipe):
    """The recipe trains 2 steps; its output loads in transformers as a one-label sequence
    classifier that scores a polite and a rude answer as repulse's own loader does (1e-5), with
    the training set's reward statistics in its config."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from repulse.models.loading import get_reward_stats, load_scalar_model, sequence_scores

    out = run_recipe(toy, tmp_path, "rm", recipe, monkeypatch)
    hf = AutoModelForSequenceClassification.from_pretrained(out, num_labels=1).eval()
    assert hf.config.architectures == ["LlamaForSequenceClassification"] and hf.config.num_labels == 1
    tok = AutoTokenizer.from_pretrained(out)
    prompt = TEMPLATE.format("say the word lime.")
    items = [{"chosen_ids": tok(prompt + "lime. thank you.")["input_ids"],
              "rejected_ids": tok(prompt + "lime. you idiot.")["input_ids"]}]  # fmt: skip
    theirs = _hf_scores(hf, items, tok.pad_token_id)
    ours = load_scalar_model(str(out), init_from_lm=False, trainable=False)
    batch = [items[0]["chosen_ids"], items[0]["rejected_ids"]]
    width = max(map(len, batch))
    ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s in batch])
    attn = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch])
    with torch.no_grad():
        mine = sequence_scores(ours, ids, attn)
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)
    assert theirs[0] != theirs[1]
    mean, std = get_reward_stats(hf.config)
    assert "repulse_reward_mean" in hf.config.to_dict() and math.isfinite(mean) and std > 0


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(
    "engine",
    ["fsdp", pytest.param("deepspeed", marks=pytest.mark.skipif(not HAS_DS, reason=DS_REASON))],
)
def test_rm_two_processes_reproduce_one(toy, tmp_path, engine):
    """2 gloo processes (fsdp, or deepspeed ZeRO-3) vs 1 local process: losses and metrics within
    a relative 1e-4 and the same update (fp32; only the reduction order differs; ``same_update``)."""
    from repulse.trainers import rm

    one = tmp_path / "one"
    # 9 eval pairs over 2 processes in micro-batches of 4: shards of 5 and 4 - the shorter one
    # runs a dropped copy so that both run 2 forwards (sharded engines would hang otherwise)
    ev = dict(eval__dataset=str(toy.pairs_eval), eval__max_samples=9)
    rm.run(pairs_cfg(toy, one, train__max_steps=3, **ev))
    two_cfg = pairs_cfg(
        toy, tmp_path / "two", train__max_steps=3, engine__backend=engine, engine__zero_stage=3, **ev
    )
    two_cfg.engine.param_dtype = "fp32"
    torchrun(["rm", "--config", cfg_file(two_cfg, tmp_path / "two.yaml")], cwd=tmp_path)
    assert_two_processes_match(
        toy.llama, one, tmp_path / "two", ("loss", "acc", "margin", "chosen_reward", "grad_norm")
    )
    from same_update import approx

    ea, eb = eval_rows(one), eval_rows(tmp_path / "two")
    assert [r["step"] for r in ea] == [r["step"] for r in eb] == [0, 3]
    for ra, rb in zip(ea, eb):  # every eval pair counted once: the same averages
        for key in ("eval_loss", "eval_acc", "eval_margin"):
            assert rb[key] == approx(ra[key]), (key, ra, rb)
    cfg_one = json.loads((one / "config.json").read_text())
    cfg_two = json.loads((tmp_path / "two" / "config.json").read_text())
    assert cfg_two["repulse_reward_mean"] == pytest.approx(cfg_one["repulse_reward_mean"], abs=1e-5)
    assert cfg_two["repulse_reward_std"] == pytest.approx(cfg_one["repulse_reward_std"], abs=1e-5)


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(toy, tmp_path):
    """``repulse rm`` for 12 steps, checkpoints every 4, SIGKILLed after step_4 is on disk and
    later steps are logged, resumed with ``--ckpt.load_enable``: every logged metric, the final
    weights (the fresh score head included) and the training-set reward statistics in
    config.json equal an uninterrupted run's bit for bit, and metrics.jsonl holds steps 1..12
    once each (``resume.py``)."""
    from resume import assert_kill_and_resume_is_bit_identical

    argv = [
        "rm",
        "--model.model_name_or_path", str(toy.llama),
        "--data.dataset", str(toy.pairs), "--data.prompt_key", "prompt",
        "--data.input_template", TEMPLATE, "--data.max_len", "64",
        "--train.batch_size", "8", "--train.micro_batch_size", "4", "--train.max_steps", "12",
        "--adam.lr", "1e-3", "--ckpt.save_steps", "4", "--logger.progress_bar", "false",
    ]  # fmt: skip
    full, part = assert_kill_and_resume_is_bit_identical(argv, tmp_path, every=4, n=12)
    stats = [json.loads((out / "config.json").read_text()) for out in (full, part)]
    for key in ("repulse_reward_mean", "repulse_reward_std"):
        assert stats[0][key] == stats[1][key], key
