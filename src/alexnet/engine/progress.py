"""Live progress bar (loss, accuracy, images/s, ETA) and one summary line per epoch, on stderr."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class EpochProgress:
    """A rich progress bar that is silent when disabled or when stderr is not a terminal."""

    def __init__(self, enabled: bool = True):
        self.console = Console(stderr=True, highlight=False)
        self.live = enabled and sys.stderr.isatty()
        self.quiet = not enabled
        self.progress: Progress | None = None
        self.task = None

    def start(self, description: str, total: int) -> None:
        if not self.live:
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=self.console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task(description, total=total, stats="")

    def update(self, step: int, loss: float, acc: float, images_per_s: float) -> None:
        if self.progress is not None:
            stats = f"loss {loss:.3f}  acc {acc * 100:5.1f}%  {images_per_s:,.0f} img/s"
            self.progress.update(self.task, completed=step, stats=stats)

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def print(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, soft_wrap=True)
