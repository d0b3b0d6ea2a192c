"""Use a trained model (a checkpoint or an exported model folder): load it, evaluate it on a split, predict images."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .classifier import Classifier, top_predictions, views_setting
from .config import RunConfig
from .data.memory import BatchLoader, images_digest
from .data.pipeline import EvalData, InputSpec, build_eval, memory_eval, prepare_image
from .engine.checkpoint import load_checkpoint
from .engine.device import precision, resolve_device, tune_cpu_allocator
from .engine.evaluation import collect_logits, softmax_numpy
from .errors import AlexnetError
from .export.folder import FORMAT, model_folder, read_json_dict, read_model_folder
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


def probabilities(loaded: LoadedModel, loader: Any, amp: str | None = None,
                  views: tuple[bool, int] | None = None) -> np.ndarray:
    """Class probabilities (N, C) over a loader, with the run's own test-time augmentation (or `views`: (tta,
    tta_shift)); `amp` (default: the run's) is the arithmetic, e.g. "off" for fp32."""
    tta, shift = views if views is not None else (loaded.config.train.tta, loaded.config.train.tta_shift)
    logits, _ = collect_logits(loaded.model, loader, loaded.device, loaded.config.train.amp if amp is None else amp,
                               tta, shift)
    return softmax_numpy(logits)


def image_probabilities(loaded: LoadedModel, images: np.ndarray, batch_size: int = 256, amp: str = "off",
                        views: tuple[bool, int] | None = None) -> np.ndarray:
    """Class probabilities (N, C) of uint8 images (N, S, S, 3) as `prepare_image` makes them, in fp32.

    fp32 whatever the run's --amp: under `--amp auto` a CPU with bf16 units (AVX512_BF16, AMX) would evaluate
    in bf16, whose probabilities differ from fp32 ones by ~1e-2. Predictions are fp32 so that `alexnet predict`
    and the exported ONNX graph (fp32) give the same numbers within 1e-4; evaluate and report keep the run's
    precision, the one its validation scores were measured in. `amp` chooses another (the service's --amp bf16).
    `views`: (tta, tta_shift) instead of the run's own test-time views.
    """
    loader = memory_eval(images, np.zeros(len(images), dtype=np.int64), loaded.spec, batch_size, loaded.device,
                         loaded.config.train.channels_last)
    return probabilities(loaded, loader, amp=amp, views=views)


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
    return top_predictions(image_probabilities(loaded, arrays), loaded.classes, [str(p) for p in images], top_k)


def run_folder_config(source: str | Path) -> dict[str, Any]:
    """The training run's config.json (dataset, sizes, precision, hardware), {} when there is none."""
    path = Path(source)
    config = read_json_dict((path if path.is_dir() else path.parent) / "config.json") or {}
    return config if "config" in config else {}


def finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def run_metrics(loaded: LoadedModel, run_info: dict[str, Any]) -> dict[str, Any]:
    """The accuracy the run measured with these very weights, and on which split; accuracy None if none."""
    state, cfg = loaded.checkpoint, loaded.config
    if state.get("format") == FORMAT and state.get("metrics"):  # an exported folder exported again
        return state["metrics"]
    epoch = state.get("epoch")
    row = next((r for r in state.get("history") or [] if r.get("epoch") == epoch), {})
    measured = {"epoch": epoch, "precision": run_info.get("precision"),
                "views": {"tta": cfg.train.tta, "tta_shift": cfg.train.tta_shift},
                "split_description": f"{cfg.data.val_split:.0%} of the training data held out, stratified, "
                                     f"split seed {cfg.data.split_seed}",
                "train_accuracy": finite(row.get("train_acc"))}
    if "val_logits" in state:  # best.pt keeps the outputs of the validation that chose it
        logits, labels = state["val_logits"].float(), state["val_labels"]
        scores = classification_metrics(softmax_numpy(logits), labels.numpy(), loaded.classes)
        return {"split": "val", "accuracy": scores["accuracy"], "top5": scores["top5"],
                "loss": F.cross_entropy(logits, labels).item(), "num_samples": len(labels), **measured}
    if finite(row.get("val_acc")) is not None:
        return {"split": "val", "accuracy": finite(row["val_acc"]), "top5": None, "loss": finite(row.get("val_loss")),
                "num_samples": run_info.get("num_val"), **measured}
    why = ("the run held out no validation split" if cfg.data.val_split <= 0 else
           f"epoch {epoch} of the run was not validated")
    return {"split": None, "accuracy": None, "note": f"{why}; `alexnet evaluate DIR --data DATA` measures it"}


class TorchClassifier(Classifier):
    """A run folder, checkpoint or exported folder in torch: fp32 (or bf16 with amp="bf16"), the run's
    test-time views or fewer (`views`: "all", 1 or 2)."""

    backend = "torch"

    def __init__(self, path: Path, device: str = "auto", amp: str = "off", views: str | int = "all"):
        self.loaded = load_model(path, device)
        self.amp = amp
        self.precision = precision(self.loaded.device, amp)
        cfg = self.loaded.config
        self.tta, self.tta_shift = views_setting(views, cfg.train.tta, cfg.train.tta_shift)
        # The accuracy the run measured with these weights, as an export records it (exported: its record).
        metrics = run_metrics(self.loaded, run_folder_config(path))
        super().__init__(path, self.loaded.classes, self.loaded.spec,
                         {"name": cfg.model.name, "options": cfg.model.options()},
                         {"tta": self.tta, "tta_shift": self.tta_shift}, metrics)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        images = self.check_batch(images)
        if not len(images):
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return image_probabilities(self.loaded, images, amp=self.amp,
                                   views=(self.tta, self.tta_shift)).astype(np.float32, copy=False)
