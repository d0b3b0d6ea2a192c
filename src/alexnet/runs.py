"""What a run folder holds, read without torch: its config, history, best and test scores (`alexnet train`'s
closing lines, `alexnet runs`), and the record of evaluations that `alexnet evaluate` and `report` keep in it."""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EVALUATIONS = "evaluations.json"  # RUN/evaluations.json: every `evaluate` and `report` score of the run's weights
MAX_EVALUATIONS = 200  # the oldest records give way beyond this
STAMP = re.compile(r"^(\d{8}-\d{6})-")  # runs/<YYYYmmdd-HHMMSS>-<model>, the trainer's default folder name


@dataclass(frozen=True)
class RunSummary:
    path: Path
    config: dict[str, Any]  # config.json as written at the start of the run
    history: list[dict[str, Any]]  # one row per finished epoch (history.json)
    evaluations: list[dict[str, Any]] = field(default_factory=list)  # evaluations.json, oldest first

    @property
    def settings(self) -> dict[str, Any]:
        """The resolved RunConfig as a dict ({} when config.json is missing)."""
        return self.config.get("config") or {}

    @property
    def started(self) -> float | None:
        """When the run started (seconds since the epoch): the stamp of a default folder name, else the time
        config.json was written (at the start of the run, or of its latest --resume)."""
        match = STAMP.match(self.path.name)
        if match:
            try:
                return time.mktime(time.strptime(match.group(1), "%Y%m%d-%H%M%S"))
            except ValueError:  # a name that only looks like a stamp (month 13...)
                pass
        try:
            return (self.path / "config.json").stat().st_mtime
        except OSError:
            return None

    @property
    def seconds(self) -> float:
        return float(sum(row.get("seconds") or 0.0 for row in self.history))

    @property
    def test(self) -> dict[str, Any] | None:
        """The latest recorded evaluation on a test split, if any."""
        return next((e for e in reversed(list(self.evaluations)) if e.get("split") == "test"), None)

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

    evaluations = load(EVALUATIONS, [])
    return RunSummary(path, load("config.json", {}), load("history.json", []),
                      evaluations if isinstance(evaluations, list) else [])


def is_run(folder: Path) -> bool:
    """A folder `alexnet train` wrote: its config.json holds a run config (an exported model's does not)."""
    try:
        return "train" in (json.loads((folder / "config.json").read_text()).get("config") or {})
    except (OSError, ValueError, AttributeError):
        return False


def find_runs(root: str | Path, depth: int = 2) -> list[RunSummary]:
    """The runs in `root` (itself, or folders up to `depth` levels below it), oldest first."""
    root = Path(root)
    found: list[Path] = []

    def walk(folder: Path, level: int) -> None:
        if is_run(folder):
            found.append(folder)  # a run's own subfolders (report/) are not runs
        elif level < depth:
            try:
                children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:  # a folder we may not read holds no run we can list
                return
            for child in children:
                walk(child, level + 1)

    walk(root, 0)
    runs = [read_run(p) for p in found]
    return sorted(runs, key=lambda r: (r.started or 0.0, str(r.path)))


def run_row(run: RunSummary) -> dict[str, Any]:
    """One run as `alexnet runs --json` prints it."""
    cfg, best, test = run.settings, run.best, run.test
    started = run.started
    return {
        "path": str(run.path),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)) if started else None,
        "model": (cfg.get("model") or {}).get("name"),
        "preset": cfg.get("preset"),
        "epochs": len(run.history),
        "epochs_planned": (cfg.get("train") or {}).get("epochs"),
        "seconds": round(run.seconds, 1),
        "best_val_acc": best["val_acc"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "test_acc": test.get("accuracy") if test else None,
        "test": test,
        "init_from": (run.config.get("init") or {}).get("from"),
    }


def _percent(value: Any) -> str:
    return f"{value * 100:.2f}%" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.1f}m" if seconds < 3600 else f"{seconds / 3600:.1f}h"


def runs_table(runs: list[RunSummary], title: str) -> Any:
    """A rich Table of the runs: when, model, preset, epochs, time, best validation and test accuracy, path."""
    from rich.table import Table  # lazy: only `alexnet runs` draws a table; train's closing lines do not

    table = Table(title=title, title_justify="left")
    for name, justify in (("started", "left"), ("model", "left"), ("preset", "left"), ("epochs", "right"),
                          ("time", "right"), ("best val", "right"), ("test", "right"), ("path", "left")):
        table.add_column(name, justify=justify, overflow="fold" if name == "path" else "ellipsis")
    for run in runs:
        row = run_row(run)
        planned = row["epochs_planned"]
        table.add_row((row["started"] or "-").replace("T", " ")[:16], row["model"] or "-", row["preset"] or "-",
                      f"{row['epochs']}/{planned}" if planned else str(row["epochs"]),
                      _duration(run.seconds) if run.history else "-", _percent(row["best_val_acc"]),
                      _percent(row["test_acc"]), row["path"])
    return table


def run_folder(checkpoint: str | Path) -> Path | None:
    """The run folder a checkpoint (or folder) argument belongs to; None for anything else."""
    path = Path(checkpoint)
    folder = path if path.is_dir() else path.parent
    return folder if is_run(folder) else None


def record_evaluation(checkpoint: str | Path, metrics: dict[str, Any], *, by: str, split: str,
                      data: str | None = None, ten_crop: bool = False) -> Path | None:
    """Append a score to RUN/evaluations.json (rewritten atomically); None when `checkpoint` is not in a run.

    A record file that cannot be read is left as it is (and nothing recorded) rather than overwritten."""
    run = run_folder(checkpoint)
    if run is None:
        return None
    path = run / EVALUATIONS
    records: Any = []
    if path.exists():
        try:
            records = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(records, list):
            return None
    from .atomic import write_json  # lazy: the writer brings numpy (jsonio); reading runs stays without it

    name = Path(checkpoint).name if Path(checkpoint).is_file() else next(
        (f for f in ("best.pt", "last.pt") if (run / f).is_file()), "best.pt")  # what load_checkpoint picks
    records.append({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "by": by, "checkpoint": name,
                    "data": data, "split": split, "ten_crop": ten_crop, "accuracy": metrics.get("accuracy"),
                    "top5": metrics.get("top5"), "num_samples": metrics.get("num_samples")})
    write_json(path, records[-MAX_EVALUATIONS:])
    return path


def chance_of(summary: RunSummary, accuracy: float) -> str | None:
    """The validation accuracy against chance (the largest class's share), as one sentence; None when the run
    did not record its validation classes."""
    counts, classes = summary.config.get("val_class_counts"), summary.config.get("classes")
    if not counts or not classes or len(counts) != len(classes):
        return None
    from .metrics import chance_sentence, compare_with_chance  # lazy: numpy, for runs that recorded class counts

    return chance_sentence(accuracy, int(sum(counts)), compare_with_chance(accuracy, counts, classes),
                           "validation images")


def closing_lines(run: str | Path) -> list[str]:
    """What `alexnet train` prints at the end: where the run is, its best validation score, the report."""
    summary = read_run(run)
    lines = [f"run folder: {summary.path}"]
    best = summary.best
    if best is not None:
        lines.append(f"best validation accuracy: {best['val_acc'] * 100:.2f}% at epoch {best['epoch']} "
                     f"(weights in {summary.path / 'best.pt'})")
        chance = chance_of(summary, best["val_acc"])
        if chance is not None:
            lines.append(chance)
    elif summary.history:
        lines.append(f"no validation split: best.pt holds the last epoch ({summary.history[-1]['epoch']}); "
                     f"`alexnet evaluate {summary.path / 'best.pt'} --data DATA` scores it on other data")
    diverged = summary.path / "diverged.json"
    if diverged.is_file():
        lines.append(f"the loss diverged and training restarted at a lower --lr ({diverged} has each try)")
    if summary.report is not None:
        lines.append(f"report: {summary.report}")
    else:
        lines.append(f"no HTML report written; `alexnet report {summary.path}` writes it")
    return lines
