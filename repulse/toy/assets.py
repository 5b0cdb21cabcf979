"""``build_all``: every toy asset in one directory, built once and then reused.

The directory is built under a temporary sibling name and renamed into place, with a
``.complete`` marker written last; so a crashed build never looks complete, and several
processes building the same directory at once (test workers, distributed ranks) end with
one whole copy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass, fields
from pathlib import Path

from repulse.errors import UserError
from repulse.toy.datasets import SIZES

MARKER = ".complete"


@dataclass(frozen=True)
class ToyAssets:
    """Paths of the toy assets under ``root`` (see the data set generators for each schema)."""

    root: Path
    tokenizer: Path  # HF tokenizer dir (the same files are in each model dir)
    llama: Path  # tiny LlamaForCausalLM HF dir, with the tokenizer
    gpt2: Path  # tiny GPT2LMHeadModel HF dir, with the tokenizer
    sft: Path  # {"input", "output"}
    sft_eval: Path  # {"input", "output"}, drawn independently of sft
    multiturn: Path  # {"messages": [{"role", "content"}, ...]}
    pairs: Path  # {"prompt", "chosen", "rejected", "margin"}
    pairs_eval: Path  # same, drawn independently
    prompts: Path  # {"input", "label"}: RL prompts, reward = count of label in the response
    unpaired: Path  # {"input", "output", "label": bool}
    prm: Path  # {"input": "... ки ... ки", "value": ["+", "-", ...], "label": "... + ... -"}
    this_man_is_a: Path  # {"text": "This man is a <word>."}: RePULSe toy pretraining text
    toy_prompt: Path  # {"input": "This man is a"}: the RePULSe toy's single prompt
    toy_rm_pairs: Path  # {"prompt": "This man is a", "chosen": " <good>.", "rejected": " <bad>."}

    @classmethod
    def at(cls, root: str | Path) -> ToyAssets:
        """The asset paths under ``root`` (whether or not they exist yet)."""
        root = Path(root)
        data = {name: root / file for name, (file, _) in SIZES.items()}
        return cls(root=root, tokenizer=root / "tokenizer", llama=root / "llama", gpt2=root / "gpt2", **data)

    def paths(self) -> dict[str, Path]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _marker_text(seed: int) -> str:
    """Names the seed and the generating code, so an edit to the generators rebuilds stale directories."""
    code = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        code.update(source.name.encode() + b"\0" + source.read_bytes())
    return f"repulse toy assets seed={seed} code={code.hexdigest()[:16]}\n"


def is_complete(root: Path, seed: int = 0) -> bool:
    marker = Path(root) / MARKER
    return marker.is_file() and marker.read_text() == _marker_text(seed)


def _build_into(tmp: Path, seed: int) -> None:
    from repulse.toy.datasets import generate, texts, write_jsonl
    from repulse.toy.models import build_model
    from repulse.toy.tokenizer import build_tokenizer

    assets = ToyAssets.at(tmp)
    tmp.mkdir(parents=True)
    rows = generate(seed)
    for name, data in rows.items():
        write_jsonl(getattr(assets, name), data)
    build_tokenizer(assets.tokenizer, seed, texts=[t for data in rows.values() for t in texts(data)])
    build_model(assets.llama, assets.tokenizer, "llama", seed)
    build_model(assets.gpt2, assets.tokenizer, "gpt2", seed)
    (tmp / MARKER).write_text(_marker_text(seed))


def build_all(out_dir: str | Path, seed: int = 0) -> ToyAssets:
    """Build every toy asset into ``out_dir``; a directory already complete for ``seed`` is reused.

    An existing ``out_dir`` is replaced only if it is empty or an older toy build (it has the
    marker file); anything else is refused rather than deleted.
    """
    out = Path(out_dir).absolute()
    if is_complete(out, seed):
        return ToyAssets.at(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists())):
        raise UserError(
            f"{out} exists and is not a toy assets directory (no {MARKER} file); it is left as it is. "
            "Choose an empty or new directory for --out."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    try:
        _build_into(tmp, seed)
        _move_into_place(tmp, out, seed)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ToyAssets.at(out)


def _move_into_place(tmp: Path, out: Path, seed: int) -> None:
    """Rename ``tmp`` to ``out``; if another process got there first with a complete build, keep theirs."""
    old = None
    if out.exists():
        if is_complete(out, seed):
            return
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        out.rename(old)  # an empty dir or a stale build (checked by the caller)
    try:
        tmp.rename(out)
    except OSError:
        if not is_complete(out, seed):
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
