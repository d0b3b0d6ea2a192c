"""Write a trained model as an exported folder: weights, ONNX graph, config.json, model card, parity check."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch.nn.functional as F

from ..engine.device import versions
from ..engine.evaluation import softmax_numpy, tta_views
from ..errors import AlexnetError
from ..inference import LoadedModel, load_model
from ..jsonio import json_text
from ..metrics import classification_metrics
from .card import model_card
from .folder import (CARD, CONFIG, FORMAT, FORMATS, GRAPH, VERSION, WEIGHTS, check_target, file_digest,
                     is_model_folder, read_json_dict, staged_folder, write_text)
from .graph import INPUT, OPSET, OUTPUT, InferenceGraph, require, write_onnx
from .parity import Parity, check_parity

__all__ = ["ExportResult", "export_model", "parse_formats"]


@dataclass
class ExportResult:
    out: Path
    files: dict[str, int]  # file name -> bytes
    replaced: bool  # a previous export in `out` was replaced
    parity: Parity | None
    config: dict[str, Any]


def parse_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    """"onnx,safetensors" (or a list) -> the formats to write, checked."""
    names = [f.strip().lower() for f in (formats.split(",") if isinstance(formats, str) else formats)]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise AlexnetError(f"unknown --format {','.join(unknown) or repr(formats)}; choose from {', '.join(FORMATS)} "
                           "(comma-separated, e.g. --format onnx,safetensors)")
    return tuple(f for f in FORMATS if f in names)


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
                  "passes": tta_views(cfg.train.tta, cfg.train.tta_shift)},
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
    from safetensors.torch import save_file

    # The loaded model's own tensors: the EMA weights when the run kept them, as `load_model` chose.
    weights = {k: v.detach().cpu().contiguous() for k, v in loaded.model.state_dict().items()}
    save_file(weights, str(path), metadata={"format": FORMAT})


def export_model(source: str | Path, out: str | Path, formats: str | Iterable[str] = FORMATS,
                 check: str | Path | None = None, check_limit: int = 1000) -> ExportResult:
    """Export the model of a run folder, checkpoint or exported folder into the folder `out`.

    With `check` (data), torch and onnxruntime classify up to `check_limit` of its evaluation images side by
    side; a difference beyond 1e-4 or on any top-1 raises AlexnetError and leaves `out` as it was.
    """
    chosen = parse_formats(formats)
    out = Path(out)
    if check is not None and "onnx" not in chosen:
        raise AlexnetError("--check compares the ONNX graph with torch; add onnx to --format")
    if isinstance(check_limit, bool) or not isinstance(check_limit, int) or check_limit < 1:
        raise AlexnetError(f"--check-limit must be a positive number of images, got {check_limit!r}")
    if "onnx" in chosen:
        require("onnx", "onnxscript")
    if check is not None:
        require("onnxruntime")
    replaced = check_target(out)  # before the minutes of work: a refused --out is said at once
    if Path(source).resolve() == out.resolve() and is_model_folder(out):
        raise AlexnetError(f"--out {out} is the folder being exported; choose another --out")
    loaded = load_model(source, device="cpu")  # the graph is traced on the CPU, fp32
    config = describe(loaded, source, chosen)
    parity = None
    with staged_folder(out) as tmp:
        if "safetensors" in chosen:
            write_weights(loaded, tmp / WEIGHTS)
        if "onnx" in chosen:
            graph = InferenceGraph(loaded.model, loaded.spec, loaded.config.train.tta, loaded.config.train.tta_shift)
            write_onnx(graph, config["input_side"], tmp / GRAPH,
                       {"format": FORMAT, "classes": json_text(loaded.classes)}, model_card_title(config))
            del graph
        if check is not None:
            parity = check_parity(loaded, tmp / GRAPH, str(check), check_limit)
            if not parity.passed:
                raise AlexnetError(f"ONNX check failed, nothing written to {out}: {parity.summary()}")
        config["files"] = {name: file_digest(tmp / name) for name in (GRAPH, WEIGHTS) if (tmp / name).exists()}
        config["parity"] = parity.to_dict() if parity else None
        write_text(tmp / CONFIG, json_text(config) + "\n")
        write_text(tmp / CARD, model_card(config))
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir())}
    return ExportResult(out, files, replaced, parity, config)


def model_card_title(config: dict[str, Any]) -> str:
    return (f"{config['model']['name']} classifier for {len(config['classes'])} classes, exported by alexnet "
            f"{config['versions'].get('alexnet')}: input {INPUT!r} uint8 (N, {config['input_side']}, "
            f"{config['input_side']}, 3) RGB; output {OUTPUT!r} float32 (N, {len(config['classes'])}); class names "
            "in the metadata property 'classes' and in config.json")

