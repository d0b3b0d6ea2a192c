"""`alexnet explain`: the prediction for each image, as `alexnet predict` makes it, and a saliency map of the
explained class over the image file (alexnet.saliency). Images are found like predict's (files, folders, globs),
explained in batches and written as they come: overlay PNGs, one JSON list of heatmaps, or a table.

No torch here: Grad-CAM imports it when asked for, and occlusion on an exported folder runs on onnxruntime alone.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .atomic import atomic_write
from .data.images import load_rgb
from .data.prepare import prepare_pixels
from .errors import AlexnetError
from .jsonio import json_safe
from .predictions import batched, expand_images
from .runtime import Classifier, load_classifier, top_predictions
from .saliency.maps import file_map, peak
from .saliency.occlusion import check_patch, default_patch, default_stride, fill_colour, occlusion_maps

__all__ = ["METHODS", "explain_files", "explain_stream", "heatmap_rows", "load_explainer", "write_explanations"]

METHODS = ("gradcam", "gradcam++", "occlusion")
GRADIENT_METHODS = ("gradcam", "gradcam++")
JSON_DECIMALS = 6  # heatmap values in the JSON file: 1e-6 is far below what a map's [0, 1] scale resolves


def load_explainer(model: str | os.PathLike[str], method: str = "gradcam", backend: str = "auto",
                   device: str = "auto") -> Classifier:
    """The model `method` can explain: Grad-CAM needs gradients, so torch (a run, a checkpoint, or an exported
    folder's weights); occlusion runs on either backend, onnxruntime for an exported folder under "auto"."""
    check_method(method)
    if method in GRADIENT_METHODS:
        if backend == "onnx":
            raise no_gradients(method)
        if not torch_installed():
            raise AlexnetError(f"--method {method} needs torch, which is not installed; use --method occlusion on "
                               "an exported model folder (onnxruntime)")
        backend = "torch" if backend == "auto" else backend
    return load_classifier(model, backend, device)


def no_gradients(method: str) -> AlexnetError:
    return AlexnetError(f"--method {method} needs the model's gradients, which the ONNX graph does not give: use "
                        "--method occlusion with the ONNX backend, or pass a run folder or RUN/best.pt (or "
                        "--backend torch for an exported folder with model.safetensors)")


def torch_installed() -> bool:
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # an import hook that refuses torch counts as none
        return False


def check_method(method: str) -> None:
    if method not in METHODS:
        raise AlexnetError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")


def target_index(classes: Sequence[str], target: str | None, option: str = "--target") -> int | None:
    """The index of class `target` (None: the top class); an unknown name is refused naming the classes."""
    if target is None:
        return None
    if target not in classes:
        shown = ", ".join(classes[:30]) + (f", ... ({len(classes)} in all)" if len(classes) > 30 else "")
        raise AlexnetError(f"{option} {target!r} is not a class of this model; its classes: {shown}")
    return list(classes).index(target)


def check_options(classifier: Classifier, method: str, target: str | None, layer: str | None,
                  patch: int | None, stride: int | None) -> str | None:
    """Every option checked before the first image is read; returns the layer Grad-CAM will use."""
    check_method(method)
    target_index(classifier.classes, target)
    if method == "occlusion":
        if layer is not None:
            raise AlexnetError("--layer chooses Grad-CAM's layer; occlusion hides pixels of the image: drop --layer "
                               "or use --method gradcam")
        side = classifier.input_side
        check_patch(side, default_patch(side) if patch is None else patch,
                    default_stride(side) if stride is None else stride)
        return None
    if patch is not None or stride is not None:
        raise AlexnetError(f"--patch and --stride are occlusion's; --method {method} takes neither (drop them or "
                           "use --method occlusion)")
    loaded = getattr(classifier, "loaded", None)
    if loaded is None:
        raise no_gradients(method)
    from .saliency.cam import find_layer  # lazy: torch; occlusion on an ONNX graph never imports it

    return find_layer(loaded.model, layer)[0]


def saliency_maps(classifier: Classifier, images: np.ndarray, targets: np.ndarray, base: np.ndarray, method: str,
                  layer: str | None, patch: int | None, stride: int | None) -> np.ndarray:
    """(N, S, S) maps in [0, 1] over the model's input grid."""
    if method == "occlusion":
        return occlusion_maps(classifier.probabilities, images, targets, fill_colour(classifier.spec.mean),
                              patch, stride, base=base)
    from .saliency.cam import input_maps  # lazy: torch; occlusion on an ONNX graph never imports it

    return input_maps(classifier.loaded, images, targets, layer, method)


def explain_files(classifier: Classifier, paths: Sequence[str | os.PathLike[str]], method: str = "gradcam",
                  target: str | None = None, top_k: int = 5, layer: str | None = None, patch: int | None = None,
                  stride: int | None = None) -> list[dict[str, Any]]:
    """Explain a batch of image files: records {"image", "predictions" (top-k, predict's numbers), "class",
    "probability", "method", "layer", "heatmap" (float32 (H, W) in [0, 1] over the file), "peak" ({"x", "y"})}."""
    layer = check_options(classifier, method, target, layer, patch, stride)
    names = [str(p) for p in paths]
    sizes, pixels = [], []
    for path in paths:
        picture = load_rgb(path)  # the decoding `alexnet predict` does, with its one-line errors
        sizes.append(picture.size)
        pixels.append(prepare_pixels(picture, classifier.spec))
    images = np.stack(pixels)
    probs = classifier.probabilities(images)  # the runtime's prediction path: predict's very numbers
    predictions = top_predictions(probs, classifier.classes, names, top_k)
    fixed = target_index(classifier.classes, target)
    targets = np.full(len(images), fixed) if fixed is not None else np.argmax(probs, axis=1)
    base = probs[np.arange(len(images)), targets]
    maps = saliency_maps(classifier, images, targets, base, method, layer, patch, stride)
    results = []
    for name, (width, height), saliency, record, t, p in zip(names, sizes, maps, predictions, targets, base):
        heatmap = file_map(classifier.spec, saliency, width, height)
        results.append({"image": name, "predictions": record["predictions"], "class": classifier.classes[int(t)],
                        "probability": float(p), "method": method, "layer": layer, "heatmap": heatmap,
                        "peak": peak(heatmap)})
    return results


def explain_stream(classifier: Classifier, items: Sequence[str], method: str = "gradcam", target: str | None = None,
                   top_k: int = 5, layer: str | None = None, patch: int | None = None, stride: int | None = None,
                   batch_size: int = 16) -> Iterator[dict[str, Any]]:
    """`explain_files`' records one image at a time over files, folders and globs, `batch_size` images at once."""
    check_options(classifier, method, target, layer, patch, stride)  # before the first image, not at the first batch
    if top_k < 1:
        raise AlexnetError("--top-k must be >= 1")
    for batch in batched(expand_images(items), batch_size):
        yield from explain_files(classifier, batch, method, target, top_k, layer, patch, stride)


def heatmap_rows(heatmap: np.ndarray) -> Iterator[str]:
    """The JSON text of each row of a heatmap, JSON_DECIMALS decimals (`--json` and the service's /explain)."""
    for row in heatmap:
        values = np.round(row.astype(np.float64), JSON_DECIMALS).tolist()  # in [0, 1]: finite
        yield json.dumps(values, separators=(",", ":"))


def write_record(f: TextIO, result: dict[str, Any]) -> None:
    """`--json`'s record of one image, {"image", "class", "probability", "method", "heatmap": rows of floats},
    written a row at a time: a photo's map has millions of values, never all held as Python floats at once."""
    head = {key: result[key] for key in ("image", "class", "probability", "method")}
    f.write(json.dumps(json_safe(head), separators=(",", ":"), allow_nan=False)[:-1] + ',"heatmap":[')
    for i, row in enumerate(heatmap_rows(result["heatmap"])):
        f.write(("," if i else "") + row)
    f.write("]}")


def result_line(result: dict[str, Any]) -> str:
    """One line of the table: predict's top-k, then where the map of the explained class peaks."""
    top = "  ".join(f"{p['class']} {p['probability'] * 100:.1f}%" for p in result["predictions"])
    height, width = result["heatmap"].shape
    how = result["method"] + (f" at {result['layer']}" if result.get("layer") else "")
    where = (f"peaks at x={result['peak']['x']}, y={result['peak']['y']} of {width}x{height}" if result["peak"]
             else "is zero everywhere")
    return f"{result['image']}: {top}  | {how}: {result['class']} {where}"


class OverlayNames:
    """File names for the overlays, NAME-METHOD.png, unique within one call (cat/1.png and dog/1.png both
    explained: 1-gradcam.png and 1-gradcam-2.png)."""

    def __init__(self) -> None:
        self.taken: set[str] = set()

    def take(self, image: str, method: str) -> str:
        stem = f"{Path(image).stem}-{method}"
        name, count = f"{stem}.png", 1
        while name in self.taken:
            count += 1
            name = f"{stem}-{count}.png"
        self.taken.add(name)
        return name


def write_explanations(results: Iterable[dict[str, Any]], out: str | os.PathLike[str] | None = None,
                       json_path: str | os.PathLike[str] | None = None,
                       echo: Callable[[str], Any] = print) -> int:
    """Consume the records as they come: echo a line each, write its overlay into `out`, and write them all as
    one JSON list to `json_path` (complete or not at all: an unreadable image leaves an older file as it was).
    Returns how many images were explained."""
    names = OverlayNames()
    folder = Path(out) if out is not None else None
    if folder is not None and folder.exists() and not folder.is_dir():
        raise AlexnetError(f"--out {out} is a file; pass a folder for the overlay PNGs (it is created if missing)")
    if json_path is not None and Path(json_path).is_dir():
        raise AlexnetError(f"--json {json_path} is a folder; pass a file name such as heatmaps.json")

    def show(result: dict[str, Any]) -> None:
        line = result_line(result)
        if folder is not None:
            from .saliency.overlay import overlay_title, write_overlay  # lazy: matplotlib, only with --out

            title = overlay_title(result["class"], result["probability"], result["method"])
            path = write_overlay(folder / names.take(result["image"], result["method"]), load_rgb(result["image"]),
                                 result["heatmap"], title)
            line += f"  -> {path}"
        echo(line)

    count = 0
    if json_path is None:
        for result in results:
            show(result)
            count += 1
        return count

    def write(tmp: str) -> None:
        nonlocal count
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("[")
            for result in results:
                show(result)
                f.write(("," if count else "") + "\n")
                write_record(f, result)
                count += 1
            f.write("\n]\n")

    atomic_write(Path(json_path), write)
    echo(f"{count:,} heatmap{'s' * (count != 1)} written to {json_path}")
    return count
