"""The Python API: the same verbs as the CLI (train, evaluate, predict, explain, report, load_model)."""

from __future__ import annotations

import json
import os
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .classifier import Classifier
from .config import DataConfig, ModelConfig, RunConfig, TrainConfig, apply_overrides, preset_config
from .errors import AlexnetError
from .inference import LoadedModel, eval_data, load_model
from .inference import evaluate as evaluate_loaded
from .inference import predict as predict_loaded
from .metrics import classification_metrics
from .runtime import load_classifier

__all__ = ["train", "evaluate", "predict", "explain", "report", "load_model"]

# Short keyword names for the API: train(data="...", model="alexnet", epochs=3).
ALIASES = {"data": ("data", "source"), "model": ("model", "name")}


def options_to_overrides(options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
    owner = {f.name: s for s, cls in sections.items() for f in fields(cls)}
    out: dict[str, dict[str, Any]] = {s: {} for s in sections}
    for key, value in options.items():
        if key in ALIASES:
            section, name = ALIASES[key]
        elif key in owner:
            section, name = owner[key], key
        else:
            raise AlexnetError(f"unknown training option {key!r}")
        out[section][name] = value
    return out


def train(config: RunConfig | None = None, *, out: str | Path | None = None, preset: str | None = None,
          resume: str | Path | None = None, stop_after_epoch: int | None = None, progress: bool = True,
          started_at: float | None = None, callbacks: Sequence[Any] = (), **options: Any) -> Path:
    """Train and return the run folder, e.g. `train(data="cifar10", epochs=3, out="runs/demo")`.

    `options` are any DataConfig/ModelConfig/TrainConfig field (`data` and `model` name the source and network).
    With `resume=RUN` the run continues exactly: an option that leaves its results as they are (`save_every`,
    `save_every_steps`, `workers`, `report`, `tensorboard`, `early_stop`, `min_delta`, `epochs`, `device`;
    `time_limit=0` continues a time-limited run by steps) takes effect and is recorded in RUN/config.json; one
    that would change them raises AlexnetError before any work, unless it has the run's own value (None: not
    given). docs/training.md lists which is which, and why. `started_at`
    (time.time()) is when a `time_limit` starts counting: default now. `callbacks`: objects with the hooks of
    `alexnet.engine.callbacks.Callback`, called by the training loop. On SIGTERM/SIGINT training stops after the
    step in progress, saves its position and raises `alexnet.errors.TrainingStopped`: `resume=RUN` continues it.
    """
    # lazy: the trainer (and its distributed setup) only for train(); predicting never loads it
    from .engine.distributed import teardown
    from .engine.trainer import train as run_training

    try:
        if resume is not None:
            if config is not None:
                raise AlexnetError("resume=RUN continues a run with its own config; pass options (such as "
                                   "save_every_steps=100), not a config")
            run = run_training(None, out, resume=resume, options=options_to_overrides(options), preset=preset,
                               stop_after_epoch=stop_after_epoch, progress=progress, started_at=started_at,
                               callbacks=tuple(callbacks))
        else:
            cfg = absolute_source(apply_overrides(config or preset_config(preset), options_to_overrides(options)))
            run = run_training(cfg, out, stop_after_epoch=stop_after_epoch, progress=progress,
                               started_at=started_at, callbacks=tuple(callbacks))
    except BaseException:
        teardown(synchronize=False)  # a failed rank must not wait at a barrier its peers may never reach
        raise
    teardown()
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return run
    cfg = RunConfig.from_dict(load_config_dict(run))
    if cfg.train.report and (run / "best.pt").exists():
        report(run, split="val" if cfg.data.val_split > 0 else "train", quiet=not progress)
    return run


def overrides_to_options(overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The inverse of `options_to_overrides`: {"data": {"source": D}, ...} as train()'s keywords (data=D, ...)."""
    names = {v: k for k, v in ALIASES.items()}
    return {names.get((section, field), field): value
            for section, values in overrides.items() for field, value in values.items()}


def absolute_source(cfg: RunConfig) -> RunConfig:
    """A data path is saved absolute, so `evaluate`, `report` and `export --check` recognise the training data
    (and find it) from any working folder."""
    path = Path(cfg.data.source).expanduser()
    if cfg.data.source == "cifar10" or not path.exists():
        return cfg
    return replace(cfg, data=replace(cfg.data, source=str(path.resolve())))


def load_config_dict(run: Path) -> dict[str, Any]:
    return json.loads((Path(run) / "config.json").read_text())["config"]


def evaluate(checkpoint: str | os.PathLike[str], data: str | None = None, split: str = "test",
             device: str = "auto", batch_size: int = 256, ten_crop: bool = False, backend: str | None = None,
             precision: str = "fp32", views: str | int = "all") -> dict[str, Any]:
    """Accuracy, top-5, per-class scores and confusion matrix of a model on a split of `data` (default: the data
    it was trained on).

    By default the torch model in the run's own arithmetic and views. `backend="onnx"`, `precision="int8"` (which
    implies onnx) or `views=1|2` evaluate what `predict` and `serve` would run with those choices instead (an exported folder's
    graph, the same uint8 pixels in), through `alexnet.runtime.load_classifier`; the metrics then say which.
    """
    backend = backend or ("onnx" if precision == "int8" else "torch")
    if backend == "torch" and precision == "fp32" and str(views) == "all":
        return evaluate_loaded(checkpoint, data, split, device, batch_size, ten_crop)
    if ten_crop:
        raise AlexnetError("--ten-crop evaluates the torch model with its own views; drop --backend onnx, "
                           "--precision int8 and --views")
    classifier = load_classifier(checkpoint, backend, device, precision=precision, views=views)
    loaded = load_model(checkpoint, "cpu")  # the split and the classes, from the run's own config
    ev = eval_data(loaded, data, split, batch_size)
    n = len(ev.labels)
    probs = [classifier.probabilities(ev.fetch_images(np.arange(i, min(n, i + batch_size))))
             for i in range(0, n, batch_size)]
    metrics = classification_metrics(np.concatenate(probs) if probs else np.zeros((0, len(loaded.classes))),
                                     ev.labels, loaded.classes)
    return {**metrics, "backend": classifier.backend, "precision": classifier.precision,
            "views": dict(classifier.views)}


def predict(model: Any, images: Sequence[str | os.PathLike[str]], top_k: int = 5, device: str = "auto",
            backend: str = "auto", precision: str = "auto", views: str | int = "all") -> list[dict[str, Any]]:
    """Top-k classes with probabilities for each image file (any size or mode), as `alexnet predict` gives them.

    `model`: a run folder, RUN/best.pt, an exported model folder, a classifier from
    `alexnet.runtime.load_classifier`, or a model from `alexnet.load_model`. `backend`, `precision` and `views`
    as for `load_classifier` (an exported folder runs in onnxruntime when it is installed; int8 where its
    export recommends it for this CPU)."""
    if isinstance(model, LoadedModel):
        return predict_loaded(model, list(images), top_k)
    classifier = model if isinstance(model, Classifier) else load_classifier(model, backend, device,
                                                                             precision=precision, views=views)
    return classifier.predict_files(list(images), top_k)


def report(run: str | Path, data: str | None = None, split: str = "val", out: str | Path | None = None,
           device: str = "auto", quiet: bool = True, explain: bool = True) -> Path:
    """Write the self-contained HTML report (and its PNGs, metrics.json, report.md) of a run. `explain=False`
    leaves out the Grad-CAM maps (the examples' map panels and the most confused pair's section)."""
    from .reports.build import build_report  # lazy: matplotlib, only for reports

    return build_report(Path(run), data=data, split=split, out=Path(out) if out else None, device=device,
                        explain=explain)


def explain(model: Any, images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], method: str = "gradcam",
            target: str | None = None, top_k: int = 5, layer: str | None = None, patch: int | None = None,
            stride: int | None = None, backend: str = "auto", device: str = "auto",
            batch_size: int = 16) -> list[dict[str, Any]]:
    """What each prediction rests on: for every image (files, folders, globs), predict's top-k and a heatmap of
    the top class (or `target`) over the image file, e.g. `explain("runs/demo", "cat.jpg")[0]["heatmap"]`.

    `method`: "gradcam" | "gradcam++" (on `layer`, a module name; default the ReLU after the last convolution) | "occlusion"
    (a grey `patch` moved by `stride`, in input pixels; default a quarter and an eighth of the input side; it
    also runs on an exported folder through onnxruntime). `model`: a run folder, RUN/best.pt, an exported model
    folder, or a classifier from `alexnet.runtime.load_classifier`. Each record: "image", "predictions",
    "class", "probability", "method", "layer", "heatmap" (float32 (H, W) in [0, 1], the file's own size) and
    "peak" ({"x", "y"} of its maximum; None for an all-zero map).
    """
    from .explanations import explain_stream, load_explainer  # lazy: the saliency code, only for explain()

    classifier = model if isinstance(model, Classifier) else load_explainer(model, method, backend, device)
    items = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    return list(explain_stream(classifier, [str(i) for i in items], method, target, top_k, layer, patch, stride,
                               batch_size))
