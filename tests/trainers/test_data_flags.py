"""``--data.disable_fast_tokenizer`` and ``--data.dataloader_num_workers`` reach every offline
trainer (seed forms ``--disable_fast_tokenizer``, ``--dataloader_num_workers``), and commands
that would ignore them refuse them."""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import pytest
from test_moe_aux_loss import _config
from test_rm import assert_clean_error, cli

from repulse.config import parse_config
from repulse.config.sections import RLConfig
from repulse.errors import UserError

COMMANDS = ["sft", "dpo", "rm", "kto", "kd", "prm"]


# --------------------------------------------------------------------------- slow tokenizer


@pytest.mark.parametrize("command", COMMANDS)
def test_disable_fast_tokenizer_reaches_every_trainer(command, toy, tmp_path):
    """The toy's byte-level BPE has only a fast form, so every trainer must refuse the flag
    (with the flag ignored, each would train with the fast tokenizer)."""
    import importlib

    trainer = importlib.import_module(f"repulse.trainers.{command}")
    cfg = _config(command, toy, toy.llama, tmp_path / command, 0.0)
    cfg.data.disable_fast_tokenizer = True
    with pytest.raises(UserError, match="--data.disable_fast_tokenizer asks for a slow"):
        trainer.run(cfg)


def test_seed_disable_fast_tokenizer_is_one_clear_paragraph(toy, tmp_path):
    flags = ["--pretrain", str(toy.llama), "--dataset", str(toy.sft), "--input_key", "input",
             "--output_key", "output", "--save_path", str(tmp_path / "o"), "--disable_fast_tokenizer"]  # fmt: skip
    proc = cli(["sft", *flags], cwd=tmp_path, timeout=120)
    assert_clean_error(
        proc, "--data.disable_fast_tokenizer asks for a slow (pure-Python) tokenizer", "Drop the flag"
    )


@pytest.mark.parametrize(
    "flag, value",
    [("--data.disable_fast_tokenizer", []), ("--data.dataloader_num_workers", ["2"])],
)
def test_commands_that_would_ignore_the_data_flags_refuse_them(flag, value):
    with pytest.raises(
        UserError,
        match=f"{flag} .* is not read by repulse rl, which would ignore it: only repulse sft, .* read it",
    ):
        parse_config("rl", RLConfig, ["--pretrain", "m", flag, *value])


# --------------------------------------------------------------------------- dataloader workers


def _losses(out: Path) -> list[float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("command, packing", [("sft", False), ("sft", True), ("dpo", False)])
def test_workers_give_bit_identical_losses(command, packing, toy, tmp_path):
    """Two epochs of 3 steps of 2 micro-batches: the workers build the steps ahead, the losses
    (and so the updates) are the same floats as with inline collation."""
    import importlib

    trainer = importlib.import_module(f"repulse.trainers.{command}")
    losses = []
    for workers in (0, 2):
        cfg = _config(command, toy, toy.llama, tmp_path / f"w{workers}", 0.0)
        cfg.data.max_samples, cfg.train.max_steps, cfg.train.max_epochs = 24, -1, 2
        cfg.engine.packing_samples = packing
        cfg.data.dataloader_num_workers = workers
        trainer.run(cfg)
        losses.append(_losses(tmp_path / f"w{workers}"))
    assert len(losses[0]) == 6 and len(set(losses[0])) == 6
    assert losses[0] == losses[1]


class PidCollate:
    """The trainer's collate, plus the id of the process that ran it."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict:
        from repulse.data.collate import pad_collate

        return {**pad_collate(items, pad_id=self.pad_id), "collated_by": os.getpid()}


@pytest.mark.slow
def test_worker_processes_collate_the_batches(toy, tmp_path):
    from repulse.data.sft import SFTDataset
    from repulse.engine import build_engine
    from repulse.engine.spec import optim_spec_from
    from repulse.models.loading import load_causal_lm, load_tokenizer
    from repulse.run.start import start_run
    from repulse.trainers.common import fit_spec, load_split
    from repulse.trainers.fit import fit
    from repulse.trainers.sft import SFTMethod

    cfg = _config("sft", toy, toy.llama, tmp_path / "run", 0.0)
    cfg.train.max_steps, cfg.data.dataloader_num_workers = 4, 2
    run = start_run(cfg)
    tokenizer = load_tokenizer(str(toy.llama), padding_side="right")
    rows = load_split(cfg.data.dataset, "train", 32, None, 0, "--data.dataset")
    spec = fit_spec(
        cfg, run, SFTDataset(rows, tokenizer, cfg.data), None, PidCollate(tokenizer.pad_token_id), "sft"
    )
    engine = build_engine(
        load_causal_lm(str(toy.llama)), optim_spec_from(cfg.adam, cfg.muon, cfg.optim, 4), cfg.engine
    )
    seen: list[int] = []

    class Recording(SFTMethod):
        def loss(self, batch):
            seen.append(batch["collated_by"])
            return super().loss(batch)

    fit(engine, Recording(engine), spec)
    assert len(seen) == 8  # 4 steps x 2 micro-batches
    assert os.getpid() not in seen and len(set(seen)) == 2  # steps alternate between the two workers
    spec.num_workers = 0
    seen.clear()
    fit(engine, Recording(engine), spec)
    assert set(seen) == {os.getpid()}


def test_negative_workers_are_refused():
    from repulse.data.collate import MicroBatcher
    from repulse.data.loader import step_batches

    with pytest.raises(UserError, match="--data.dataloader_num_workers must be >= 0, got -1"):
        next(step_batches([{}], partial(dict), MicroBatcher(1, 1), range(1), -1))
