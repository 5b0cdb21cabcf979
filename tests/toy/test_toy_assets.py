"""build_all: one complete directory, reused, deterministic, never clobbering foreign files."""

from __future__ import annotations

import time

import pytest

from repulse.errors import UserError
from repulse.toy import ToyAssets, build_all, cli_build
from repulse.toy.assets import MARKER


def test_every_declared_path_exists(toy):
    assert isinstance(toy, ToyAssets)
    for name, path in toy.paths().items():
        assert path.exists(), name
        assert path.is_relative_to(toy.root)
    for model in (toy.llama, toy.gpt2):
        assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= {
            p.name for p in model.iterdir()
        }
    assert (toy.root / MARKER).is_file()
    assert not [p for p in toy.root.parent.iterdir() if p.name.startswith(f".{toy.root.name}.")]


def test_a_complete_directory_is_reused_quickly(toy):
    stamp = toy.sft.stat().st_mtime_ns
    start = time.perf_counter()
    assert build_all(toy.root) == toy
    assert time.perf_counter() - start < 0.5
    assert toy.sft.stat().st_mtime_ns == stamp


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_files_and_a_new_seed_replaces_a_stale_build(toy, tmp_path):
    again = build_all(tmp_path / "again", seed=0)
    ref, new = _files(toy.root), _files(again.root)
    assert ref.keys() == new.keys()
    differ = [str(k) for k in ref if ref[k] != new[k]]
    assert not differ, differ  # data, tokenizer, configs and weights, byte for byte

    reseeded = build_all(again.root, seed=1)  # the seed-0 marker no longer matches: rebuilt in place
    assert reseeded.root == again.root
    assert reseeded.sft.read_bytes() != ref[toy.sft.relative_to(toy.root)]
    assert build_all(again.root, seed=1) == reseeded


def test_refuses_to_replace_a_foreign_directory(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a toy assets directory"):
        build_all(tmp_path)
    with pytest.raises(UserError):
        build_all(tmp_path / "mine.txt")
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_cli_build_prints_each_path(toy, capsys):
    assert cli_build(str(toy.root)) == 0
    out = capsys.readouterr().out
    assert "already complete" in out
    for name, path in toy.paths().items():
        if name != "root":
            assert name in out and str(path) in out
