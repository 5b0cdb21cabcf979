"""A JSON-lines output built from numbered chunks, so that a killed run continues where it stopped.

``repulse generate`` and ``repulse score`` cut their work into chunks numbered 0..K-1 (a fixed
function of the input, never of the number of processes). Each finished chunk is written to
``<output>.parts/chunk_<k>.jsonl`` under a temporary name and renamed, so a chunk file exists only
when it is whole. A rerun with the same inputs (``manifest.json`` holds their fingerprint) skips
the chunks that exist; with other inputs the stale parts are removed first. When every chunk is
there, rank 0 joins them in chunk order into ``<output>`` (again through a temporary name and a
rename) and removes the parts. So the output holds every chunk exactly once, in order, whether the
run was killed and restarted or spread over several processes, and an ``<output>`` file that exists
is complete.

The parts directory must be visible to every process (one machine, or a shared file system).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from repulse.errors import UserError, warn_once
from repulse.run.start import on_rank0


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able values (the inputs that decide a run's output)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def model_identity(path: str | None) -> Any:
    """What identifies a model directory's weights without reading them: file names, sizes and times.

    A Hub name (no such directory) is identified by its name.
    """
    if not path:
        return None
    root = Path(path)
    if not root.is_dir():
        return str(path)
    files = []
    for p in sorted(root.iterdir()):
        if p.is_file() and (p.suffix in {".safetensors", ".bin", ".pt"} or p.name == "config.json"):
            st = p.stat()
            files.append((p.name, st.st_size, st.st_mtime_ns))
    return [str(root.resolve()), files]


def write_jsonl_atomic(path: Path, rows: Iterable[dict]) -> None:
    """Write ``rows`` as JSON lines to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def read_jsonl(path: Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


class ChunkStore:
    """The chunks of one output file (see the module docstring); every rank builds one."""

    def __init__(self, output: str | Path, key: str, n_chunks: int, rank: int, world: int, flag: str):
        self.output = Path(output)
        self.parts = self.output.with_name(self.output.name + ".parts")
        self.key, self.n_chunks, self.rank, self.world = key, n_chunks, rank, world
        self.flag = flag

    def _chunk(self, k: int) -> Path:
        return self.parts / f"chunk_{k:06d}.jsonl"

    def prepare(self) -> list[int]:
        """Make the parts directory (rank 0) and return the chunks still to do (every rank, same list).

        An error on rank 0 (an unwritable directory) is raised on every rank, so none waits for it.
        """
        on_rank0(self._make_parts)
        return [k for k in range(self.n_chunks) if not self._chunk(k).is_file()]

    def _make_parts(self) -> None:
        """Rank 0: the parts directory, emptied of parts made from other inputs, and the manifest."""
        try:
            self.output.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"{self.flag} {self.output}: cannot create its directory ({exc.strerror})."
            ) from None
        manifest = self.parts / "manifest.json"
        if self.parts.is_dir():
            old = json.loads(manifest.read_text()) if manifest.is_file() else {}
            if old.get("key") != self.key or old.get("n_chunks") != self.n_chunks:
                warn_once(
                    f"stale_parts:{self.parts}",
                    f"{self.parts} holds parts of a run with other inputs; they are removed and the "
                    "output is made from the start.",
                )
                shutil.rmtree(self.parts)
            else:
                done = sum(1 for k in range(self.n_chunks) if self._chunk(k).is_file())
                if done:
                    print(
                        f"[repulse] resuming {self.output}: {done} of {self.n_chunks} chunks are done",
                        flush=True,
                    )
        self.parts.mkdir(parents=True, exist_ok=True)
        tmp = self.parts / ".manifest.tmp"
        tmp.write_text(json.dumps({"key": self.key, "n_chunks": self.n_chunks}))
        tmp.replace(manifest)

    def mine(self, pending: list[int]) -> list[int | None]:
        """This rank's share of ``pending`` (round-robin), padded with None so every rank makes the
        same number of calls (sharded or tensor-parallel engines step together)."""
        share: list[int | None] = list(pending[self.rank :: self.world])
        calls = -(-len(pending) // self.world) if pending else 0
        return share + [None] * (calls - len(share))

    def write(self, k: int, rows: list[dict]) -> None:
        write_jsonl_atomic(self._chunk(k), rows)

    def read_all(self, expected: list[int] | None = None) -> list[dict]:
        """Every chunk's rows in chunk order; ``expected[k]`` rows in chunk k when given."""
        rows: list[dict] = []
        for k in range(self.n_chunks):
            path = self._chunk(k)
            if not path.is_file():
                raise RuntimeError(f"chunk {k} of {self.output} is missing after every process finished")
            chunk = read_jsonl(path)
            if expected is not None and len(chunk) != expected[k]:
                raise RuntimeError(f"{path} holds {len(chunk)} rows, expected {expected[k]}")
            rows.extend(chunk)
        return rows

    def finish(self, rows: list[dict]) -> None:
        """Rank 0: the output file, atomically, then the parts are removed."""
        write_jsonl_atomic(self.output, rows)
        shutil.rmtree(self.parts, ignore_errors=True)
