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


class NonFiniteError(UserError):
    """A NaN or infinity where training needs a finite number: a reward, a loss, a gradient
    norm or a parameter.  The run stops (exit status 2) and nothing non-finite is saved.

    ``quantity`` names what was non-finite (``reward``, ``loss``, ``grad_norm``, ``parameter``);
    ``step`` is the optimizer step (None when not known where it was raised - the training
    loop fills it in); ``detail`` says where (the reward source and first offending sample,
    the parameter's name, ...).
    """

    def __init__(self, quantity: str, detail: str, step: int | None = None):
        self.quantity, self.detail, self.step = quantity, detail, step
        super().__init__(self._message())

    def _message(self) -> str:
        at = f" at step {self.step}" if self.step is not None else ""
        return (
            f"non-finite {self.quantity}{at}: {self.detail} The run stopped; finished checkpoints are "
            "kept and nothing non-finite was saved."
        )

    def at_step(self, step: int) -> NonFiniteError:
        """The same error, now naming the step (the loop knows it; the reward source does not)."""
        if self.step is None:
            self.step = step
            self.args = (self._message(),)
        return self


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
