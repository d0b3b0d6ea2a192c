"""Atomic, verifiable checkpoints that load without ever executing code (weights_only)."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import AlexnetError, CheckpointWriteError
from ..atomic import atomic_write, fsync_dir, write_json  # noqa: F401 (re-exported: the engine's writers)

FORMAT = "alexnet-checkpoint"
VERSION = 1

# The files a run folder holds that are written through `atomic_write`: a process killed while writing one
# leaves its temp file (".last.pt.k3j2x9.tmp"), removed at the next start.
RUN_FILES = ("last.pt", "best.pt", "history.csv", "history.json", "config.json", "distributed.json")


def remove_stale_temp_files(folder: Path, names: tuple[str, ...] = RUN_FILES) -> list[Path]:
    """Delete the temp files a killed process left beside the files in `names`; returns what was removed."""
    removed = []
    for name in names:
        for tmp in Path(folder).glob(f".{name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def describe_os_error(e: OSError) -> str:
    """'No space left on device (ENOSPC)': the reason and its name, for one line."""
    name = errno.errorcode.get(e.errno or 0)
    return f"{e.strerror or e}{f' ({name})' if name else ''}"


def what_to_do(e: OSError) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some disk space"
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "make the folder writable (or copy the run to a writable one)"
    if e.errno in (errno.ENOTDIR, errno.EEXIST, errno.ENAMETOOLONG):
        return "choose another --out"
    return "check the disk"


@contextlib.contextmanager
def reported_write(path: Path, intact: str, resume: Path | None) -> Iterator[None]:
    """Turn an OSError while writing `path` into one line: the file, the error, what is intact, what to do."""
    try:
        yield
    except OSError as e:
        then = (f", then continue with `alexnet train --resume {resume}`" if resume is not None
                else ", then run the command again")
        raise CheckpointWriteError(f"could not write {path}: {describe_os_error(e)}; {intact}; "
                                   f"{what_to_do(e)}{then}") from None


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


def load_weights(module: nn.Module, weights: Any, source: str) -> None:
    """Load a state dict into `module`, or say in one line which tensor does not fit (name, shapes)."""
    if not isinstance(weights, dict):
        raise AlexnetError(f"{source} holds no weights (a name -> tensor mapping)")
    expected = module.state_dict()
    missing = [k for k in expected if k not in weights]
    extra = [k for k in weights if k not in expected]
    if missing or extra:
        raise AlexnetError(f"{source} does not fit the model: "
                           + (f"{missing[0]} is missing" if missing else f"{extra[0]} is not one of its tensors")
                           + f" ({len(missing)} missing, {len(extra)} unknown)")
    for name, value in weights.items():
        want = tuple(expected[name].shape)
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != want:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise AlexnetError(f"{source} does not fit the model: {name} has shape {got}, the model's is {want}")
    module.load_state_dict(weights)


def check_optimizer_state(optimizer: torch.optim.Optimizer, source: str) -> None:
    """Every per-parameter buffer (momentum) must have its parameter's shape, or the first step would fail."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.ndim and value.shape != p.shape:
                    raise AlexnetError(f"{source} does not fit the model: an optimiser {key} has shape "
                                       f"{tuple(value.shape)} for a parameter of shape {tuple(p.shape)}")


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
