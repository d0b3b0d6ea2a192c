"""Gather what a report shows (run folder, checkpoint, evaluated split) and hand it to the writers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..inference import eval_data, load_model, probabilities, saved_probabilities
from ..metrics import classification_metrics
from .html import write_report


def first_conv_weight(model: nn.Module) -> np.ndarray | None:
    """The first convolution's kernels (out, in, kh, kw): what the paper's Figure 3 draws."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.weight.detach().float().cpu().numpy()
    return None


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def build_report(run: Path, data: str | None = None, split: str = "val", out: Path | None = None,
                 device: str = "auto") -> Path:
    """Evaluate the run's best checkpoint on `split` of `data` and write RUN/report/ (or `out`)."""
    run_dir = run.parent if run.is_file() else run
    loaded = load_model(run, device)
    ev = eval_data(loaded, data, split)
    # The run's own validation split: the outputs of the validation that made best.pt, saved in it, are reused.
    saved = saved_probabilities(loaded, ev) if data is None and split == "val" else None
    probs = saved if saved is not None else probabilities(loaded, ev.loader)
    metrics = classification_metrics(probs, ev.labels, loaded.classes)
    run_config = read_json(run_dir / "config.json") or {}
    history = read_json(run_dir / "history.json")
    # The whole run's time (best.pt may be an earlier epoch's, whose own clock stopped there).
    seconds = sum(h["seconds"] for h in history) if history else loaded.checkpoint.get("train_seconds")
    run_info = {
        "name": run_dir.name,
        "config": loaded.checkpoint["config"],
        "dataset": ev.description if data else run_config.get("dataset", ev.description),
        "hardware": run_config.get("hardware", {}),
        "versions": run_config.get("versions", {}),
        "train_seconds": seconds,
        "epochs_trained": loaded.checkpoint.get("epoch"),
    }
    out_dir = out or run_dir / "report"
    write_report(out_dir, metrics=metrics, history=history, probs=probs,
                 labels=ev.labels, classes=loaded.classes, fetch_images=ev.fetch_images,
                 filters=first_conv_weight(loaded.model), run_info=run_info, split=split)
    return out_dir
