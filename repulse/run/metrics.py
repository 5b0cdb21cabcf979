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

from repulse.errors import UserError


def _clean(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def wandb_api_key(key: str) -> str | None:
    """The API key ``--logger.wandb.key`` (seed ``--use_wandb``) gives wandb, or None for the account
    wandb is already logged into: OpenRLHF's ``--use_wandb True`` (any case) means "log in as
    whoever ``wandb login`` / ``WANDB_API_KEY`` set up", any other value is the key itself."""
    return None if key.strip().lower() == "true" else key


def open_wandb(cfg: Any, run_config: dict | None, output_dir: Path) -> Any:
    """Start a wandb run as OpenRLHF does: ``--wandb_org`` the entity, ``--wandb_project``,
    ``--wandb_group``, ``--wandb_run_name``, the resolved config as the run's config. Its files go
    to ``<output_dir>/wandb``. An explicit key is handed to this run only (not written to
    ``~/.netrc`` as ``wandb.login`` would); ``WANDB_MODE=offline`` writes the run locally for
    ``wandb sync``. wandb is an optional extra, imported only here.
    """
    from repulse.errors import require_extra

    wandb = require_extra("wandb", "wandb")
    key = wandb_api_key(cfg.key)
    try:
        return wandb.init(
            project=cfg.project,
            entity=cfg.org,
            group=cfg.group,
            name=cfg.run_name,
            config=run_config,
            dir=str(output_dir),
            settings=wandb.Settings(api_key=key) if key is not None else None,
            reinit="finish_previous",
        )
    except wandb.errors.UsageError as exc:
        how = (
            "--logger.wandb.key True (--use_wandb True) logs in as the account wandb is already logged into"
            if key is None
            else "--logger.wandb.key (--use_wandb) gave wandb an API key"
        )
        raise UserError(
            f"{how}, and wandb refused to start: {exc} Run `wandb login` (or set WANDB_API_KEY), pass the API "
            "key itself, or set WANDB_MODE=offline to write the run locally."
        ) from None


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
            self._wandb = open_wandb(logger_cfg.wandb, run_config, Path(output_dir))

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
