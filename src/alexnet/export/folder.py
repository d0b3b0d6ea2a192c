"""The exported model folder: its layout, reading it back, and writing it so that it appears whole or not at all.

    DIR/config.json        what the model is and how to feed it ("format": "alexnet-model")
    DIR/model.safetensors  the weights (no pickle)
    DIR/model.onnx         one graph: uint8 images (N, S, S, 3) in, class probabilities (N, C) out
    DIR/model.int8.onnx    the same graph in 8-bit arithmetic (`--quantize int8`)
    DIR/model[.int8].views-K.onnx   the same with K test-time views (1 or 2) when the run used more
    DIR/README.md          the model card

Reading the config needs no torch (an onnxruntime service uses it); reading the weights imports torch lazily.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ..errors import AlexnetError

FORMAT = "alexnet-model"
VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
GRAPH = "model.onnx"
INT8_GRAPH = "model.int8.onnx"
CARD = "README.md"
FORMATS = ("onnx", "safetensors")  # what `--format` may name; config.json and the card are always written


def graph_file(precision: str, passes: int, all_passes: int) -> str:
    """The file of the graph in `precision` ("fp32" or "int8") with `passes` test-time views, the run's own
    being `all_passes`: model.onnx, model.int8.onnx, model.views-1.onnx, model.int8.views-2.onnx, ..."""
    stem = "model.int8" if precision == "int8" else "model"
    return f"{stem}.onnx" if passes == all_passes else f"{stem}.views-{passes}.onnx"


def read_json_dict(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_model_folder(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a folder an export wrote (its config.json says "format": "alexnet-model")."""
    path = Path(path)
    config = read_json_dict(path / CONFIG) if path.is_dir() else None
    return config is not None and config.get("format") == FORMAT


def model_folder(path: str | os.PathLike[str]) -> Path | None:
    """The exported model folder `path` names (the folder itself or a file in it), or None if it is not one."""
    path = Path(path)
    for candidate in (path, path.parent) if path.is_file() else (path,):
        if is_model_folder(candidate):
            return candidate
    return None


def read_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """config.json of an exported model folder, checked for its format and version."""
    folder = Path(folder)
    config = read_json_dict(folder / CONFIG)
    if config is None or config.get("format") != FORMAT:
        raise AlexnetError(f"{folder} is not an exported model folder (no {CONFIG} with \"format\": \"{FORMAT}\"); "
                           "`alexnet export RUN --out DIR` writes one")
    if not isinstance(config.get("version"), int) or config["version"] > VERSION:
        raise AlexnetError(f"{folder / CONFIG} is format version {config.get('version')!r}, newer than this alexnet "
                           f"reads ({VERSION}); upgrade alexnet")
    return config


def read_model_folder(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """An exported folder as the checkpoint-like dict `inference.load_model` builds a model from."""
    # lazy: safetensors.torch imports torch; reading config.json must not
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    config = read_config(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise AlexnetError(f"{folder} has no {WEIGHTS} (exported with --format onnx only); torch needs the weights: "
                           "export again with --format onnx,safetensors, or serve model.onnx with onnxruntime")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as e:
        raise AlexnetError(f"{weights} is not a readable safetensors file ({str(e).splitlines()[0][:120]})") from None
    training = config.get("training") or {}
    try:
        return {"format": FORMAT, "config": config["run"], "classes": list(config["classes"]),
                "image_size": int(config["input"]["image_size"]), "input": config["input"], "model": state,
                "model_name": config["model"]["name"], "epoch": training.get("epochs_trained"),
                "train_seconds": training.get("train_seconds"), "metrics": config.get("metrics"),
                "training": training}
    except (KeyError, TypeError, ValueError) as e:
        raise AlexnetError(f"{folder / CONFIG} is incomplete ({type(e).__name__}: {e}); export the model "
                           "again") from None


def file_digest(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of a file, so a copy of the folder can be checked."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return {"bytes": path.stat().st_size, "sha256": sha.hexdigest()}


def write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def check_target(out: Path) -> bool:
    """Whether `out` holds a previous export (to be replaced); refuse anything else that is not empty."""
    if out.is_file() or (out.exists() and not out.is_dir()):
        raise AlexnetError(f"--out {out} is a file; name a folder to write the model into")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    if is_model_folder(out):
        return True
    raise AlexnetError(f"--out {out} is a folder that holds other files (not a previous export); choose a new "
                       "folder or empty it (a previous export there is replaced)")


def _seal(folder: Path) -> None:
    """On disk before the rename, and readable by others (writers such as safetensors make private files)."""
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(path, 0o644)
    os.chmod(folder, 0o755)


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike[str]) -> Iterator[Path]:
    """A temp folder beside `out` to write into; when the block ends without error it takes `out`'s place.

    `out` is then either what it was before (any error, a failed check, a crash) or the complete new export,
    never a half-written folder: the files are written under a hidden temp name and renamed at the end. A
    previous export in `out` is moved aside first and deleted once the new one is in place.
    """
    out = Path(out)
    check_target(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    except OSError as e:
        reason = ("a part of that path is a file" if isinstance(e, (FileExistsError, NotADirectoryError))
                  else e.strerror or str(e))
        raise AlexnetError(f"--out {out}: cannot write there ({reason}); choose a writable folder") from None
    try:
        yield tmp
        _seal(tmp)
        previous = check_target(out)  # again: something may have appeared there while the model was written
        if not previous:
            if out.is_dir():
                out.rmdir()
            os.replace(tmp, out)
            return
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old)  # renaming a folder onto an empty one replaces it
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old, out)  # put the previous export back
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
