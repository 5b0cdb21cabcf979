"""Larger randomly initialised Llamas for the benchmarks, built locally with the toy tokenizer.

The toy Llama (~1M parameters) is dominated by per-call overheads: Python, kernel launches,
sampling. A benchmark that claims a speed-up for real models also needs a size where the matrix
multiplies dominate; ``SIZES["20m"]`` (hidden 512, 8 layers, 4 heads / 2 KV heads, untied head,
19.7M parameters) is that size on these CPUs. It is ``repulse.toy.models.build_model`` with
other dimensions and the toy tokenizer, so the same prompts, reward and data work unchanged.

Usage: ``python bench/sized_llama.py [20m]`` builds (or reuses) ``bench/work/llama_20m`` and
prints its parameter count. Drivers call ``sized_llama(name, assets)``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

# name -> build_model keyword arguments (seed 0, as the toy)
SIZES: dict[str, dict[str, int]] = {"20m": {"hidden_size": 512, "num_layers": 8}}
MARKER = ".bench-model.json"


def sized_llama(name: str, assets: Any, root: Path | None = None) -> Path:
    """The Llama of size ``name`` next to the toy assets, built once (idempotent, atomic).

    The marker records the dimensions and the tokenizer it was built with, so a change to
    either rebuilds it instead of silently reusing a stale model.
    """
    if name not in SIZES:
        raise SystemExit(f"error: unknown model size {name!r}; choose one of {', '.join(SIZES)}")
    out = (root or harness.WORK) / f"llama_{name}"
    want = {"arch": "llama", "seed": 0, "tokenizer": str(assets.tokenizer), **SIZES[name]}
    marker = out / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return out
    from repulse.toy.models import build_model

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    try:
        build_model(tmp, assets.tokenizer, "llama", 0, **SIZES[name])
        (tmp / MARKER).write_text(json.dumps(want))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def parameter_count(path: Path) -> int:
    """Parameters of the saved model (read from the safetensors header: no model is built)."""
    total = 0
    for f in Path(path).glob("*.safetensors"):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        for key, meta in header.items():
            if key != "__metadata__":
                count = 1
                for d in meta["shape"]:
                    count *= d
                total += count
    return total


def main(argv: list[str]) -> int:
    names = argv or list(SIZES)
    assets = harness.toy_assets()
    for name in names:
        path = sized_llama(name, assets)
        print(f"{name}: {path} ({parameter_count(path) / 1e6:.1f}M parameters)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
