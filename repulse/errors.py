"""User-facing errors and one-time warnings.

A ``UserError`` is bad input the user can fix (a flag, a file, a key, a line).  The
CLI prints its message as one paragraph and exits with status 2 - never a traceback.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("repulse")
_warned: set[str] = set()


class UserError(Exception):
    """Bad input; the message names the flag, file, line or key and says how to fix it."""


def warn_once(key: str, message: str) -> None:
    """Print ``message`` to stderr once per process for ``key``."""
    if key in _warned:
        return
    _warned.add(key)
    print(f"[repulse] warning: {message}", file=sys.stderr, flush=True)


def require_extra(module: str, extra: str):
    """Import an optional dependency or raise a one-line UserError naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise UserError(
            f"this feature needs the optional package '{module}': pip install 'repulse[{extra}]' ({exc})"
        ) from None
