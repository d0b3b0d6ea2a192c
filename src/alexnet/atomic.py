"""Files that appear complete or not at all: write a temp file beside the target, fsync it, rename it over the
target, fsync the folder. No torch here, so the torch-free verbs (predict on onnxruntime, runs) use it too."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .jsonio import json_text


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to the disk; a no-op where the filesystem cannot."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """Call write(tmp_path) on a temp file beside `path`, fsync it, rename it over `path`, fsync the folder.

    A crash at any point leaves either the old file or the new one, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; the result gets the usual mode
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)  # without it, a power cut can forget the rename and bring the old file back


def write_json(path: Path, obj: Any) -> None:
    text = json_text(obj) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
