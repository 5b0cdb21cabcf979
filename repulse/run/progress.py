"""The console progress of a run (rank 0)."""

from __future__ import annotations


class Progress:
    """A rich progress bar showing loss, lr and tokens/s (rank 0, when a terminal or asked)."""

    def __init__(self, total: int, start: int, enabled: bool, description: str):
        self._bar = None
        if not enabled:
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
        if self._bar is None:
            return
        text = "  ".join(f"{k} {v:.4g}" for k, v in info.items())
        self._bar.update(self._task, completed=step, info=text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
