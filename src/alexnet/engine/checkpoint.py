"""Atomic, verifiable checkpoints that load without ever executing code (weights_only)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import AlexnetError
from ..jsonio import json_text

FORMAT = "alexnet-checkpoint"
VERSION = 1


def atomic_write(path: Path, write: Any) -> None:
    """Call write(tmp_path) on a temp file beside `path`, fsync it, then rename it over `path`.

    A crash at any point leaves either the old file or the new one, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj: Any) -> None:
    text = json_text(obj) + "\n"

    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    atomic_write(path, write)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write the full training state (model, optimiser, schedule, RNG, config, classes)."""
    atomic_write(path, lambda tmp: torch.save({"format": FORMAT, "version": VERSION, **state}, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint safely; anything that is not ours gives a one-line AlexnetError."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).exists():
                path = path / name
                break
    if not path.is_file():
        raise AlexnetError(f"checkpoint {path} does not exist; pass RUN/best.pt or a run folder")
    try:
        # weights_only: tensors and plain containers only, so a pickle payload can never run.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise AlexnetError(f"{path} holds objects that are not plain tensors (a pickle payload?); "
                               "refusing to load it") from None
        raise AlexnetError(f"{path} is not a readable checkpoint ({first[:120]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise AlexnetError(f"{path} is not an alexnet checkpoint (no '{FORMAT}' marker)")
    if state.get("version", 0) > VERSION:
        raise AlexnetError(f"{path} was written by a newer alexnet (format {state['version']}); upgrade")
    return state


def rng_state() -> dict[str, Any]:
    """Every RNG the training loop touches: torch CPU and CUDA (dropout, init)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
