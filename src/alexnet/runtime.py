"""One way to run a trained classifier, over two backends: torch or onnxruntime.

    clf = load_classifier("runs/demo")            # a run folder, RUN/best.pt or an exported model folder
    image = clf.prepare(open("cat.jpg", "rb").read(), "cat.jpg")      # uint8 (S, S, 3)
    probs = clf.probabilities(image[None])                              # float32 (1, C)

- torch (`alexnet.inference.TorchClassifier`): a run folder, a checkpoint or an exported folder, in fp32 (or
  bf16 autocast) with the run's own test-time views or fewer, as `alexnet predict` computes them.
- onnx (`OnnxClassifier`): an exported folder (`alexnet export RUN --out DIR`), whose model.onnx takes uint8
  (N, S, S, 3) RGB and holds normalisation, resize, test-time views and softmax; model.int8.onnx (`--quantize
  int8`) is the same contract in 8-bit arithmetic. This path never imports torch: a process that serves or
  predicts with it starts in well under a second.

Both prepare an image exactly as `alexnet predict` does (alexnet.data.prepare) and describe themselves with a
small model card (`.card`) for `alexnet serve`'s /model and its page.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from .classifier import PRECISIONS, VIEWS, Classifier, top_predictions, view_passes, views_setting
from .cpuinfo import int8_class, int8_description
from .data.prepare import InputSpec
from .errors import AlexnetError
from .export.folder import CONFIG, GRAPH, graph_file, model_folder, read_config  # torch-free

__all__ = ["BACKENDS", "PRECISIONS", "VIEWS", "Classifier", "load_classifier", "recommended_precision",
           "top_predictions"]

BACKENDS = ("auto", "torch", "onnx")


class OnnxClassifier(Classifier):
    """An exported folder's graph in onnxruntime (fp32 model.onnx or int8 model.int8.onnx, the run's views or
    fewer); torch is never imported."""

    backend = "onnx"

    def __init__(self, folder: Path, device: str = "auto", threads: int | None = None, spin: bool = True,
                 precision: str = "fp32", views: str = "all"):
        import onnxruntime as ort  # lazy: the serve/export extra

        config = read_config(folder)
        try:
            spec = InputSpec.from_dict(config["input"])
            classes, model = list(config["classes"]), dict(config["model"])
            run_views = config.get("views") or {}
            tta, shift = views_setting(views, bool(run_views.get("tta")), int(run_views.get("tta_shift") or 0))
        except (KeyError, TypeError, ValueError) as e:
            raise AlexnetError(f"{folder / CONFIG} is incomplete ({type(e).__name__}: {e}); export the model "
                               "again") from None
        self.precision = precision
        passes, all_passes = view_passes(tta, shift), view_passes(bool(run_views.get("tta")),
                                                                   int(run_views.get("tta_shift") or 0))
        name = graph_file(precision, passes, all_passes)
        if not (folder / name).is_file():
            how = ("alexnet export RUN --out DIR --quantize int8" if precision == "int8"
                   else "alexnet export RUN --out DIR")
            raise AlexnetError(f"{folder} has no {name} (--precision {precision} --views {views}); export it with "
                               f"`{how}`, or use --backend torch")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(folder / name), options, providers=providers(device))
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for a bad file
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise AlexnetError(f"{folder / name} cannot be loaded by onnxruntime ({first}); "
                               "export the model again") from None
        self.graph = folder / name
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        metrics = config.get("metrics")
        if precision == "int8" and passes == all_passes:  # what the export's check measured for this graph
            metrics = ((config.get("int8") or {}).get("check") or {}).get("metrics") or metrics
        super().__init__(folder, classes, spec, model, {"tta": tta, "tta_shift": shift}, metrics)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        images = self.check_batch(images)
        if not len(images):
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return self.session.run([self.output_name], {self.input_name: images})[0]


def providers(device: str) -> list[str]:
    """onnxruntime execution providers for --device: auto = CUDA when this onnxruntime has it, else CPU."""
    import onnxruntime as ort  # lazy: the serve/export extra

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


def recommended_precision(config: dict[str, Any]) -> tuple[str, str]:
    """(precision, why) for --precision auto on an exported folder: int8 only where the export measured it
    faster within the accuracy limit on a CPU of the same 8-bit class as this one; fp32 when in doubt."""
    int8 = config.get("int8") or {}
    advice = int8.get("recommendation") or {}
    here = int8_class()
    if not int8:
        return "fp32", "the folder has no int8 graph"
    if advice.get("precision") != "int8":
        return "fp32", advice.get("why") or "the export did not measure int8 as the better choice"
    if advice.get("int8_class") != here:
        return "fp32", (f"int8 was measured on a CPU with {int8_description(advice.get('int8_class', '?'))}, this "
                        f"one has {int8_description(here)}; --precision int8 to use it anyway")
    return "int8", advice.get("why") or "measured faster within the accuracy limit on this kind of CPU"


def load_classifier(path: str | os.PathLike[str], backend: str = "auto", device: str = "auto",
                    threads: int | None = None, spin: bool = True, amp: str = "off", precision: str = "auto",
                    views: str | int = "all") -> Classifier:
    """Load a model once for predicting. backend: auto (onnx for an exported folder with model.onnx when
    onnxruntime is installed, else torch) | torch | onnx. `threads`: onnxruntime's intra-op threads.

    `precision`: "auto" (what the exported folder recommends for this CPU: int8 only where its export measured
    int8 faster within the accuracy limit on the same kind of CPU; else fp32), "fp32" or "int8" (an exported
    folder's model.int8.onnx, `alexnet export --quantize int8`). `views`: "all" (the run's test-time views), 1
    (the image alone) or 2 (and its mirror image): fewer views are faster and usually a little less accurate.

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
    if precision not in PRECISIONS:
        raise AlexnetError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    views = str(views)
    if views not in VIEWS:
        raise AlexnetError(f"--views must be one of {', '.join(VIEWS)}, got {views!r}")
    if not path.exists():
        raise AlexnetError(f"{path} does not exist; pass a run folder, RUN/best.pt or an exported model folder")
    folder = model_folder(path)
    exported = folder is not None
    has_onnx = exported and (folder / GRAPH).is_file()
    if amp not in ("off", "bf16"):
        raise AlexnetError(f"--amp must be off or bf16, got {amp!r}")
    if precision == "auto":
        precision = recommended_precision(read_config(folder))[0] if has_onnx and backend != "torch" else "fp32"
    if precision == "int8":
        if backend == "torch" or not exported:
            raise AlexnetError("--precision int8 runs an exported folder's model.int8.onnx in onnxruntime; export "
                               "one with `alexnet export RUN --out DIR --quantize int8` and pass DIR"
                               + (" without --backend torch" if backend == "torch" else ""))
        if amp != "off":
            raise AlexnetError("--amp bf16 is for --backend torch in fp32 weights; drop it with --precision int8")
        backend = "onnx"
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
        return OnnxClassifier(folder, device, threads, spin, precision, views)
    if not spin:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from .inference import TorchClassifier  # lazy: torch, which the onnxruntime path never imports

    return TorchClassifier(folder or path, device, amp, views)
