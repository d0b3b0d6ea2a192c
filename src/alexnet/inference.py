"""Use a trained checkpoint: load it, evaluate it on a split, predict images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import RunConfig
from .data.memory import BatchLoader, ImageSet, Normalizer, to_device_tensor
from .data.sources import Splits, load_splits
from .engine.checkpoint import load_checkpoint
from .engine.device import resolve_device
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
    normalize: Normalizer
    store_size: int
    device: torch.device
    checkpoint: dict[str, Any]


def load_model(checkpoint: str | Path, device: str = "auto") -> LoadedModel:
    """Rebuild the network a checkpoint describes and load its weights (never executes pickled code)."""
    state = load_checkpoint(checkpoint)
    cfg = RunConfig.from_dict(state["config"])
    dev = resolve_device(device)
    classes = list(state["classes"])
    model = create_model(cfg.model.name, num_classes=len(classes), image_size=state["image_size"],
                         **cfg.model.options())
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise AlexnetError(f"{checkpoint}: weights do not fit model {cfg.model.name!r} with {len(classes)} "
                           f"classes ({str(e).splitlines()[0][:100]})") from None
    model = model.to(dev).eval()
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    norm = state["normalization"]
    normalize = Normalizer(norm["mean"], norm["std"], state["image_size"], dev, cfg.train.channels_last)
    return LoadedModel(model, classes, cfg, normalize, int(state["store_size"]), dev, state)


def check_classes(loaded: LoadedModel, classes: list[str], source: str) -> None:
    if list(classes) != loaded.classes:
        raise AlexnetError(f"--data {source} has classes {classes[:5]}{'...' if len(classes) > 5 else ''} "
                           f"({len(classes)}) but the checkpoint was trained on {len(loaded.classes)} classes "
                           f"{loaded.classes[:5]}{'...' if len(loaded.classes) > 5 else ''}")


def split_for(loaded: LoadedModel, data: str | None, split: str) -> tuple[ImageSet, Splits]:
    """The named split of `data` (default: the data the model was trained on), checked against the model."""
    cfg = loaded.config.data
    source = data or cfg.source
    splits = load_splits(source, cfg.val_split, cfg.split_seed, cfg.cache_dir, cfg.workers)
    check_classes(loaded, splits.classes, source)
    images = splits.get(split)
    if images.images.shape[1] != loaded.store_size:
        raise AlexnetError(f"--data {source} holds {images.images.shape[1]}px images but the model was trained "
                           f"on {loaded.store_size}px ones")
    return images, splits


def run_model(loaded: LoadedModel, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (N, C) for uint8 NHWC images of the stored size, as validation computes them."""
    loader = BatchLoader(to_device_tensor(images, loaded.device), torch.zeros(len(images), dtype=torch.long),
                         batch_size, loaded.normalize, train=False)
    logits, _ = collect_logits(loaded.model, loader, loaded.device, loaded.config.train.amp,
                               loaded.config.train.tta)
    return softmax_numpy(logits)


def evaluate(checkpoint: str | Path, data: str | None = None, split: str = "test", device: str = "auto",
             batch_size: int = 256) -> dict[str, Any]:
    """Accuracy, top-5, per-class scores and confusion matrix of a checkpoint on a split."""
    loaded = load_model(checkpoint, device)
    images, _ = split_for(loaded, data, split)
    probs = run_model(loaded, images.images, batch_size)
    return classification_metrics(probs, images.labels, loaded.classes)


def predict(checkpoint: str | Path | LoadedModel, images: list[str | Path], top_k: int = 5,
            device: str = "auto") -> list[dict[str, Any]]:
    """Top-k classes with probabilities for each image file (any size or mode)."""
    from .data.images import fit_square, load_rgb

    loaded = checkpoint if isinstance(checkpoint, LoadedModel) else load_model(checkpoint, device)
    if top_k < 1:
        raise AlexnetError("--top-k must be >= 1")
    arrays = np.stack([fit_square(load_rgb(p), loaded.store_size) for p in images])
    probs = run_model(loaded, arrays)
    k = min(top_k, len(loaded.classes))
    results = []
    for path, p in zip(images, probs):
        order = np.argsort(-p)[:k]
        results.append({"image": str(path),
                        "predictions": [{"class": loaded.classes[i], "probability": float(p[i])} for i in order]})
    return results
