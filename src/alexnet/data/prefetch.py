"""Build an image archive's decoded cache in a child process while the parent imports torch.

A cold `alexnet train` on a .tar.gz of images spends ~3 s reading and decoding it, and ~2.7 s importing
torch and the compiler hooks torch.optim loads with its first optimizer: on a 2-core box each of those
keeps one core busy while the other waits. Forked before torch is imported (numpy and PIL only), a child
writes the cache the parent then reads as on a warm start (0.1 s from the page cache). The child never
reports anything: a damaged archive, a full disk or Ctrl-C just end it, and the parent's own read of the
data, which follows, raises the one-line error or decodes again.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from ..config import DataConfig


def _needs_warming(cfg: DataConfig) -> Path | None:
    """The archive whose cache a child should build: an image archive read into memory, not cached yet,
    in a single-process run on a system with fork."""
    if not sys.platform.startswith("linux") or os.environ.get("WORLD_SIZE", "1") != "1" or cfg.loader == "stream":
        return None
    if not cfg.source.endswith((".tar.gz", ".tgz")) or not Path(cfg.source).is_file():
        return None
    # lazy: this module is imported by every `alexnet train`; the archive reader (numpy, PIL, process pools)
    # only when an archive is to be warmed
    from .archive import _cache_path, is_cifar_archive
    from .sources import cache_root

    path = Path(cfg.source)
    try:
        if is_cifar_archive(path) or _cache_path(path, cache_root(cfg.cache_dir), cfg.store_size).exists():
            return None
    except Exception:  # noqa: BLE001 - unreadable: the parent's own read reports it
        return None
    return path


def _warm(path: Path, root: Path, workers: int, size: int | None) -> None:
    from .archive import load_image_archive  # lazy: see _needs_warming

    warnings.simplefilter("ignore")  # e.g. "could not cache": the parent, failing the same way, says it once
    # Terminated by the parent: unwind, so the decoding pool is shut down rather than left waiting.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        load_image_archive(path, root, size, workers=workers)
    except BaseException:  # noqa: BLE001 - see the module docstring: the parent reports, the child is silent
        os._exit(1)


@contextlib.contextmanager
def cache_warming(cfg: DataConfig) -> Iterator[bool]:
    """Within the block, a child builds `cfg`'s archive cache when there is none (yields whether it runs);
    leaving the block waits for it. Put the imports the run needs inside the block."""
    path = _needs_warming(cfg)
    child = None
    if path is not None:
        from .sources import cache_root  # lazy: see _needs_warming

        child = multiprocessing.get_context("fork").Process(
            target=_warm, args=(path, cache_root(cfg.cache_dir), cfg.workers, cfg.store_size), name="alexnet-cache", daemon=False)
        child.start()
    try:
        yield child is not None
    except BaseException:
        if child is not None:
            child.terminate()  # the cache is written to a temporary file and renamed: nothing half-written stays
        raise
    finally:
        if child is not None:
            child.join()
