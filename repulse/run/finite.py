"""What a run does when a loss, a gradient or a weight stops being a finite number.

``--train.nan_policy stop`` (the default) ends the run with a ``NonFiniteError`` - one
paragraph naming the step and the quantity - before the bad update is applied.
``--train.nan_policy skip`` drops the step instead (gradients zeroed, no optimizer or
scheduler step), counts it in the metrics (``skipped_steps``) and still stops once
``--train.nan_max_consecutive_skips`` steps in a row were dropped: a run that only skips
is not training.

Who checks what:

* the loss: ``run_micro_batches`` (``repulse.trainers.fit``) looks at every micro-batch's
  loss, poisons the gradient of a non-finite one with NaN (so every engine, whatever its
  backend, refuses that update) and asks :meth:`FiniteGuard.check_loss` once the flags of
  all processes are combined, so every process takes the same decision;
* the gradient norm: the engines' ``step()`` skip the update when the global norm is not
  finite and report ``update_skipped`` (they never apply it);
* the parameters: checked before every checkpoint (``Checkpoints.save``) and every HF export
  (the engines' ``export_hf``), so nothing non-finite is ever saved.

The loop calls :meth:`FiniteGuard.after_step` once per optimizer step with the step's
metrics; it raises or counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from repulse.engine.finite import first_nonfinite
from repulse.errors import NonFiniteError, warn_once

NAN_POLICIES = ("stop", "skip")

# metric keys (possibly prefixed, e.g. ``actor_update_skipped``) that mark a dropped update
NONFINITE_LOSS = "nonfinite_loss"
UPDATE_SKIPPED = "update_skipped"

_HINT = (
    "Lower the learning rate, keep gradient clipping on (--optim.max_norm > 0), check this step's data, "
    "or let the run drop such steps with --train.nan_policy skip."
)
_STOP_HINT = "Lower the learning rate, keep gradient clipping on (--optim.max_norm > 0), or check the data."


@dataclass
class FiniteGuard:
    """The run's policy for non-finite numbers (see the module docstring) and its skip counters."""

    policy: str = "stop"
    max_consecutive_skips: int = 10
    skipped_steps: int = 0
    consecutive_skips: int = 0

    def __post_init__(self) -> None:
        if self.policy not in NAN_POLICIES:
            raise ValueError(f"nan policy must be one of {NAN_POLICIES}, got {self.policy!r}")

    @classmethod
    def from_config(cls, train: Any) -> FiniteGuard:
        """From a ``TrainSection`` (``--train.nan_policy``, ``--train.nan_max_consecutive_skips``)."""
        return cls(train.nan_policy, train.nan_max_consecutive_skips)

    def check_loss(self, stats: dict[str, Any], step: int | None = None) -> None:
        """Some process saw a non-finite loss in this step (``run_micro_batches`` calls this).

        ``stop``: raise. ``skip``: mark the step (``nonfinite_loss``: 1) and return; its
        gradients were poisoned, so the engine's ``step()`` drops the update.
        """
        if self.policy == "stop":
            raise NonFiniteError("loss", f"{_loss_text(stats)} {_HINT}", step)
        stats[NONFINITE_LOSS] = 1.0

    def after_step(self, stats: dict[str, Any], step: int) -> dict[str, Any]:
        """Call once per optimizer step, after the engines' ``step()``, with the step's metrics.

        Raises ``NonFiniteError`` when the step's update was dropped under ``stop``, or when
        ``max_consecutive_skips`` steps in a row were dropped under ``skip``; otherwise
        adds ``skipped_steps`` (dropped steps so far) to ``stats`` and returns it.
        """
        event = _event(stats)
        if event is None:
            self.consecutive_skips = 0
        else:
            quantity, detail = event
            if self.policy == "stop":
                raise NonFiniteError(quantity, f"{detail} {_HINT}", step)
            self.skipped_steps += 1
            self.consecutive_skips += 1
            if self.consecutive_skips >= self.max_consecutive_skips:
                raise NonFiniteError(
                    quantity,
                    f"{detail} {self.consecutive_skips} steps in a row were dropped under --train.nan_policy "
                    f"skip (--train.nan_max_consecutive_skips {self.max_consecutive_skips}), "
                    f"{self.skipped_steps} in all: the run is no longer training. " + _STOP_HINT,
                    step,
                )
            warn_once(f"nan-skip:{step}", f"step {step} dropped: {detail} (--train.nan_policy skip)")
        stats["skipped_steps"] = self.skipped_steps
        return stats

    @staticmethod
    def check_state_dict(state: Mapping[str, torch.Tensor], what: str, step: int | None = None) -> None:
        """Refuse to hand on (save, export, push to a rollout engine) weights that are not finite.

        ``what`` says what was about to happen, e.g. "the rollout engine was not updated".
        """
        bad = first_nonfinite(state.items())
        if bad is not None:
            raise NonFiniteError("parameter", f"{bad}; {what}.", step)


def _loss_text(stats: dict[str, Any]) -> str:
    for key, value in stats.items():
        if (
            (key == "loss" or key.startswith("loss_"))
            and isinstance(value, float)
            and not math.isfinite(value)
        ):
            return f"the step's {key} is {value} (a micro-batch's loss was NaN or infinite)."
    return "a micro-batch's loss was NaN or infinite."


def _event(stats: dict[str, Any]) -> tuple[str, str] | None:
    """(quantity, detail) of the first dropped update the metrics report, or None."""
    for key, value in stats.items():
        if key.endswith(NONFINITE_LOSS) and value:
            return "loss", _loss_text(stats) + " The update was not applied."
    for key, value in stats.items():
        if key.endswith(UPDATE_SKIPPED) and value:
            prefix = key[: -len(UPDATE_SKIPPED)]
            norm = stats.get(f"{prefix}grad_norm", math.nan)
            who = f" ({prefix.rstrip('_')})" if prefix else ""
            return "grad_norm", f"the gradient norm{who} is {norm}; the update was not applied."
    return None
