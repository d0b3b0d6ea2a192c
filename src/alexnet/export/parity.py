"""The export's check: torch and onnxruntime side by side on real images, the same uint8 arrays into both."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AlexnetError
from ..inference import LoadedModel, eval_data, image_probabilities, same_source
from .graph import INPUT, OUTPUT, require

# Largest |p_torch - p_onnx| accepted: both compute in fp32, so what differs is summation order (~1e-7).
TOLERANCE = 1e-4
BATCH = 128  # images per onnxruntime call: the 227 px networks' activations stay well under a GB


@dataclass
class Parity:
    """What the check measured on `images` images of `data` (its `split` split)."""

    data: str
    split: str
    images: int
    max_abs_diff: float
    top1_agree: int
    accuracy_torch: float
    accuracy_onnx: float
    tolerance: float = TOLERANCE

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance and self.top1_agree == self.images

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        return (f"{self.images:,} images of the {self.split} split of {self.data}: max |p_torch - p_onnx| = "
                f"{self.max_abs_diff:.2e} (tolerance {self.tolerance:.0e}), top-1 agreement "
                f"{self.top1_agree:,}/{self.images:,}; accuracy torch {self.accuracy_torch * 100:.2f}%, "
                f"onnx {self.accuracy_onnx * 100:.2f}%")


def check_split(loaded: LoadedModel, data: str) -> str:
    """The project's evaluation data for `data`: the run's validation split when it is the training data (its
    training split when the run held none out), else its test split or, for a plain class folder, all of it."""
    if same_source(str(data), loaded.config.data.source):
        return "val" if loaded.config.data.val_split > 0 else "train"
    return "test"


def check_images(loaded: LoadedModel, data: str, limit: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(uint8 images (n, S, S, 3) as `alexnet predict` prepares them, labels, split): up to `limit` images
    spread evenly over the split, so every class is in a large enough sample."""
    split = check_split(loaded, data)
    ev = eval_data(loaded, data, split)
    if len(ev.labels) == 0:
        raise AlexnetError(f"--check {data}: its {split} split has no images")
    idx = np.unique(np.linspace(0, len(ev.labels) - 1, min(limit, len(ev.labels))).round().astype(np.int64))
    return np.ascontiguousarray(ev.fetch_images(idx)), np.asarray(ev.labels)[idx], split


def onnx_probabilities(graph: Path, images: np.ndarray) -> np.ndarray:
    """Class probabilities from the ONNX graph under onnxruntime, as any user of the file would get them."""
    require("onnxruntime")
    import onnxruntime as ort

    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([OUTPUT], {INPUT: images[i:i + BATCH]})[0]
                           for i in range(0, len(images), BATCH)])


def check_parity(loaded: LoadedModel, graph: Path, data: str, limit: int) -> Parity:
    """Run the torch model (as `alexnet predict` does, fp32) and the ONNX graph on the same images."""
    require("onnxruntime")
    images, labels, split = check_images(loaded, data, limit)
    torch_probs = image_probabilities(loaded, images)
    onnx_probs = onnx_probabilities(graph, images)
    top_torch, top_onnx = torch_probs.argmax(1), onnx_probs.argmax(1)
    return Parity(data=str(data), split=split, images=len(images),
                  max_abs_diff=float(np.abs(torch_probs - onnx_probs).max()),
                  top1_agree=int((top_torch == top_onnx).sum()),
                  accuracy_torch=float((top_torch == labels).mean()), accuracy_onnx=float((top_onnx == labels).mean()))
