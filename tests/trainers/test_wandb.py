"""wandb flags with OpenRLHF's meaning: ``--use_wandb KEY`` or ``--use_wandb True`` (the account
wandb is logged into), ``--wandb_org/_project/_group/_run_name``. Runs offline
(``WANDB_MODE=offline``): a real wandb run directory under the output directory, read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_rm import ROOT, assert_clean_error

from repulse.errors import UserError
from repulse.run.metrics import wandb_api_key

pytest.importorskip("wandb", reason="wandb is an optional extra (pip install 'repulse[wandb]')")


def test_true_means_the_logged_in_account_anything_else_is_the_key():
    assert wandb_api_key("True") is None and wandb_api_key("true") is None and wandb_api_key(" TRUE ") is None
    assert wandb_api_key("0123456789abcdef" * 3) == "0123456789abcdef" * 3


def _seed_flags(toy, out: Path, key: str) -> list[str]:
    return [
        "--pretrain", str(toy.llama), "--dataset", str(toy.sft), "--input_key", "input", "--output_key",
        "output", "--input_template", "User: {}\nAssistant: ", "--max_len", "64", "--train_batch_size", "4",
        "--micro_train_batch_size", "4", "--max_samples", "12", "--save_path", str(out), "--logger.progress_bar",
        "false", "--use_wandb", key, "--wandb_org", "my-team", "--wandb_project", "toy-sft", "--wandb_group",
        "ablation", "--wandb_run_name", "run-1",
    ]  # fmt: skip


def _records(run_file: Path) -> tuple[dict, list[dict]]:
    """The run record and the history rows of an offline ``.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb
    from wandb.sdk.internal import datastore

    store = datastore.DataStore()
    store.open_for_scan(str(run_file))
    run, history = {}, []
    while (data := store.scan_data()) is not None:
        record = pb.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run = {"entity": r.entity, "project": r.project, "group": r.run_group, "name": r.display_name}
        elif kind == "history":
            history.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return run, history


def cli_env(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """``repulse <args>`` in a clean environment (its own HOME: no wandb login, no settings)."""
    env = {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "repulse", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env=env,
    )


def _env(home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return {**env, "HOME": str(home), **extra}


@pytest.mark.slow
@pytest.mark.parametrize("key", ["True", "a" * 40])
def test_an_offline_run_holds_the_logged_metrics(key, toy, tmp_path):
    (tmp_path / "home").mkdir()
    out = tmp_path / "run"
    proc = cli_env(
        ["sft", *_seed_flags(toy, out, key)], tmp_path, _env(tmp_path / "home", WANDB_MODE="offline")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    run, history = _records(run_file)
    assert run == {"entity": "my-team", "project": "toy-sft", "group": "ablation", "name": "run-1"}
    logged = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    expected = {r["step"]: r["loss"] for r in logged if "loss" in r}
    assert sorted(expected) == [1, 2, 3]
    assert {h["_step"]: h["loss"] for h in history if "loss" in h} == expected
    assert not (tmp_path / "home" / ".netrc").exists()  # a key is given to the run, not stored


@pytest.mark.slow
def test_true_without_a_logged_in_account_says_what_to_do(toy, tmp_path):
    """Before, ``True`` went to ``wandb.login`` as the API key and failed with a traceback."""
    (tmp_path / "home").mkdir()
    env = _env(tmp_path / "home")
    proc = cli_env(["sft", *_seed_flags(toy, tmp_path / "run", "True")], tmp_path, env)
    assert_clean_error(
        proc, "--logger.wandb.key True (--use_wandb True) logs in as the account", "wandb login"
    )


def test_without_wandb_installed_one_line_names_the_extra(tmp_path, monkeypatch):
    """wandb is installed here; hiding it from the import system is what a machine without it sees."""
    from repulse.config.sections import LoggerSection
    from repulse.run.metrics import MetricsLog

    monkeypatch.setitem(sys.modules, "wandb", None)
    logger = LoggerSection()
    logger.wandb.key = "True"
    with pytest.raises(
        UserError, match=r"needs the optional package 'wandb': pip install 'repulse\[wandb\]'"
    ):
        MetricsLog(tmp_path, logger, {}, True, 0)
