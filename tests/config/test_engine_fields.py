"""Seed DeepSpeed flags select the DeepSpeed engine; ``--engine.*`` values an engine would not use
are warned about by name (or refused), never dropped silently."""

from __future__ import annotations

import re
import sys

import pytest

import repulse.errors
from repulse.config import parse_config
from repulse.config.sections import OfflineConfig, RLConfig
from repulse.errors import UserError

BASE = ["--pretrain", "m", "--dataset", "d"]


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(repulse.errors, "_warned", set())


def _sft(argv, *extra):
    return parse_config("sft", OfflineConfig, [*BASE, *argv, *extra])


@pytest.mark.parametrize(
    "seed",
    [["--zero_stage", "3"], ["--adam_offload"], ["--overlap_comm"], ["--zpg", "2"], ["--grad_accum_dtype", "fp32"],
     ["--ds.zero_stage", "3"], ["--ds.adam_offload"], ["--ds.overlap_comm"], ["--ds.zpg", "2"],
     ["--ds.grad_accum_dtype", "fp32"], ["--zero-stage", "0"]],
    ids=lambda a: a[0],
)  # fmt: skip
def test_each_seed_deepspeed_flag_selects_the_deepspeed_engine(seed, capsys):
    for command in ("sft", "rm", "prm", "dpo", "kto", "kd"):
        cfg = parse_config(command, OfflineConfig, [*BASE, *seed, "--dry-run"])
        assert cfg is None
        assert "backend: deepspeed" in capsys.readouterr().out, command
    repulse.errors._warned.clear()
    cfg = _sft(seed)
    assert cfg.engine.backend == "deepspeed"
    flag = seed[0].replace("-", "_").lstrip("_")
    assert f"--{flag}: OpenRLHF trains with DeepSpeed" in capsys.readouterr().err


def test_our_names_and_explicit_backends_select_nothing(capsys, tmp_path):
    cfg = _sft(["--engine.zero_stage", "3", "--engine.overlap_comm"])
    assert cfg.engine.backend == "local"
    err = capsys.readouterr().err
    assert "--engine.zero_stage 3 has no effect with --engine.backend local" in err
    assert "--engine.overlap_comm True has no effect with --engine.backend local" in err
    assert _sft(["--zero_stage", "3", "--engine.backend", "fsdp"]).engine.backend == "fsdp"
    assert _sft(["--engine.backend", "local", "--ds.zero_stage", "3"]).engine.backend == "local"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("engine:\n  backend: fsdp\n")
    cfg = _sft(["--zero_stage", "3", "--config", str(recipe)])
    assert cfg.engine.backend == "fsdp" and cfg.engine.zero_stage == 3
    assert "runs on --engine.backend deepspeed" not in capsys.readouterr().err


def test_rl_keeps_its_engine_and_says_so(capsys):
    cfg = parse_config("rl", RLConfig, ["--pretrain", "m", "--zero_stage", "2", "--adam_offload"])
    assert cfg.engine.backend == "local"
    err = capsys.readouterr().err
    assert "--zero_stage, --adam_offload: OpenRLHF ran this with DeepSpeed; repulse rl trains on" in err
    assert "--engine.adam_offload True has no effect with --engine.backend local" in err


@pytest.mark.parametrize(
    "backend, argv, silent, warned",
    [
        ("local", ["--engine.adam_offload", "--engine.cpu_offload", "--engine.zpg", "4",
                   "--engine.grad_accum_dtype", "fp32"], [], ["adam_offload", "cpu_offload", "zpg", "grad_accum_dtype"]),
        ("fsdp", ["--engine.zpg", "4", "--engine.grad_accum_dtype", "bf16", "--engine.overlap_comm",
                  "--engine.adam_offload", "--engine.zero_stage", "3"], ["overlap_comm", "adam_offload", "zero_stage"],
         ["zpg", "grad_accum_dtype"]),
        ("fsdp", ["--engine.grad_accum_dtype", "fp32"], ["grad_accum_dtype"], []),
        ("deepspeed", ["--engine.zero_stage", "1", "--engine.overlap_comm", "--engine.zpg", "2",
                       "--engine.cpu_offload", "--engine.adam_offload"], ["adam_offload"],
         ["overlap_comm", "zpg", "cpu_offload"]),
        ("deepspeed", ["--engine.zero_stage", "3", "--engine.overlap_comm", "--engine.zpg", "2",
                       "--engine.cpu_offload", "--engine.grad_accum_dtype", "bf16"],
         ["overlap_comm", "zpg", "cpu_offload", "grad_accum_dtype"], []),
    ],
)  # fmt: skip
def test_fields_an_engine_ignores_are_named(backend, argv, silent, warned, capsys):
    _sft(["--engine.backend", backend, *argv])
    err = capsys.readouterr().err
    for name in warned:
        assert re.search(rf"--engine\.{name} \S+ has no effect with --engine\.backend {backend}: ", err), name
    for name in silent:
        assert not re.search(rf"--engine\.{name} \S+ has no effect", err), name


def test_impossible_engine_values_are_refused():
    with pytest.raises(UserError, match="--engine.grad_accum_dtype 'fp8' is not a dtype"):
        _sft(["--grad_accum_dtype", "fp8"])
    with pytest.raises(UserError, match="--engine.zpg must be >= 1, got 0"):
        _sft(["--engine.zpg", "0"])


def test_without_deepspeed_one_paragraph_says_what_to_do(monkeypatch, capsys):
    """DeepSpeed is installed here; hiding it from the import system is what a machine without it sees."""
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    with pytest.raises(UserError) as err:
        _sft(["--zero_stage", "3"])
    text = str(err.value)
    assert "select --engine.backend deepspeed, as OpenRLHF trained with DeepSpeed" in text
    assert "pip install 'repulse[deepspeed]'" in text and "--engine.backend fsdp" in text
    with pytest.raises(UserError, match="--engine.backend deepspeed was asked for"):
        _sft(["--engine.backend", "deepspeed"])
    assert _sft(["--zero_stage", "3", "--dry-run"]) is None  # a dry run still shows the resolved config
    assert _sft(["--zero_stage", "3", "--engine.backend", "fsdp"]).engine.backend == "fsdp"
