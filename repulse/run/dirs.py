"""A run's output directory: created and proven writable before any work is done."""

from __future__ import annotations

import os
from pathlib import Path

from repulse.errors import UserError


def prepare_output_dir(path: str | Path, flag: str = "--ckpt.output_dir") -> Path:
    """Create the output directory and prove it is writable, before any work is done."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_test_{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(
            f"{flag} {path}: the output directory is not writable ({exc.strerror or exc})."
        ) from None
    return out
