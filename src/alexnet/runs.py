"""What a run folder holds, read without torch: its config, history and best score (for the CLI's summaries)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunSummary:
    path: Path
    config: dict[str, Any]  # config.json as written at the start of the run
    history: list[dict[str, Any]]  # one row per finished epoch (history.json)

    @property
    def best(self) -> dict[str, Any] | None:
        """The epoch with the best validation accuracy (the one in best.pt); None without a scored epoch."""
        scored = [row for row in self.history if isinstance(row.get("val_acc"), (int, float))
                  and math.isfinite(row["val_acc"])]
        return max(scored, key=lambda row: row["val_acc"]) if scored else None

    @property
    def report(self) -> Path | None:
        page = self.path / "report" / "report.html"
        return page if page.is_file() else None


def read_run(run: str | Path) -> RunSummary:
    """Read a run folder's config.json and history.json (either may be missing in a run that failed early)."""
    path = Path(run)

    def load(name: str, default: Any) -> Any:
        try:
            return json.loads((path / name).read_text())
        except (OSError, ValueError):
            return default

    return RunSummary(path, load("config.json", {}), load("history.json", []))


def closing_lines(run: str | Path) -> list[str]:
    """What `alexnet train` prints at the end: where the run is, its best validation score, the report."""
    summary = read_run(run)
    lines = [f"run folder: {summary.path}"]
    best = summary.best
    if best is not None:
        lines.append(f"best validation accuracy: {best['val_acc'] * 100:.2f}% at epoch {best['epoch']} "
                     f"(weights in {summary.path / 'best.pt'})")
    elif summary.history:
        lines.append(f"no validation split: best.pt holds the last epoch ({summary.history[-1]['epoch']}); "
                     f"`alexnet evaluate {summary.path / 'best.pt'} --data DATA` scores it on other data")
    if summary.report is not None:
        lines.append(f"report: {summary.report}")
    else:
        lines.append(f"no HTML report written; `alexnet report {summary.path}` writes it")
    return lines
