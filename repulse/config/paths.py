"""Model paths: local directory or Hugging Face Hub id, told apart before anything is loaded.

Offline first: a path that looks local is never sent to the Hub. It looks local when it
exists, starts with ``./``, ``../``, ``/`` or ``~``, has more than the one ``/`` of an
``org/name`` Hub id (or a Windows separator), or its first component is an existing local
directory (``runs/lm`` next to a ``runs/`` folder). Such a path must be a model directory:
it exists, holds ``config.json`` (a model) and, where a tokenizer is loaded from it, the
tokenizer's files - otherwise transformers fails deep inside (a Hub lookup with retries for
a mistyped relative path; "need sentencepiece or tiktoken" for a directory without a
tokenizer). For local-looking paths this is what ``HF_HUB_OFFLINE`` does for every path; a
Hub id is left to transformers (which, offline, looks in its cache).
"""

from __future__ import annotations

import os
from pathlib import Path

from repulse.errors import UserError

# any one of these makes a directory loadable by AutoTokenizer without conversion packages
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
    "vocab.txt",
)


def looks_local(path: str) -> bool:
    """Whether ``path`` names a local directory rather than a Hub id (see the module docstring)."""
    p = str(path)
    if os.path.exists(os.path.expanduser(p)):
        return True
    if p in (".", "..", "~") or p.startswith(("./", "../", "/", "~", ".\\", "..\\")):
        return True
    if p.count("/") > 1 or (os.sep != "/" and os.sep in p) or "\\" in p:
        return True
    first = p.split("/", 1)[0]
    return "/" in p and first not in ("", ".") and os.path.isdir(first)


def has_tokenizer(directory: Path) -> bool:
    return any((directory / name).is_file() for name in TOKENIZER_FILES) or any(directory.glob("*.tiktoken"))


def model_path_problem(path: str, need_model: bool = True, need_tokenizer: bool = False) -> str | None:
    """Why ``path`` cannot be loaded as asked, without loading it (None: load it, or ask the Hub)."""
    p = Path(os.path.expanduser(str(path)))
    if p.exists():
        if not p.is_dir():
            return f"{path} is a file, not a model directory"
        if need_model and not (p / "config.json").is_file():
            return f"{path} is a directory but not a Hugging Face model directory (it has no config.json)"
        if need_tokenizer and not has_tokenizer(p):
            return (
                f"{path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save the tokenizer into the "
                "model directory (tokenizer.save_pretrained)"
            )
        return None
    if looks_local(str(path)):
        return f"{path}: no such directory (a local-looking path is never looked up on the Hugging Face Hub)"
    return None


def check_model_path(path: str, flag: str, need_model: bool = True, need_tokenizer: bool = False) -> None:
    """Raise ``UserError`` naming ``flag`` when ``path`` cannot be the model (and tokenizer) asked for."""
    problem = model_path_problem(path, need_model, need_tokenizer)
    if problem:
        raise UserError(f"{flag}: {problem}.")
