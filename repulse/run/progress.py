"""The console progress of a run (rank 0).

On a terminal: a rich progress bar. Anywhere else - CI, ``nohup``, a pipe, a log file - a bar
redraws itself with control characters and shows nothing until it is done, so there we print
one plain line per logging step instead (step/total, the step's numbers, throughput, elapsed
time, ETA), with no colour codes, flushed at once so a slow run and a hung one look different.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_line(
    name: str, step: int, total: int, info: dict[str, float], steps_per_s: float, elapsed: float
) -> str:
    """``[repulse] sft step 3/6  loss 2.345  lr 0.003  tok/s 1.2e+04  0.52 steps/s  elapsed 0:05  ETA 0:06``."""
    numbers = "  ".join(f"{k} {v:.4g}" for k, v in info.items())
    eta = (total - step) / steps_per_s if steps_per_s > 0 else math.inf
    parts = [f"[repulse] {name} step {step}/{total}", numbers, f"{steps_per_s:.3g} steps/s"]
    parts += [f"elapsed {_clock(elapsed)}", f"ETA {_clock(eta)}"]
    return "  ".join(p for p in parts if p)


class Progress:
    """A rich bar on a terminal, else one plain line every ``every`` steps (and at the last step)."""

    def __init__(
        self,
        total: int,
        start: int,
        enabled: bool,
        description: str,
        every: int = 1,
        stream: TextIO | None = None,
    ):
        self._bar = None
        self._stream = stream or sys.stdout
        self._lines = False
        self.total, self.start, self.name, self.every = total, start, description, max(1, every)
        self._t0 = time.perf_counter()
        if not enabled:
            return
        if not self._stream.isatty():
            self._lines = True
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            transient=False,
        )
        self._task = self._bar.add_task(description, total=total, completed=start, info="")
        self._bar.start()

    def update(self, step: int, info: dict[str, float]) -> None:
        if self._lines:
            if step % self.every == 0 or step == self.total:
                elapsed = time.perf_counter() - self._t0
                rate = (step - self.start) / elapsed if elapsed > 0 else 0.0
                line = progress_line(self.name, step, self.total, info, rate, elapsed)
                print(line, file=self._stream, flush=True)
            return
        if self._bar is None:
            return
        text = "  ".join(f"{k} {v:.4g}" for k, v in info.items())
        self._bar.update(self._task, completed=step, info=text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
