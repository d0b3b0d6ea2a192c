"""One way to run a trained classifier, over two backends: torch or onnxruntime.

    clf = load_classifier("runs/demo")            # a run folder, RUN/best.pt or an exported model folder
    image = clf.prepare(open("cat.jpg", "rb").read(), "cat.jpg")      # uint8 (S, S, 3)
    probs = clf.probabilities(image[None])                              # float32 (1, C)

- torch: a run folder, a checkpoint or an exported folder (through `alexnet.inference.load_model`), in fp32
  with the run's own test-time views, as `alexnet predict` computes them.
- onnx: an exported folder (`alexnet export RUN --out DIR`), whose model.onnx takes uint8 (N, S, S, 3) RGB and
  holds normalisation, resize, test-time views and softmax. This path never imports torch: a process that
  serves or predicts with it starts in well under a second.

Both prepare an image exactly as `alexnet predict` does (alexnet.data.prepare) and describe themselves with a
small model card (`.card`) for `alexnet serve`'s /model and its page.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .data.prepare import InputSpec, prepare_bytes, prepare_image
from .errors import AlexnetError
from .export.folder import CONFIG, GRAPH, model_folder, read_config  # torch-free

__all__ = ["BACKENDS", "Classifier", "load_classifier", "top_predictions"]

BACKENDS = ("auto", "torch", "onnx")


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
    """A loaded model: `.classes`, `.input_side`, `.card`, `.prepare(bytes, name)`, `.probabilities(images)`."""

    backend = ""
    precision = "fp32"

    def __init__(self, source: Path, classes: list[str], spec: InputSpec, model: dict[str, Any],
                 views: dict[str, Any], metrics: dict[str, Any] | None):
        self.source, self.classes, self.spec = source, list(classes), spec
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

    def prepare(self, data: bytes, name: str, max_pixels: int | None = None) -> np.ndarray:
        """An encoded image (any format `alexnet predict` reads) -> uint8 (S, S, 3), as predict prepares it."""
        return prepare_bytes(data, name, self.spec, max_pixels)

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


class TorchClassifier(Classifier):
    """A run folder, checkpoint or exported folder in torch: fp32 (or bf16 with amp="bf16"), the run's
    test-time views."""

    backend = "torch"

    def __init__(self, path: Path, device: str = "auto", amp: str = "off"):
        from .engine.device import precision
        from .export.build import run_folder_config, run_metrics
        from .inference import load_model

        self.loaded = load_model(path, device)
        self.amp = amp
        self.precision = precision(self.loaded.device, amp)
        cfg = self.loaded.config
        # The accuracy the run measured with these weights, as an export records it (exported: its record).
        metrics = run_metrics(self.loaded, run_folder_config(path))
        super().__init__(path, self.loaded.classes, self.loaded.spec,
                         {"name": cfg.model.name, "options": cfg.model.options()},
                         {"tta": cfg.train.tta, "tta_shift": cfg.train.tta_shift}, metrics)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        from .inference import image_probabilities

        images = self.check_batch(images)
        if not len(images):
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return image_probabilities(self.loaded, images, amp=self.amp).astype(np.float32, copy=False)


class OnnxClassifier(Classifier):
    """An exported folder's model.onnx in onnxruntime; torch is never imported."""

    backend = "onnx"

    def __init__(self, folder: Path, device: str = "auto", threads: int | None = None, spin: bool = True):
        import onnxruntime as ort

        config = read_config(folder)
        try:
            spec = InputSpec.from_dict(config["input"])
            classes, model = list(config["classes"]), dict(config["model"])
        except (KeyError, TypeError, ValueError) as e:
            raise AlexnetError(f"{folder / CONFIG} is incomplete ({type(e).__name__}: {e}); export the model "
                               "again") from None
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(folder / GRAPH), options, providers=providers(device))
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for a bad file
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise AlexnetError(f"{folder / GRAPH} cannot be loaded by onnxruntime ({first}); "
                               "export the model again") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        views = config.get("views") or {}
        super().__init__(folder, classes, spec, model, {"tta": views.get("tta"), "tta_shift": views.get("tta_shift")},
                         config.get("metrics"))

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        images = self.check_batch(images)
        if not len(images):
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return self.session.run([self.output_name], {self.input_name: images})[0]


def providers(device: str) -> list[str]:
    """onnxruntime execution providers for --device: auto = CUDA when this onnxruntime has it, else CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device in ("auto", "cuda") or device.startswith("cuda:"):
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if device != "auto":
            raise AlexnetError(f"--device {device}: this onnxruntime has no CUDA provider; use --device cpu")
    elif device != "cpu":
        raise AlexnetError(f"--device {device} is not available with --backend onnx; use auto, cpu or cuda")
    return ["CPUExecutionProvider"]


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def load_classifier(path: str | os.PathLike[str], backend: str = "auto", device: str = "auto",
                    threads: int | None = None, spin: bool = True, amp: str = "off") -> Classifier:
    """Load a model once for predicting. backend: auto (onnx for an exported folder with model.onnx when
    onnxruntime is installed, else torch) | torch | onnx. `threads`: onnxruntime's intra-op threads.

    `amp`: "off" (fp32: the numbers of `alexnet predict` and of the ONNX graph) or, torch only, "bf16": autocast,
    faster for large networks on a CPU with bf16 units (AVX512_BF16, AMX), probabilities within ~1e-2 of fp32.

    `spin=False`: the model's worker threads sleep between operations instead of spinning, for a process whose
    other threads (an HTTP server's event loop and decoders) need the same cores. On the 2-core box under load,
    torch's spinning OpenMP threads made a batch 5-40x slower. For torch it takes effect only when torch is
    not imported yet (OMP_WAIT_POLICY is read once); an OMP_WAIT_POLICY already set wins.
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise AlexnetError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if not path.exists():
        raise AlexnetError(f"{path} does not exist; pass a run folder, RUN/best.pt or an exported model folder")
    folder = model_folder(path)
    exported = folder is not None
    has_onnx = exported and (folder / GRAPH).is_file()
    if amp not in ("off", "bf16"):
        raise AlexnetError(f"--amp must be off or bf16, got {amp!r}")
    if backend == "auto":
        backend = "onnx" if has_onnx and onnxruntime_available() and amp == "off" else "torch"
    if backend == "onnx":
        if not has_onnx:
            what = f"an exported folder without {GRAPH}" if exported else "not an exported model folder"
            raise AlexnetError(f"--backend onnx needs an exported model folder with model.onnx, and {path} is "
                               f"{what}; run `alexnet export RUN --out DIR` or use --backend torch")
        if not onnxruntime_available():
            raise AlexnetError("--backend onnx needs onnxruntime: pip install 'alexnet[serve]'")
        if amp != "off":
            raise AlexnetError("--amp bf16 is for --backend torch; the ONNX graph computes in fp32")
        return OnnxClassifier(folder, device, threads, spin)
    if not spin:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return TorchClassifier(folder or path, device, amp)
