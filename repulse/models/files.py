"""Saved files get the permissions every other file of the run gets.

safetensors writes each file through a private temporary file and renames it, so a
``model.safetensors`` ends up readable by its owner only (0600) while the config, tokenizer
and metrics next to it follow the umask (usually 0644): a colleague, a serving process or a
backup job that can read the rest of the directory cannot read the weights. After saving we
give such files the mode a plain ``open()`` would have: ``0666`` less the umask.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def umask() -> int:
    """The process's file-creation mask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no way to read it without setting it: put it straight back
    os.umask(mask)
    return mask


def default_mode(paths: Iterable[Path]) -> None:
    """``chmod`` each existing file in ``paths`` to ``0o666 & ~umask``."""
    mode = 0o666 & ~umask()
    for path in paths:
        if path.is_file() and (path.stat().st_mode & 0o777) != mode:
            os.chmod(path, mode)


def weights_default_mode(directory: Path, recursive: bool = False) -> None:
    """Give the safetensors files written into ``directory`` (and below, if ``recursive``) the default mode."""
    directory = Path(directory)
    default_mode(directory.rglob("*.safetensors") if recursive else directory.glob("*.safetensors"))
