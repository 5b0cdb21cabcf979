"""A paragraph, not a traceback: values outside a field's range and model paths that cannot be a
model are refused when the flags are parsed - before any model is loaded or the Hub is asked -
with exit status 2 and the flag named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from repulse.config import parse_config
from repulse.config.paths import looks_local, model_path_problem
from repulse.config.schema import help_text
from repulse.config.sections import OfflineConfig, RLConfig
from repulse.errors import UserError

ROOT = Path(__file__).resolve().parents[2]

# every case runs through repulse.cli.main in one fresh process; a marker line follows each
RUNNER = """
import json, sys
from repulse.cli import main
for argv in json.loads(sys.argv[1]):
    rc = main(argv)
    print(f"@@rc {rc}", file=sys.stderr, flush=True)
"""


def _cli_cases(cases: list[list[str]], cwd: Path) -> list[tuple[int, str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(cases)],
        capture_output=True, text=True, timeout=300, env=env, cwd=cwd,
    )  # fmt: skip
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-4000:]
    parts = proc.stderr.split("@@rc ")
    results = []
    for i in range(len(cases)):
        err = parts[i] if i == 0 else parts[i].split("\n", 1)[1]
        rc = int(parts[i + 1].split("\n", 1)[0])
        results.append((rc, " ".join(err.split())))
    return results


VALUE_CASES = [
    (["sft", "--adam.lr", "-1e-3"], "error: --adam.lr must be > 0, got -0.001."),
    (["sft", "--adam.lr", "nan"], "error: --adam.lr is NaN: give a number."),
    (["sft", "--adam.lr", "0"], "error: --adam.lr must be > 0, got 0.0."),
    (["rl", "--actor.adam.lr", "inf"], "error: --actor.adam.lr must be a finite number > 0, got inf."),
    (["rl", "--rollout.max_new_tokens", "0"], "error: --rollout.max_new_tokens must be >= 1, got 0."),
    (["sft", "--train.micro_batch_size", "0"], "error: --train.micro_batch_size must be >= 1, got 0."),
    (["sft", "--train.max_steps", "0"], "error: --train.max_steps must be >= 1, or -1, got 0."),
    (["rl", "--rollout.top_p", "1.5"], "error: --rollout.top_p must be > 0 and <= 1, got 1.5."),
    (["dpo", "--model.label_smoothing", "0.7"], "error: --model.label_smoothing must be >= 0 and <= 0.5, got 0.7."),
    (["sft", "--adam.betas", "0.9", "1.0"], "error: --adam.betas must be >= 0 and < 1, got 1.0."),
    (["eval-tail", "--tail.cvar_levels", "0.01", "2"], "error: --tail.cvar_levels must be > 0 and <= 1, got 2.0."),
    (["sft", "--train.nan_policy", "ignore"], "error: --train.nan_policy 'ignore' is not known: choose one of: stop, skip."),
    (["sft", "--optim.lr_scheduler", "cosine"], "error: --optim.lr_scheduler 'cosine' is not known: choose one of:"),
]  # fmt: skip


@pytest.mark.slow
def test_out_of_range_values_exit_2_naming_the_flag(tmp_path):
    results = _cli_cases([argv for argv, _ in VALUE_CASES], tmp_path)
    for (argv, expected), (rc, err) in zip(VALUE_CASES, results):
        assert rc == 2, (argv, err)
        assert err.startswith(expected), (argv, err)


def _model_dirs(toy, tmp_path: Path) -> dict[str, str]:
    """A directory that is not a model, a model without its tokenizer, a file."""
    import shutil

    not_model = tmp_path / "notes"
    not_model.mkdir()
    (not_model / "readme.txt").write_text("hello")
    no_tok = tmp_path / "weights_only"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(toy.llama / name, no_tok / name)
    return {"not_model": str(not_model), "no_tok": str(no_tok), "file": str(toy.sft), "llama": str(toy.llama)}


@pytest.mark.slow
def test_model_paths_that_cannot_be_a_model_exit_2_before_loading(toy, tmp_path):
    """Recognised at parse time, never sent to the Hub: a directory that is not a model, one without
    a tokenizer (transformers' "need sentencepiece or tiktoken"), a file, missing relative paths.
    The whole batch of cases is quick: no Hub lookup with retries."""
    d = _model_dirs(toy, tmp_path)
    rl = ["rl", "--data.prompt_dataset", str(toy.prompts), "--reward.remote_url", "r.py"]
    cases = [
        (["sft", "--model.model_name_or_path", d["not_model"]],
         f"error: --model.model_name_or_path: {d['not_model']} is a directory but not a Hugging Face model directory (it has no config.json)."),
        (["sft", "--model.model_name_or_path", d["no_tok"]],
         f"error: --model.model_name_or_path: {d['no_tok']} has no tokenizer (none of tokenizer.json,"),
        (["sft", "--model.model_name_or_path", d["file"]],
         f"error: --model.model_name_or_path: {d['file']} is a file, not a model directory."),
        (["sft", "--model.model_name_or_path", "runs/missing/lm"],
         "error: --model.model_name_or_path: runs/missing/lm: no such directory (a local-looking path is never looked up on the Hugging Face Hub)."),
        ([*rl, "--actor.model_name_or_path", "./policy"],
         "error: --actor.model_name_or_path: ./policy: no such directory"),
        ([*rl, "--actor.model_name_or_path", d["llama"], "--reward.model_name_or_path", f"{d['llama']},../rm"],
         "error: --reward.model_name_or_path: ../rm: no such directory"),
        (["kd", "--model.model_name_or_path", d["llama"], "--data.dataset", "x.jsonl", "--model.teacher_model", d["not_model"]],
         f"error: --model.teacher_model: {d['not_model']} is a directory but not a Hugging Face model directory"),
    ]  # fmt: skip
    start = time.time()
    results = _cli_cases([argv for argv, _ in cases], tmp_path)
    assert time.time() - start < 120
    for (argv, expected), (rc, err) in zip(cases, results):
        assert rc == 2, (argv, err)
        assert err.startswith(expected), (argv, err)


def test_ranges_checked_for_yaml_values_and_defaults_pass(tmp_path):
    parse_config("sft", OfflineConfig, [])
    parse_config("rl", RLConfig, ["--dry-run"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_size: 0\n")
    with pytest.raises(UserError, match=r"--train.batch_size must be >= 1, got 0"):
        parse_config("sft", OfflineConfig, ["--config", str(bad)])
    ok = parse_config("sft", OfflineConfig, ["--train.max_steps", "-1", "--optim.max_norm", "0"])
    assert ok.train.max_steps == -1 and ok.optim.max_norm == 0.0


def test_help_shows_the_allowed_values():
    text = help_text(OfflineConfig, "sft")
    assert "--adam.lr" in text and "learning rate [> 0] (default: 5e-06)" in text
    assert "[one of: stop, skip]" in text and "[>= 1, or -1]" in text


def test_dry_run_does_not_check_model_paths(capsys):
    """A recipe may name a model that an earlier stage has yet to train."""
    assert (
        parse_config("sft", OfflineConfig, ["--model.model_name_or_path", "runs/x/lm", "--dry-run"]) is None
    )
    assert "runs/x/lm" in capsys.readouterr().out


@pytest.mark.parametrize(
    "path,local",
    [("./lm", True), ("../lm", True), ("/abs/lm", True), ("~/lm", True), ("a/b/c", True),
     ("org/name", False), ("gpt2", False), ("Qwen/Qwen2.5-0.5B-Instruct", False)],
)  # fmt: skip
def test_looks_local(path, local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert looks_local(path) is local


def test_an_org_name_path_under_an_existing_local_folder_is_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert looks_local("runs/lm") and not looks_local("org/lm")
    assert "no such directory" in model_path_problem("runs/lm")
    assert model_path_problem("org/lm") is None  # a Hub id: left to transformers


def test_loaders_check_paths_too(tmp_path, toy):
    """Programmatic runs (no flag parsing) get the same checks from the loaders themselves."""
    from repulse.models.loading import load_causal_lm, load_tokenizer

    d = _model_dirs(toy, tmp_path)
    with pytest.raises(UserError, match="has no tokenizer"):
        load_tokenizer(d["no_tok"])
    with pytest.raises(UserError, match="no such directory"):
        load_causal_lm("./definitely/not/here")
    with pytest.raises(UserError, match="no config.json"):
        load_causal_lm(d["not_model"])
    assert load_tokenizer(str(toy.tokenizer)).pad_token is not None  # a tokenizer-only directory is fine
