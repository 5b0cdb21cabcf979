"""Where a run's numbers go: metrics.jsonl (always), TensorBoard, wandb.

Only rank 0 writes. ``metrics.jsonl`` holds one JSON object per logged step; on
resume, lines past the checkpoint's step are dropped so that no step is repeated.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLog:
    """Append-only ``metrics.jsonl`` plus optional TensorBoard / wandb sinks."""

    def __init__(
        self, output_dir: Path, logger_cfg: Any, run_config: dict | None, enabled: bool, resume_step: int
    ):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        if resume_step > 0 and self.path.exists():
            # a line that does not parse was being written when the run died: drop it too
            kept = [
                ln
                for ln in self.path.read_text().splitlines()
                if ln.strip() and (step := self._step_of(ln)) is not None and step <= resume_step
            ]
            self.path.write_text("".join(ln + "\n" for ln in kept))
        elif resume_step == 0:
            self.path.write_text("")
        if logger_cfg.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(logger_cfg.tensorboard_dir)
        if logger_cfg.wandb.key:
            from repulse.errors import require_extra

            wandb = require_extra("wandb", "wandb")
            wandb.login(key=logger_cfg.wandb.key)
            self._wandb = wandb.init(
                project=logger_cfg.wandb.project,
                entity=logger_cfg.wandb.org,
                group=logger_cfg.wandb.group,
                name=logger_cfg.wandb.run_name,
                config=run_config,
                reinit=True,
            )

    @staticmethod
    def _step_of(line: str) -> int | None:
        """The line's step (0 if it has none); None if it is not a whole JSON object."""
        try:
            return int(json.loads(line).get("step", 0))
        except (ValueError, AttributeError, TypeError):
            return None

    def log(self, step: int, metrics: dict[str, Any], prefix: str = "") -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3)}
        record.update({f"{prefix}{k}": _clean(v) for k, v in metrics.items()})
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        for k, v in record.items():
            if k in {"step", "time"} or not isinstance(v, (int, float)):
                continue
            if self._tb is not None:
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if k != "time"}, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
