"""Use a trained checkpoint: load it, evaluate it on a split, predict images."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import RunConfig
from .data.memory import BatchLoader, images_digest
from .data.pipeline import EvalData, InputSpec, build_eval, memory_eval, prepare_image
from .engine.checkpoint import load_checkpoint
from .engine.device import resolve_device, tune_cpu_allocator
from .engine.evaluation import collect_logits, softmax_numpy
from .errors import AlexnetError
from .metrics import classification_metrics
from .models import create_model


@dataclass
class LoadedModel:
    """A model in eval mode with everything needed to feed it exactly as in training."""

    model: nn.Module
    classes: list[str]
    config: RunConfig
    spec: InputSpec
    device: torch.device
    checkpoint: dict[str, Any]


def load_model(checkpoint: str | Path, device: str = "auto") -> LoadedModel:
    """Rebuild the network a checkpoint describes and load its weights (never executes pickled code)."""
    state = load_checkpoint(checkpoint)
    cfg = RunConfig.from_dict(state["config"])
    dev = resolve_device(device)
    if dev.type == "cpu":
        tune_cpu_allocator()
    classes = list(state["classes"])
    model = create_model(cfg.model.name, num_classes=len(classes), image_size=state["image_size"],
                         **cfg.model.options())
    try:
        model.load_state_dict(state.get("ema", state["model"]))  # the averaged weights when the run kept them
    except RuntimeError as e:
        raise AlexnetError(f"{checkpoint}: weights do not fit model {cfg.model.name!r} with {len(classes)} "
                           f"classes ({str(e).splitlines()[0][:100]})") from None
    model = model.to(dev).eval()
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return LoadedModel(model, classes, cfg, InputSpec.from_dict(state["input"]), dev, state)


def same_source(a: str, b: str) -> bool:
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


def eval_data(loaded: LoadedModel, data: str | None, split: str, batch_size: int = 256,
              ten_crop: bool = False) -> EvalData:
    """The named split of `data` (default: the data the model was trained on), checked against the model."""
    cfg = loaded.config.data
    held_out = data is not None and not same_source(str(data), cfg.source)
    if data is not None:
        cfg = replace(cfg, source=str(data))
    ev = build_eval(cfg, loaded.spec, split, loaded.device, batch_size=batch_size,
                    channels_last=loaded.config.train.channels_last, ten_crop=ten_crop,
                    expect_classes=loaded.classes, held_out=held_out)
    return ev


def probabilities(loaded: LoadedModel, loader: Any) -> np.ndarray:
    """Class probabilities (N, C) over a loader, with the run's own test-time augmentation."""
    logits, _ = collect_logits(loaded.model, loader, loaded.device, loaded.config.train.amp,
                               loaded.config.train.tta, loaded.config.train.tta_shift)
    return softmax_numpy(logits)


def saved_probabilities(loaded: LoadedModel, ev: EvalData) -> np.ndarray | None:
    """The probabilities the run's own validation computed with these weights (saved in best.pt), when `ev`
    holds the very same images (content digest) and labels; None otherwise."""
    saved = loaded.checkpoint
    if "val_logits" not in saved or not isinstance(ev.loader, BatchLoader):
        return None
    if saved.get("val_digest") != images_digest(ev.loader.images) or not np.array_equal(saved["val_labels"].numpy(),
                                                                                          ev.labels):
        return None
    return softmax_numpy(saved["val_logits"])


def evaluate(checkpoint: str | Path, data: str | None = None, split: str = "test", device: str = "auto",
             batch_size: int = 256, ten_crop: bool = False) -> dict[str, Any]:
    """Accuracy, top-5, per-class scores and confusion matrix of a checkpoint on a split."""
    loaded = load_model(checkpoint, device)
    ev = eval_data(loaded, data, split, batch_size, ten_crop)
    return classification_metrics(probabilities(loaded, ev.loader), ev.labels, loaded.classes)


def predict(checkpoint: str | Path | LoadedModel, images: list[str | Path], top_k: int = 5,
            device: str = "auto") -> list[dict[str, Any]]:
    """Top-k classes with probabilities for each image file (any size or mode)."""
    loaded = checkpoint if isinstance(checkpoint, LoadedModel) else load_model(checkpoint, device)
    if top_k < 1:
        raise AlexnetError("--top-k must be >= 1")
    arrays = np.stack([prepare_image(p, loaded.spec) for p in images])
    loader = memory_eval(arrays, np.zeros(len(arrays), dtype=np.int64), loaded.spec, 256, loaded.device,
                         loaded.config.train.channels_last)
    probs = probabilities(loaded, loader)
    k = min(top_k, len(loaded.classes))
    results = []
    for path, p in zip(images, probs):
        order = np.argsort(-p)[:k]
        results.append({"image": str(path),
                        "predictions": [{"class": loaded.classes[i], "probability": float(p[i])} for i in order]})
    return results
