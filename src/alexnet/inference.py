"""Use a trained model (a checkpoint or an exported model folder): load it, evaluate it on a split, predict images."""

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
from .export.folder import model_folder, read_model_folder
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
    """Rebuild the network a checkpoint (RUN/best.pt, a run folder) or an exported model folder (`alexnet
    export`) describes and load its weights (never executes pickled code)."""
    folder = model_folder(checkpoint)
    state = read_model_folder(folder) if folder is not None else load_checkpoint(checkpoint)
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


def probabilities(loaded: LoadedModel, loader: Any, amp: str | None = None) -> np.ndarray:
    """Class probabilities (N, C) over a loader, with the run's own test-time augmentation; `amp` (default: the
    run's) is the arithmetic, e.g. "off" for fp32."""
    logits, _ = collect_logits(loaded.model, loader, loaded.device, loaded.config.train.amp if amp is None else amp,
                               loaded.config.train.tta, loaded.config.train.tta_shift)
    return softmax_numpy(logits)


def image_probabilities(loaded: LoadedModel, images: np.ndarray, batch_size: int = 256, amp: str = "off"
                        ) -> np.ndarray:
    """Class probabilities (N, C) of uint8 images (N, S, S, 3) as `prepare_image` makes them, in fp32.

    fp32 whatever the run's --amp: under `--amp auto` a CPU with bf16 units (AVX512_BF16, AMX) would evaluate
    in bf16, whose probabilities differ from fp32 ones by ~1e-2. Predictions are fp32 so that `alexnet predict`
    and the exported ONNX graph (fp32) give the same numbers within 1e-4; evaluate and report keep the run's
    precision, the one its validation scores were measured in. `amp` chooses another (the service's --amp bf16).
    """
    loader = memory_eval(images, np.zeros(len(images), dtype=np.int64), loaded.spec, batch_size, loaded.device,
                         loaded.config.train.channels_last)
    return probabilities(loaded, loader, amp=amp)


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
    from .runtime import top_predictions

    if top_k < 1:
        raise AlexnetError("--top-k must be >= 1")
    arrays = np.stack([prepare_image(p, loaded.spec) for p in images])
    return top_predictions(image_probabilities(loaded, arrays), loaded.classes, [str(p) for p in images], top_k)
