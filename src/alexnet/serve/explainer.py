"""POST /explain's work: for each uploaded image, the top-k /predict answers and a saliency map of one class
(alexnet.saliency), as `alexnet explain` computes it: the heatmap over the image file with `--json`'s numbers,
and the overlay PNG of `--out`.

Everything the model computes goes through the service's dynamic batcher, under its limits:

- the probabilities: the very pass /predict uses, so the top-k and the explained class are /predict's;
- occlusion's occluded copies: more images for that pass, so the copies of concurrent requests share forward
  passes with each other and with predictions (49 copies per image for a 32 px model, 64 for 227 px);
- Grad-CAM's and Grad-CAM++'s gradient passes (torch only): a queue per method, batched across requests.

Bringing a map back onto its image file, drawing the overlay and writing the JSON run on the explainer's own
threads, off the event loop. On the onnx backend nothing here imports torch: only a torch classifier's gradient
passes import alexnet.saliency.cam, when they first run.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import io
import json
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.images import load_rgb
from ..errors import AlexnetError
from ..explanations import GRADIENT_METHODS, METHODS, heatmap_rows, target_index
from ..runtime import Classifier, top_predictions
from ..saliency.maps import file_map
from ..saliency.occlusion import fill_colour, occlusion_maps
from .batching import BatcherStopped, DynamicBatcher, MapPass
from .errors import ClientError, image_refusal

__all__ = ["ExplainOptions", "Explainer", "gradient_passes"]

FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


@dataclass(frozen=True)
class ExplainOptions:
    """One request's choices: the method, the class to explain (None: the top one), what the answer carries."""

    method: str
    target: int | None
    heatmap: bool = True
    overlay: bool = True


def gradient_passes(classifier: Classifier) -> dict[str, MapPass]:
    """Grad-CAM's gradient passes for the batcher: one per method for a torch classifier, none for onnxruntime
    (the ONNX graph gives no gradients)."""
    loaded = getattr(classifier, "loaded", None)
    if loaded is None:
        return {}

    def gradient_pass(method: str) -> MapPass:
        def maps(images: np.ndarray, targets: np.ndarray) -> np.ndarray:
            from ..saliency.cam import input_maps  # lazy: torch, for Grad-CAM on a torch model only

            return input_maps(loaded, images, targets, None, method)  # the rectified last convolution, as explain's default

        return maps

    return {method: gradient_pass(method) for method in GRADIENT_METHODS}


def flag(query: Mapping[str, str], name: str) -> bool:
    text = query.get(name)
    if text is None:
        return True
    if text.lower() not in FLAGS:
        raise ClientError(400, f"{name} must be true or false, got {text!r}")
    return FLAGS[text.lower()]


def wait_on_loop(future: concurrent.futures.Future, loop: asyncio.AbstractEventLoop) -> Any:
    """From a worker thread, the result of a coroutine handed to the event loop; BatcherStopped once the loop has
    stopped (a service shutting down) instead of a thread that waits forever."""
    while True:
        try:
            return future.result(timeout=1.0)
        except concurrent.futures.TimeoutError:
            if not loop.is_running():
                future.cancel()
                raise BatcherStopped("the service is shutting down") from None


class Explainer:
    """Saliency maps for the service's requests, computed through `batcher` (see the module's docstring)."""

    def __init__(self, classifier: Classifier, batcher: DynamicBatcher, threads: int):
        self.classifier, self.batcher = classifier, batcher
        self.default_method = "gradcam" if "gradcam" in batcher.maps else "occlusion"
        self.fill = fill_colour(classifier.spec.mean)
        # Occlusion's driver waits here on the batcher, and maps, overlays and JSON are made here: never on the
        # event loop, nor on the decoders' threads, which uploads to /predict need meanwhile.
        self.workers = ThreadPoolExecutor(max(2, threads), thread_name_prefix="alexnet-explain")
        # Overlays are drawn one at a time: matplotlib does not promise that figures on several threads are safe.
        self._drawing = threading.Lock()

    def close(self) -> None:
        self.workers.shutdown(wait=False, cancel_futures=True)

    def options(self, query: Mapping[str, str]) -> ExplainOptions:
        """A request's query (`method`, `target`, `heatmap`, `overlay`) checked before its body is read."""
        method = query.get("method") or self.default_method
        if method not in METHODS:
            raise ClientError(400, f"method must be one of {', '.join(METHODS)}, got {method!r}")
        if method in GRADIENT_METHODS and method not in self.batcher.maps:
            raise ClientError(400, f"method {method} needs the model's gradients, which this service's ONNX backend "
                                   "does not give; use method=occlusion (the default here), or serve the run folder "
                                   "or the exported folder with --backend torch")
        try:
            target = target_index(self.classifier.classes, query.get("target") or None, "target")
        except AlexnetError as e:
            raise ClientError(400, str(e)) from None
        return ExplainOptions(method, target, flag(query, "heatmap"), flag(query, "overlay"))

    async def explain(self, files: list[tuple[str, bytes]], images: list[np.ndarray], options: ExplainOptions,
                      top_k: int) -> list[bytes]:
        """The JSON answer for each upload, (name, bytes) in `files`, prepared as `images` (uint8 (S, S, 3))."""
        loop = asyncio.get_running_loop()
        probs = np.stack(await self.batcher.predict(images))
        names = [name for name, _ in files]
        predictions = top_predictions(probs, self.classifier.classes, names, top_k)
        rows = np.arange(len(images))
        targets = np.full(len(images), options.target) if options.target is not None else np.argmax(probs, axis=1)
        base = probs[rows, targets]
        if options.method == "occlusion":
            maps = await loop.run_in_executor(self.workers, self._occlusion, loop, np.stack(images), targets, base)
        else:
            maps = await self.batcher.explain(options.method, images, targets.tolist())
        return list(await asyncio.gather(*(
            loop.run_in_executor(self.workers, self._record, name, data, record["predictions"], saliency,
                                 int(t), float(p), options)
            for (name, data), record, saliency, t, p in zip(files, predictions, maps, targets, base))))

    def _occlusion(self, loop: asyncio.AbstractEventLoop, images: np.ndarray, targets: np.ndarray,
                   base: np.ndarray) -> np.ndarray:
        """On a worker thread: occlusion maps whose occluded copies queue in the batcher like uploaded images."""

        def probabilities(copies: np.ndarray) -> np.ndarray:
            try:
                future = asyncio.run_coroutine_threadsafe(self.batcher.predict(list(copies), request=False), loop)
            except RuntimeError:  # the loop is closed: the service has stopped
                raise BatcherStopped("the service is shutting down") from None
            return np.stack(wait_on_loop(future, loop))

        return occlusion_maps(probabilities, images, targets, self.fill, base=base)

    def _record(self, name: str, data: bytes, predictions: list[dict[str, Any]], saliency: np.ndarray, target: int,
                probability: float, options: ExplainOptions) -> bytes:
        """On a worker thread: one image's answer, its map brought back onto the whole file as `alexnet explain`
        does (so its numbers are --json's), with the overlay PNG as a data URL."""
        try:
            picture = load_rgb(io.BytesIO(data))  # the file itself: its size, and the overlay's pixels
        except AlexnetError as e:
            raise image_refusal(name, e) from None
        width, height = picture.size
        heatmap = file_map(self.classifier.spec, saliency, width, height)
        cls = self.classifier.classes[target]
        record: dict[str, Any] = {"image": name, "predictions": predictions, "class": cls,
                                  "probability": probability, "method": options.method}
        if options.overlay:
            from ..saliency.overlay import overlay_png, overlay_title  # lazy: matplotlib, for the picture only

            with self._drawing:
                png = overlay_png(picture, heatmap, overlay_title(cls, probability, options.method))
            record["overlay"] = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        text = json.dumps(record, separators=(",", ":"), allow_nan=False)
        if options.heatmap:  # row by row, as --json writes it: never the whole map as Python floats at once
            text = text[:-1] + ',"heatmap":[' + ",".join(heatmap_rows(heatmap)) + "]}"
        return text.encode()
