"""Write a trained model as an exported folder: weights, ONNX graph, config.json, model card, parity check."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from safetensors.torch import save_file

from ..classifier import view_passes, views_setting
from ..cpuinfo import cpu_model, int8_class, int8_description
from ..engine.device import versions
from ..errors import AlexnetError
from ..inference import LoadedModel, eval_data, load_model, run_folder_config, run_metrics
from ..jsonio import json_text
from .card import model_card
from .folder import (CARD, CONFIG, FORMAT, FORMATS, GRAPH, INT8_GRAPH, VERSION, WEIGHTS, check_target, file_digest,
                     graph_file, is_model_folder, staged_folder, write_text)
from .graph import INPUT, OPSET, OUTPUT, InferenceGraph, require, write_onnx
from .parity import Int8Check, Parity, check_images, check_int8, check_parity, graph_speed
from .quantize import METHODS, quantize_graph

__all__ = ["ExportResult", "export_model", "parse_formats"]


@dataclass
class ExportResult:
    out: Path
    files: dict[str, int]  # file name -> bytes
    replaced: bool  # a previous export in `out` was replaced
    parity: Parity | None
    config: dict[str, Any]
    int8: Int8Check | None = None


def parse_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    """"onnx,safetensors" (or a list) -> the formats to write, checked."""
    names = [f.strip().lower() for f in (formats.split(",") if isinstance(formats, str) else formats)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise AlexnetError(f"unknown --format {','.join(unknown) or repr(formats)}; choose from {', '.join(FORMATS)} "
                           "(comma-separated, e.g. --format onnx,safetensors)")
    return tuple(f for f in FORMATS if f in names)


def training_info(loaded: LoadedModel, run_info: dict[str, Any]) -> dict[str, Any]:
    state = loaded.checkpoint
    if state.get("format") == FORMAT:
        return state.get("training") or {}
    return {"epochs_trained": state.get("epoch"), "train_seconds": state.get("train_seconds"),
            "dataset": run_info.get("dataset"), "num_train": run_info.get("num_train"),
            "num_val": run_info.get("num_val"), "precision": run_info.get("precision"),
            "hardware": run_info.get("hardware")}


def export_versions() -> dict[str, Any]:
    out: dict[str, Any] = dict(versions())
    for name in ("onnx", "onnxscript", "onnxruntime", "safetensors"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    out["onnx_opset"] = OPSET
    return out


def describe(loaded: LoadedModel, source: str | Path, formats: tuple[str, ...]) -> dict[str, Any]:
    """config.json of the export (without the file digests and the check, added once they exist)."""
    cfg, spec, classes = loaded.config, loaded.spec, loaded.classes
    run_info = run_folder_config(source)
    side = spec.input_side
    path = Path(source).resolve()
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": {"name": cfg.model.name, "options": cfg.model.options(), "num_classes": len(classes),
                  "image_size": spec.image_size, "parameters": sum(p.numel() for p in loaded.model.parameters())},
        "classes": list(classes),
        "input": spec.to_dict(),
        "input_side": side,
        "views": {"tta": cfg.train.tta, "tta_shift": cfg.train.tta_shift,
                  "passes": view_passes(cfg.train.tta, cfg.train.tta_shift)},
        "onnx": ({"file": GRAPH, "opset": OPSET,
                  "input": {"name": INPUT, "dtype": "uint8", "shape": ["batch", side, side, 3], "layout": "NHWC, RGB"},
                  "output": {"name": OUTPUT, "dtype": "float32", "shape": ["batch", len(classes)]}}
                 if "onnx" in formats else None),
        "metrics": run_metrics(loaded, run_info),
        "training": training_info(loaded, run_info),
        "run": cfg.to_dict(),
        "source": {"path": str(path), "name": (path if path.is_dir() else path.parent).name,
                   "epoch": loaded.checkpoint.get("epoch")},
        "versions": export_versions(),
    }


def write_weights(loaded: LoadedModel, path: Path) -> None:
    # The loaded model's own tensors: the EMA weights when the run kept them, as `load_model` chose.
    weights = {k: v.detach().cpu().contiguous() for k, v in loaded.model.state_dict().items()}
    save_file(weights, str(path), metadata={"format": FORMAT})


def export_model(source: str | Path, out: str | Path, formats: str | Iterable[str] = FORMATS,
                 check: str | Path | None = None, check_limit: int = 1000, quantize: str | None = None,
                 calibrate: str | Path | None = None, calibration_images: int = 512,
                 calibration_method: str = "minmax", max_accuracy_drop: float = 1.0) -> ExportResult:
    """Export the model of a run folder, checkpoint or exported folder into the folder `out`.

    With `check` (data), torch and onnxruntime classify up to `check_limit` of its evaluation images side by
    side; a difference beyond 1e-4 or on any top-1 raises AlexnetError and leaves `out` as it was.

    `quantize="int8"` also writes model.int8.onnx (and its fewer-view variants): the same graph with 8-bit
    convolutions and linear layers, calibrated on `calibration_images` images of the training split of
    `calibrate` (default: the run's own training data; never the split the check reports on). With `check`,
    int8 and fp32 are compared on the check's images and the export fails if int8 loses more than
    `max_accuracy_drop` points; images/s of both are measured side by side, and config.json records which
    precision to use on this kind of CPU.
    """
    chosen = parse_formats(formats)
    out = Path(out)
    if check is not None and "onnx" not in chosen:
        raise AlexnetError("--check compares the ONNX graph with torch; add onnx to --format")
    if isinstance(check_limit, bool) or not isinstance(check_limit, int) or check_limit < 1:
        raise AlexnetError(f"--check-limit must be a positive number of images, got {check_limit!r}")
    if quantize not in (None, "int8"):
        raise AlexnetError(f"--quantize must be int8, got {quantize!r}")
    if quantize and "onnx" not in chosen:
        raise AlexnetError("--quantize int8 quantizes the ONNX graph; add onnx to --format")
    if quantize is None and (calibrate is not None or calibration_method != "minmax"):
        raise AlexnetError("--calibrate and --calibration-method are for --quantize int8; add --quantize int8")
    if isinstance(calibration_images, bool) or not isinstance(calibration_images, int) or calibration_images < 1:
        raise AlexnetError(f"--calibration-images must be a positive number of images, got {calibration_images!r}")
    if calibration_method not in METHODS:
        raise AlexnetError(f"--calibration-method must be one of {', '.join(METHODS)}, got {calibration_method!r}")
    if not (isinstance(max_accuracy_drop, (int, float)) and 0 <= max_accuracy_drop <= 100):
        raise AlexnetError(f"--max-accuracy-drop must be between 0 and 100 points, got {max_accuracy_drop!r}")
    if "onnx" in chosen:
        require("onnx", "onnxscript")
    if check is not None or quantize:
        require("onnxruntime")
    replaced = check_target(out)  # before the minutes of work: a refused --out is said at once
    if Path(source).resolve() == out.resolve() and is_model_folder(out):
        raise AlexnetError(f"--out {out} is the folder being exported; choose another --out")
    loaded = load_model(source, device="cpu")  # the graph is traced on the CPU, fp32
    config = describe(loaded, source, chosen)
    parity = int8_check = None
    with staged_folder(out) as tmp:
        if "safetensors" in chosen:
            write_weights(loaded, tmp / WEIGHTS)
        graphs = write_graphs(loaded, config, tmp) if "onnx" in chosen else []
        if check is not None:
            parity = check_parity(loaded, tmp / GRAPH, str(check), check_limit)
            if not parity.passed:
                raise AlexnetError(f"ONNX check failed, nothing written to {out}: {parity.summary()}")
        if quantize:
            config["int8"], int8_check = write_int8(loaded, tmp, graphs, calibrate, calibration_images,
                                                    calibration_method, check, check_limit, max_accuracy_drop)
            if int8_check is not None and not int8_check.passed:
                raise AlexnetError(f"int8 check failed, nothing written to {out}: int8 accuracy "
                                   f"{int8_check.accuracy_int8 * 100:.2f}% against fp32 "
                                   f"{int8_check.accuracy_fp32 * 100:.2f}% on {int8_check.images:,} images, "
                                   f"{int8_check.drop_points:.2f} points lost, over --max-accuracy-drop "
                                   f"{max_accuracy_drop:g}; try --calibration-method entropy or percentile, more "
                                   "--calibration-images, or serve fp32")
        config["graphs"] = graphs
        names = [g["file"] for g in graphs] + [WEIGHTS]
        config["files"] = {name: file_digest(tmp / name) for name in names if (tmp / name).exists()}
        config["parity"] = parity.to_dict() if parity else None
        write_text(tmp / CONFIG, json_text(config) + "\n")
        write_text(tmp / CARD, model_card(config))
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    return ExportResult(out, files, replaced, parity, config, int8_check)


def write_graphs(loaded: LoadedModel, config: dict[str, Any], folder: Path) -> list[dict[str, Any]]:
    """model.onnx with the run's test-time views, and model.views-K.onnx for each smaller K of 1 and 2 (what
    `--views K` runs): [{"file", "precision", "views"}]."""
    train = loaded.config.train
    all_passes = view_passes(train.tta, train.tta_shift)
    graphs = []
    for passes in sorted({all_passes, *(k for k in (1, 2) if k < all_passes)}, reverse=True):
        tta, shift = views_setting("all" if passes == all_passes else passes, train.tta, train.tta_shift)
        name = graph_file("fp32", passes, all_passes)
        graph = InferenceGraph(loaded.model, loaded.spec, tta, shift)
        write_onnx(graph, config["input_side"], folder / name,
                   {"format": FORMAT, "classes": json_text(loaded.classes)}, model_card_title(config))
        del graph
        graphs.append({"file": name, "precision": "fp32", "views": passes})
    return graphs


def calibration_set(loaded: LoadedModel, data: str | Path | None, count: int) -> tuple[np.ndarray, dict[str, Any]]:
    """`count` images of the training split of `data` (default: the run's own training data), spread evenly
    over it: never the validation or test split that a check reports on."""
    ev = eval_data(loaded, None if data is None else str(data), "train")
    if len(ev.labels) == 0:
        raise AlexnetError(f"--calibrate {data or loaded.config.data.source}: its training split has no images")
    idx = np.unique(np.linspace(0, len(ev.labels) - 1, min(count, len(ev.labels))).round().astype(np.int64))
    source = str(data) if data is not None else loaded.config.data.source
    return (np.ascontiguousarray(ev.fetch_images(idx)),
            {"data": source, "split": "train", "images": int(len(idx)), "of": int(len(ev.labels)),
             "selection": "evenly spaced over the split"})


def write_int8(loaded: LoadedModel, folder: Path, graphs: list[dict[str, Any]], calibrate: str | Path | None,
               count: int, method: str, check: str | Path | None, check_limit: int, max_drop: float
               ) -> tuple[dict[str, Any], Int8Check | None]:
    """The int8 graphs beside the fp32 ones, the check of model.int8.onnx, and what config.json records."""
    images, calibration = calibration_set(loaded, calibrate, count)
    cls = int8_class()
    reduce_range = cls not in ("vnni", "amx")  # 16-bit sums of 8-bit products saturate without VNNI
    done: dict[str, Any] = {}
    for g in list(graphs):
        name = g["file"].replace("model.", "model.int8.", 1)
        done = quantize_graph(folder / g["file"], folder / name, images, method, reduce_range)
        graphs.append({"file": name, "precision": "int8", "views": g["views"]})
    result: dict[str, Any] = {"file": INT8_GRAPH, **done, "calibration": calibration,
                              "cpu": {"int8_class": cls, "description": int8_description(cls),
                                      "processor": cpu_model()}}
    checked = None
    if check is not None:
        check_imgs, labels, split = check_images(loaded, str(check), check_limit)
        checked = check_int8(folder / GRAPH, folder / INT8_GRAPH, check_imgs, labels, str(check), split, max_drop)
        result["check"] = checked.to_dict()
        result["speed"] = checked.speed
    else:
        result["check"] = None
        # Shorter: without a check the figures only inform (fp32 stays the recommendation).
        speed = graph_speed({"fp32": folder / GRAPH, "int8": folder / INT8_GRAPH}, images, repeats=3, seconds=0.2)
        speed["ratio"] = speed["int8_images_s"] / speed["fp32_images_s"]
        result["speed"] = speed
    result["recommendation"] = recommend(cls, result["speed"], checked)
    return result, checked


def recommend(cls: str, speed: dict[str, Any], checked: Int8Check | None) -> dict[str, Any]:
    """Which precision `--precision auto` picks on a CPU of class `cls`: int8 only when checked for accuracy
    and measured at least 10% faster here; fp32 when in doubt."""
    ratio = speed["ratio"]
    if checked is None:
        why = "int8 accuracy not measured (export with --check DATA to measure it)"
        return {"precision": "fp32", "int8_class": cls, "why": why}
    if ratio < 1.1:
        return {"precision": "fp32", "int8_class": cls,
                "why": f"int8 ran at {ratio:.2f}x fp32's images/s on this CPU ({int8_description(cls)}): not worth it"}
    return {"precision": "int8", "int8_class": cls,
            "why": f"int8 measured {ratio:.2f}x fp32's images/s on a CPU with {int8_description(cls)}, "
                   f"{checked.drop_points:.2f} points of accuracy lost on {checked.images:,} held-out images"}


def model_card_title(config: dict[str, Any]) -> str:
    return (f"{config['model']['name']} classifier for {len(config['classes'])} classes, exported by alexnet "
            f"{config['versions'].get('alexnet')}: input {INPUT!r} uint8 (N, {config['input_side']}, "
            f"{config['input_side']}, 3) RGB; output {OUTPUT!r} float32 (N, {len(config['classes'])}); class names "
            "in the metadata property 'classes' and in config.json")

