"""Atomic, rotated, resumable checkpoints.

A checkpoint is written to ``step_N.tmp`` and renamed to ``step_N`` only when every
file (engine state, trainer state, RNG) is on disk, so a run killed mid-save never
leaves a half-written checkpoint, and every finished one survives.

With ``save_hf`` (``--ckpt.save_hf``, seed ``--save_hf_ckpt``) each engine's model is also
exported next to its state as ``step_N/<engine>_hf/``: the gathered weights as a plain HF
directory (with the tokenizer) that ``from_pretrained`` loads - or, for a LoRA run, the
adapter in PEFT format, as the run's final output (``repulse.engine.export_model``). It is
part of the checkpoint: written before the rename, rotated with it, ignored by resume.

A ``step_N.tmp`` left by such a kill is never loaded, and is removed when the next run in the
directory starts (``repulse.run.start``: the run owns its directory by then). Nothing non-finite
is saved: every engine's weights are checked first, and a NaN or an infinity refuses the save
with a ``NonFiniteError`` naming the tensor.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from repulse.engine import export_model
from repulse.engine.dist import barrier, is_main
from repulse.errors import NonFiniteError
from repulse.models.files import weights_default_mode
from repulse.run.rng import rng_state, set_rng_state


def _step_of(p: Path) -> int:
    try:
        return int(p.name.split("_", 1)[1])
    except (IndexError, ValueError):
        return -1


class Checkpoints:
    """``<root>/step_N/`` directories: ``engine/`` (or several engines), ``trainer.json``, ``rng_rank*.pt``."""

    def __init__(
        self,
        root: str | Path,
        max_num: int,
        rank: int,
        save_hf: bool = False,
        tokenizer: Any | None = None,
        export: Callable[[Any, Path, Any], None] = export_model,
    ):
        """``export(saved, directory, tokenizer)`` writes one saved object's HF model (``save_hf``):
        ``export_model`` for an engine; RL roles, which may live in other processes, export themselves."""
        self.root = Path(root)
        self.max_num = max(1, max_num)
        self.rank = rank
        self.save_hf = save_hf
        self.tokenizer = tokenizer
        self.export = export

    def remove_stale(self) -> list[Path]:
        """Delete the ``step_N.tmp`` directories a killed save left behind; returns them."""
        if not self.root.is_dir():
            return []
        stale = [
            p
            for p in self.root.iterdir()
            if p.is_dir() and p.name.startswith("step_") and p.name.endswith(".tmp")
        ]
        for p in stale:
            shutil.rmtree(p, ignore_errors=True)
            print(f"[repulse] removed {p}: an unfinished checkpoint of an earlier run", flush=True)
        return stale

    def latest(self) -> Path | None:
        if not self.root.is_dir():
            return None
        done = [
            p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("step_") and _step_of(p) >= 0
        ]
        done = [p for p in done if (p / "trainer.json").is_file()]
        return max(done, key=_step_of) if done else None

    def save(self, step: int, engines: dict[str, Any], trainer_state: dict[str, Any]) -> Path:
        """Write ``step_N`` atomically; refused (``NonFiniteError``, on every rank) when a weight of any
        engine is not finite, before anything is written."""
        final = self.root / f"step_{step}"
        tmp = self.root / f"step_{step}.tmp"
        for name, engine in engines.items():
            bad = engine.first_nonfinite_parameter()
            if bad is not None:
                raise NonFiniteError(
                    "parameter", f"{bad} (the {name} model); checkpoint {final} was not written.", step
                )
        if is_main():
            self.root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        barrier()
        for name, engine in engines.items():
            engine.save(tmp / name)
            if self.save_hf:
                self.export(engine, tmp / f"{name}_hf", self.tokenizer)
        torch.save(rng_state(), tmp / f"rng_rank{self.rank}.pt")
        barrier()
        if is_main():
            weights_default_mode(tmp, recursive=True)  # whatever the engine, as readable as the rest
            (tmp / "trainer.json").write_text(json.dumps({"step": step, **trainer_state}))
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            self._rotate()
        barrier()
        return final

    def load(self, path: Path, engines: dict[str, Any]) -> dict[str, Any]:
        for name, engine in engines.items():
            engine.load(path / name)
        rng_file = path / f"rng_rank{self.rank}.pt"
        if rng_file.exists():
            set_rng_state(torch.load(rng_file, weights_only=False))
        return json.loads((path / "trainer.json").read_text())

    def _rotate(self) -> None:
        done = sorted(
            (
                p
                for p in self.root.iterdir()
                if p.is_dir() and p.name.startswith("step_") and not p.name.endswith(".tmp")
            ),
            key=_step_of,
        )
        for old in done[: max(0, len(done) - self.max_num)]:
            shutil.rmtree(old, ignore_errors=True)
