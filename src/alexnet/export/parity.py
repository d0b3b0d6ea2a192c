"""The export's check: torch and onnxruntime side by side on real images, the same uint8 arrays into both."""

from __future__ import annotations

import os
import time
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


@dataclass
class Int8Check:
    """int8 against fp32 (both onnxruntime, the run's views) on the same held-out images."""

    data: str
    split: str
    images: int
    top1_agree: int
    accuracy_fp32: float
    accuracy_int8: float
    max_abs_diff: float
    max_accuracy_drop: float  # in points
    bytes_fp32: int
    bytes_int8: int
    speed: dict[str, Any]

    @property
    def drop_points(self) -> float:
        return (self.accuracy_fp32 - self.accuracy_int8) * 100

    @property
    def passed(self) -> bool:
        return self.drop_points <= self.max_accuracy_drop + 1e-9

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drop_points": self.drop_points, "passed": self.passed,
                "metrics": {"split": self.split, "accuracy": self.accuracy_int8, "num_samples": self.images,
                            "precision": "int8", "note": f"int8 graph, measured by the export's check on {self.data}"}}

    def lines(self) -> list[str]:
        s = self.speed
        return [f"int8 check on {self.images:,} images of the {self.split} split of {self.data}: top-1 agreement "
                f"{self.top1_agree / self.images * 100:.2f}% ({self.top1_agree:,}/{self.images:,}); accuracy fp32 "
                f"{self.accuracy_fp32 * 100:.2f}%, int8 {self.accuracy_int8 * 100:.2f}% "
                f"({-self.drop_points:+.2f} points, limit -{self.max_accuracy_drop:g}); largest probability "
                f"difference {self.max_abs_diff:.3f}",
                f"int8 size and speed: model.onnx {self.bytes_fp32 / 1e6:.2f} MB, model.int8.onnx "
                f"{self.bytes_int8 / 1e6:.2f} MB; {s['fp32_images_s']:,.0f} images/s fp32, {s['int8_images_s']:,.0f} "
                f"images/s int8 ({s['ratio']:.2f}x; batches of {s['batch']}, {s['threads']} threads, "
                f"median of {s['repeats']})"]


def graph_speed(graphs: dict[str, Path], images: np.ndarray, batch: int = 32, repeats: int = 7,
                seconds: float = 0.5) -> dict[str, Any]:
    """Images/s of each graph in onnxruntime on the same batch, measured in turns (fp32, int8, fp32, ...) so
    that a CPU whose speed drifts treats them alike; each turn runs for about `seconds`, median of `repeats`."""
    import onnxruntime as ort  # lazy: the export extra

    x = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    runners = {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for name, path in graphs.items()}
    for runner in runners.values():  # warm-up: first runs allocate and pick kernels
        for _ in range(3):
            runner.run([OUTPUT], {INPUT: x})
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, runner in runners.items():
            n, start = 0, time.perf_counter()
            while True:
                runner.run([OUTPUT], {INPUT: x})
                n += 1
                elapsed = time.perf_counter() - start
                if elapsed >= seconds:
                    break
            rates[name].append(n * batch / elapsed)
    out: dict[str, Any] = {f"{name}_images_s": float(np.median(r)) for name, r in rates.items()}
    out.update(batch=batch, repeats=repeats, threads=os.cpu_count())
    return out


def check_int8(fp32: Path, int8: Path, images: np.ndarray, labels: np.ndarray, data: str, split: str,
               max_accuracy_drop: float) -> Int8Check:
    """int8 and fp32 graphs on the same images: agreement, accuracy of each, largest difference, size, speed."""
    p32, p8 = onnx_probabilities(fp32, images), onnx_probabilities(int8, images)
    top32, top8 = p32.argmax(1), p8.argmax(1)
    speed = graph_speed({"fp32": fp32, "int8": int8}, images)
    speed["ratio"] = speed["int8_images_s"] / speed["fp32_images_s"]
    return Int8Check(data=data, split=split, images=len(images), top1_agree=int((top32 == top8).sum()),
                     accuracy_fp32=float((top32 == labels).mean()), accuracy_int8=float((top8 == labels).mean()),
                     max_abs_diff=float(np.abs(p32 - p8).max()), max_accuracy_drop=float(max_accuracy_drop),
                     bytes_fp32=fp32.stat().st_size, bytes_int8=int8.stat().st_size, speed=speed)
