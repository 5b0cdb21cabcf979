"""Data where packing has something to pack, and a probe of the batches the trained model sees.

The toy data sets are uniform in length (every SFT sample is 14-16 tokens), so a packed row -
as long as the micro-batch's longest sample - holds one sample and packing changes nothing a
test could see. These helpers write a copy in which every fourth row is four rows joined into
one (about three times as long), so that in any micro-batch several short samples share a row,
and ``TrainedForwards`` records the shape of every ``input_ids`` the trained model embeds, so
that a test can show that the packed batches really were packed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def _rows(path: Path, n: int) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()[:n]]


def _write(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def mixed_length(rows: list[dict], keys: tuple[str, ...], every: int = 4, join: int = 4) -> list[dict]:
    """``rows`` with every ``every``-th row replaced by itself and the next ``join - 1`` rows
    joined field by field (``keys`` joined with a space; other fields from the first row)."""
    out = []
    for i, row in enumerate(rows):
        if i % every:
            out.append(row)
            continue
        group = [rows[(i + j) % len(rows)] for j in range(join)]
        out.append({**row, **{k: " ".join(r[k] for r in group) for k in keys}})
    return out


def mixed_length_sft(src: Path, dst: Path, n: int = 16) -> Path:
    """The first ``n`` SFT rows (``input``/``output``), every fourth one four rows joined."""
    return _write(mixed_length(_rows(src, n), ("input", "output")), dst)


def mixed_length_pairs(src: Path, dst: Path, n: int = 16) -> Path:
    """The first ``n`` preference pairs (``prompt``/``chosen``/``rejected``), every fourth one
    four pairs joined (prompt, chosen and rejected each joined)."""
    return _write(mixed_length(_rows(src, n), ("prompt", "chosen", "rejected")), dst)


class TrainedForwards:
    """Records ``(rows, width)`` of every ``input_ids`` embedded with autograd on - the trained
    model's forwards; a frozen reference or teacher, and evaluation, run under ``no_grad`` and
    are left out. A process-wide ``nn.Embedding`` forward hook, removed on exit."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, int]] = []
        self._handle = None

    def _hook(self, module: torch.nn.Module, args: tuple, _out: object) -> None:
        if isinstance(module, torch.nn.Embedding) and torch.is_grad_enabled() and args:
            ids = args[0]
            if ids.dim() == 2 and ids.dtype == torch.long:
                self.shapes.append((int(ids.shape[0]), int(ids.shape[1])))

    def __enter__(self) -> TrainedForwards:
        self._handle = torch.nn.modules.module.register_module_forward_hook(self._hook)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._handle.remove()

    @property
    def rows(self) -> int:
        return sum(r for r, _ in self.shapes)

    @property
    def positions(self) -> int:
        """Token positions computed (real tokens plus padding)."""
        return sum(r * w for r, w in self.shapes)


def assert_packed_fewer(padded: TrainedForwards, packed: TrainedForwards, rows_per_forward: int) -> None:
    """The same number of forwards, every padded one ``rows_per_forward`` rows, the packed ones
    holding at most 3/4 of the padded rows and computing fewer positions (less padding)."""
    assert padded.shapes and len(packed.shapes) == len(padded.shapes), (padded.shapes, packed.shapes)
    assert {r for r, _ in padded.shapes} == {rows_per_forward}, padded.shapes
    assert packed.rows <= 0.75 * padded.rows, (packed.shapes, padded.shapes)
    assert packed.positions < padded.positions, (packed.shapes, padded.shapes)
