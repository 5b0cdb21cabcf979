"""Non-finite numbers stop a training run: an exploding learning rate (a real one), an infinite
loss and a NaN gradient end ``repulse sft`` (and ``repulse dpo``) with exit status 2 and one
paragraph naming the step and the quantity; the last checkpoint is finite and loads; nothing
non-finite is saved. ``--train.nan_policy skip`` drops such steps, counts them, and stops after
``--train.nan_max_consecutive_skips`` in a row."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_rm import pairs_cfg

from repulse.config.sections import OfflineConfig
from repulse.errors import NonFiniteError
from repulse.trainers import dpo, sft

# Runs ``repulse <argv>`` in a fresh process after wrapping SFTMethod.loss: on the steps in BAD
# (one micro-batch per step in these runs) the loss gets ``+inf`` ("inf") or a term worth 0 whose
# gradient is NaN ("nan_grad": d/dx sqrt(x^2) at 0 is inf * 0).
HOOKED_CLI = """
import sys, torch
from repulse.cli import main
from repulse.trainers import sft
KIND, BAD = sys.argv[1], {int(s) for s in sys.argv[2].split(",")}
original, calls = sft.SFTMethod.loss, [0]
def loss(self, batch):
    res = original(self, batch)
    calls[0] += 1
    if calls[0] in BAD:
        if KIND == "inf":
            res.loss_sum = res.loss_sum + float("inf")
        else:
            p = next(self.engine.module.parameters())
            res.loss_sum = res.loss_sum + torch.sqrt((p - p.detach()).pow(2)).sum()
    return res
sft.SFTMethod.loss = loss
raise SystemExit(main(sys.argv[3:]))
"""


def _sft_flags(toy, out: Path, *extra: str) -> list[str]:
    return [
        "sft",
        "--model.model_name_or_path", str(toy.llama),
        "--data.dataset", str(toy.sft),
        "--data.input_key", "input", "--data.output_key", "output",
        "--data.max_len", "96",
        "--train.batch_size", "8", "--train.micro_batch_size", "8",
        "--train.max_steps", "6",
        "--adam.lr", "1e-3",
        "--ckpt.output_dir", str(out),
        "--ckpt.save_steps", "1", "--ckpt.max_num", "10",
        "--logger.progress_bar", "false",
        *extra,
    ]  # fmt: skip


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _assert_stopped(toy, proc: subprocess.CompletedProcess, out: Path, quantity: str, step: int) -> None:
    """Exit 2, one paragraph (no traceback) naming the quantity and the step; checkpoints up to the
    step before, each finite and loadable into the model; no final model exported."""
    from safetensors.torch import load_file

    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    err = proc.stderr[proc.stderr.index("error:") :].strip()
    assert "\n\n" not in err
    flat = " ".join(err.split())
    assert flat.startswith(f"error: non-finite {quantity} at step {step}:"), flat
    assert "nothing non-finite was saved" in flat
    assert not (out / "model.safetensors").exists()
    steps = sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").iterdir())
    assert steps == list(range(1, step)), steps
    last = load_file(out / "checkpoints" / f"step_{step - 1}" / "model" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in last.values())
    _model_dir_loads(toy, out / "checkpoints" / f"step_{step - 1}")


@pytest.mark.slow
def test_exploding_learning_rate_stops_at_the_first_non_finite_gradient(toy, tmp_path):
    """lr 1e6 without clipping: step 1's update is finite but huge, step 2's gradient is NaN. The run
    must stop there, before applying it - a real exploding run, nothing patched."""
    out = tmp_path / "run"
    proc = _run(
        [sys.executable, "-m", "repulse", *_sft_flags(toy, out, "--adam.lr", "1e6", "--optim.max_norm", "0")]
    )
    step = int(re.search(r"at step (\d+)", proc.stderr).group(1)) if "at step" in proc.stderr else -1
    assert step >= 2, proc.stderr[-3000:]
    _assert_stopped(toy, proc, out, "grad_norm", step)
    rows = _metrics(out)
    assert rows[-1]["step"] == step and rows[-1]["update_skipped"] == 1.0 and rows[-1]["grad_norm"] == "nan"
    assert all(math.isfinite(r["grad_norm"]) for r in rows[:-1])


@pytest.mark.slow
@pytest.mark.parametrize("kind,quantity", [("inf", "loss"), ("nan_grad", "grad_norm")])
def test_infinite_loss_and_nan_gradient_stop_the_cli(toy, tmp_path, kind, quantity):
    out = tmp_path / kind
    proc = _run([sys.executable, "-c", HOOKED_CLI, kind, "3", *_sft_flags(toy, out)])
    _assert_stopped(toy, proc, out, quantity, 3)


def _model_dir_loads(toy, ckpt: Path) -> None:
    """The checkpoint's weights load strictly into the run's model class."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(toy.llama)
    model.load_state_dict(load_file(ckpt / "model" / "model.safetensors"), strict=True)


def _cfg(toy, out: Path, **over) -> OfflineConfig:
    cfg = OfflineConfig()
    cfg.model.model_name_or_path = str(toy.llama)
    cfg.data.dataset = str(toy.sft)
    cfg.data.input_key, cfg.data.output_key = "input", "output"
    cfg.data.max_len = 96
    cfg.train.batch_size = cfg.train.micro_batch_size = 8
    cfg.train.max_steps = 5
    cfg.adam.lr = 1e-3
    cfg.optim.lr_scheduler, cfg.optim.lr_warmup_ratio = "linear", 0.0
    cfg.ckpt.output_dir = str(out)
    cfg.logger.progress_bar = False
    for key, value in over.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return cfg


def _inf_on(monkeypatch, steps: set[int]) -> None:
    original, calls = sft.SFTMethod.loss, [0]

    def loss(self, batch):
        res = original(self, batch)
        calls[0] += 1
        if calls[0] in steps:
            res.loss_sum = res.loss_sum + float("inf")
        return res

    monkeypatch.setattr(sft.SFTMethod, "loss", loss)


@pytest.mark.slow
def test_skip_policy_drops_the_bad_steps_and_counts_them(toy, tmp_path, monkeypatch):
    """Steps 2 and 3 have an infinite loss: both are dropped (no update, the linear schedule does not
    move on: step 4 runs at step 2's lr), the run finishes, the final model is finite."""
    _inf_on(monkeypatch, {2, 3})
    out = tmp_path / "skip"
    sft.run(_cfg(toy, out, train__nan_policy="skip", train__nan_max_consecutive_skips=3))
    rows = {r["step"]: r for r in _metrics(out)}
    assert [s for s, r in rows.items() if r.get("update_skipped")] == [2, 3]
    assert [s for s, r in rows.items() if r.get("nonfinite_loss")] == [2, 3]
    assert [rows[s]["skipped_steps"] for s in range(1, 6)] == [0, 1, 2, 2, 2]
    assert rows[2]["lr"] == rows[3]["lr"] == rows[4]["lr"] > rows[5]["lr"]
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(out / "model.safetensors").values())


@pytest.mark.slow
def test_skip_policy_stops_after_k_steps_in_a_row(toy, tmp_path, monkeypatch):
    _inf_on(monkeypatch, {2, 3, 4, 5})
    out = tmp_path / "skip_stop"
    with pytest.raises(NonFiniteError) as err:
        sft.run(
            _cfg(toy, out, train__nan_policy="skip", train__nan_max_consecutive_skips=2, ckpt__save_steps=1)
        )
    text = " ".join(str(err.value).split())
    assert err.value.step == 3 and err.value.quantity == "loss"
    assert "2 steps in a row were dropped" in text
    assert not (out / "model.safetensors").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_1", "step_2"]
    _model_dir_loads(toy, out / "checkpoints" / "step_2")


@pytest.mark.slow
def test_dpo_with_an_exploding_learning_rate_stops_too(toy, tmp_path):
    """The same guard runs for every offline command (the shared fit loop): repulse dpo, lr 1e6."""
    out = tmp_path / "dpo"
    cfg = pairs_cfg(toy, out, train__batch_size=8, train__micro_batch_size=8, train__max_steps=6)
    cfg.adam.lr, cfg.optim.max_norm, cfg.optim.lr_warmup_ratio = 1e6, 0.0, 0.0
    cfg.ckpt.save_steps = 1
    with pytest.raises(NonFiniteError) as err:
        dpo.run(cfg)
    assert err.value.quantity in {"loss", "grad_norm"} and err.value.step >= 2
    assert not (out / "model.safetensors").exists()
    steps = sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").iterdir())
    assert steps == list(range(1, err.value.step))
    _model_dir_loads(toy, out / "checkpoints" / f"step_{steps[-1]}")


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_rl_with_an_exploding_learning_rate_stops_or_skips(toy, tmp_path, policy):
    """repulse rl (RLOO, no critic) with an actor lr of 1e6 and no clipping: the RL loop runs the same
    guard - stop ends at the first dropped update, skip drops updates and stops after 2 in a row.
    The last checkpoint is finite; no policy is exported."""
    from test_rl import rl_cfg

    from repulse.trainers.rl import run

    out = tmp_path / policy
    cfg = rl_cfg(toy, out, algo__advantage__estimator="rloo", train__max_steps=6, ckpt__save_steps=1)
    cfg.actor.adam.lr, cfg.actor.optim.max_norm = 1e6, 0.0
    cfg.train.nan_policy, cfg.train.nan_max_consecutive_skips = policy, 2
    with pytest.raises(NonFiniteError) as err:
        run(cfg)
    assert err.value.step is not None and err.value.step >= 2
    if policy == "skip":
        assert "2 steps in a row were dropped" in " ".join(str(err.value).split())
    assert not (out / "model.safetensors").exists()
    steps = sorted(int(p.name.split("_")[1]) for p in (out / "checkpoints").iterdir())
    from safetensors.torch import load_file

    last = load_file(out / "checkpoints" / f"step_{steps[-1]}" / "actor" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in last.values())
