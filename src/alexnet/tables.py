"""Plain-text tables of evaluation metrics for the terminal."""

from __future__ import annotations

from typing import Any

from .metrics import chance_sentence


def format_metrics(metrics: dict[str, Any], title: str) -> str:
    """Headline accuracy, per-class precision/recall/F1/support, and the confusion matrix (rows = true)."""
    classes = metrics["classes"]
    lines = [title, f"accuracy {metrics['accuracy'] * 100:.2f}%"
             + (f"   top-5 {metrics['top5'] * 100:.2f}%" if metrics.get("top5") is not None else "")
             + f"   samples {metrics['num_samples']:,}"]
    if metrics.get("chance"):
        lines.append(chance_sentence(metrics["accuracy"], metrics["num_samples"], metrics["chance"]))
    lines.append("")
    width = max(8, max(len(c) for c in classes))
    lines.append(f"{'class':<{width}}  precision  recall     f1  support")
    for name in classes:
        s = metrics["per_class"][name]
        lines.append(f"{name:<{width}}  {s['precision']:9.3f}  {s['recall']:6.3f}  {s['f1']:5.3f}  {s['support']:7,}")
    if len(classes) <= 30:  # a wider matrix is unreadable in a terminal; the report draws it
        cm = metrics["confusion_matrix"]
        cell = max(5, max(len(str(v)) for row in cm for v in row) + 1)
        short = [c[:cell - 1] for c in classes]
        lines += ["", "confusion matrix (rows = true class, columns = predicted)",
                  " " * width + "".join(f"{s:>{cell}}" for s in short)]
        for name, row in zip(classes, cm):
            lines.append(f"{name:<{width}}" + "".join(f"{v:>{cell}}" for v in row))
    return "\n".join(lines)
