"""The one interface every backend implements: a loaded model that prepares images and returns probabilities.

    clf = alexnet.runtime.load_classifier("runs/demo")            # torch or onnxruntime, fp32 or int8
    image = clf.prepare(open("cat.jpg", "rb").read(), "cat.jpg")  # uint8 (S, S, 3)
    probs = clf.probabilities(image[None])                        # float32 (1, C)

No torch and no onnxruntime here: the backends (`alexnet.inference.TorchClassifier`,
`alexnet.runtime.OnnxClassifier`) import what they need; `alexnet.runtime.load_classifier` picks one.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .data.prepare import InputSpec, prepare_bytes, prepare_image
from .errors import AlexnetError

__all__ = ["PRECISIONS", "VIEWS", "Classifier", "clean_metrics", "run_folder", "top_predictions", "view_passes",
           "views_setting"]

PRECISIONS = ("auto", "fp32", "int8")
VIEWS = ("all", "1", "2")


def view_passes(tta: bool, tta_shift: int) -> int:
    """Forward passes per image for a run's test-time views: 1 (the image), 2 (and its mirror) or 6 (and
    copies moved by tta_shift px either way, with their mirrors)."""
    return (6 if tta_shift > 0 else 2) if tta else 1


def views_setting(choice: str | int, tta: bool, tta_shift: int) -> tuple[bool, int]:
    """(tta, tta_shift) for --views `choice`: "all" = the run's own views, 1 = the image alone, 2 = the image
    and its mirror. Fewer views trade accuracy for speed; more views than the run's are refused."""
    choice = str(choice)
    if choice not in VIEWS:
        raise AlexnetError(f"--views must be one of {', '.join(VIEWS)}, got {choice!r}")
    if choice == "all":
        return tta, tta_shift
    passes = int(choice)
    have = view_passes(tta, tta_shift)
    if passes > have:
        raise AlexnetError(f"--views {choice}: the model was evaluated with {have} view; use --views all or 1")
    return (passes == 2), 0


def top_predictions(probs: np.ndarray, classes: Sequence[str], names: Sequence[str], top_k: int
                    ) -> list[dict[str, Any]]:
    """`alexnet predict --json`'s records: {"image", "predictions": [{"class", "probability"}]}, best first."""
    if top_k < 1:
        raise AlexnetError("--top-k must be >= 1")
    k = min(top_k, len(classes))
    results = []
    for name, p in zip(names, probs):
        order = np.argsort(-p, kind="stable")[:k]
        results.append({"image": str(name),
                        "predictions": [{"class": classes[i], "probability": float(p[i])} for i in order]})
    return results


def clean_metrics(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """The headline of a metrics record (accuracy, top-5, split and its size, or a note why there is none)."""
    if not isinstance(metrics, dict):
        return None
    keep = ("accuracy", "top5", "split", "num_samples", "epoch", "split_description", "note")
    out = {k: metrics[k] for k in keep if metrics.get(k) is not None}
    if not isinstance(out.get("accuracy"), (int, float)) or not math.isfinite(out["accuracy"]):
        out.pop("accuracy", None)
    return out or None


def run_folder(path: Path) -> Path:
    """The folder of a run (or exported model) that `path` names: itself, or a checkpoint's parent."""
    return path if path.is_dir() else path.parent


class Classifier:
    """A loaded model: `.classes`, `.input_side`, `.card`, `.prepare(bytes, name)`, `.probabilities(images)`.

    `.backend` ("torch" or "onnx"), `.precision` ("fp32", "bf16" or "int8") and `.views` (the test-time views
    each image is evaluated with) say what computes the probabilities; the card repeats them for /model."""

    backend = ""
    precision = "fp32"

    def __init__(self, source: Path, classes: list[str], spec: InputSpec, model: dict[str, Any],
                 views: dict[str, Any], metrics: dict[str, Any] | None):
        self.source, self.classes, self.spec = source, list(classes), spec
        views = {"tta": bool(views.get("tta")), "tta_shift": int(views.get("tta_shift") or 0)}
        views["passes"] = view_passes(views["tta"], views["tta_shift"])
        self.views = views
        report = run_folder(source) / "report" / "report.html"
        self.report_dir: Path | None = report.parent if report.is_file() else None
        self.card = {"name": model.get("name"), "options": model.get("options") or {}, "classes": self.classes,
                     "num_classes": len(self.classes), "input_side": self.input_side, "input": spec.to_dict(),
                     "views": views, "metrics": clean_metrics(metrics), "source": str(source),
                     "backend": self.backend, "precision": self.precision,
                     "report": str(report) if self.report_dir else None}

    @property
    def input_side(self) -> int:
        return self.spec.input_side

    def prepare(self, data: bytes, name: str, max_pixels: int | None = None,
                size: tuple[int, int] | None = None) -> np.ndarray:
        """An encoded image (any format `alexnet predict` reads) -> uint8 (S, S, 3), as predict prepares it.
        `size`: the (width, height) its header declares, when already read."""
        return prepare_bytes(data, name, self.spec, max_pixels, size)

    def prepare_file(self, path: str | os.PathLike[str]) -> np.ndarray:
        return prepare_image(path, self.spec)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) -> class probabilities float32 (N, C)."""
        raise NotImplementedError

    def check_batch(self, images: np.ndarray) -> np.ndarray:
        s = self.input_side
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (s, s, 3):
            raise ValueError(f"expected uint8 images (N, {s}, {s}, 3), got {images.dtype} {images.shape}")
        return np.ascontiguousarray(images)

    def predict_files(self, paths: Sequence[str | os.PathLike[str]], top_k: int = 5) -> list[dict[str, Any]]:
        """`alexnet predict`: top-k classes of each image file."""
        if top_k < 1:
            raise AlexnetError("--top-k must be >= 1")
        images = np.stack([self.prepare_file(p) for p in paths])
        return top_predictions(self.probabilities(images), self.classes, [str(p) for p in paths], top_k)
