"""Gather what a report shows (run folder, checkpoint, evaluated split) and hand it to the writers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..engine.evaluation import stacked_views
from ..inference import LoadedModel, eval_data, load_model, probabilities, saved_probabilities
from ..metrics import classification_metrics
from ..saliency import cam
from .heatmaps import Explainer
from .html import write_report


def first_conv_weight(model: nn.Module) -> np.ndarray | None:
    """The first convolution's kernels (out, in, kh, kw): what the paper's Figure 3 draws."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.weight.detach().float().cpu().numpy()
    return None


def gradcam_explainer(loaded: LoadedModel) -> Explainer | None:
    """Grad-CAM on the model's last convolution (its rectified maps) through the code `alexnet explain` runs (`saliency.cam.input_maps`:
    the run's normalisation and test-time views), with the layer's grid side for the caption; None for a model
    without convolutions, whose report then goes without maps rather than failing."""
    if not cam.conv_layers(loaded.model):
        return None
    layer, module = cam.find_layer(loaded.model)
    side, train = loaded.spec.image_size, loaded.config.train
    grids: list[int] = []
    handle = module.register_forward_hook(lambda m, i, output: grids.append(int(output.shape[-1])))
    try:
        with torch.no_grad():
            loaded.model(torch.zeros(1, 3, side, side, device=loaded.device))
    finally:
        handle.remove()
    views = len(stacked_views(torch.zeros(1, 3, side, side), train.tta, train.tta_shift)[1])
    return Explainer(lambda images, targets: cam.input_maps(loaded, images, targets, layer, "gradcam"),
                     "Grad-CAM", layer, grids[0] if grids else None, side, views)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def build_report(run: Path, data: str | None = None, split: str = "val", out: Path | None = None,
                 device: str = "auto", explain: bool = True) -> Path:
    """Evaluate the run's best checkpoint on `split` of `data` and write RUN/report/ (or `out`); `explain`: with the
    Grad-CAM maps of the examples and of the most confused pair."""
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
                 filters=first_conv_weight(loaded.model), run_info=run_info, split=split,
                 explainer=gradcam_explainer(loaded) if explain else None)
    return out_dir
