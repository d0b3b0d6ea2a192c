"""ImageNet-style class folders: find the images, decode them in parallel, cache the result.

Two layouts are understood::

    A)  ROOT/<class>/*.jpg                      -> split "train"
    B)  ROOT/train/<class>/*.jpg                -> splits "train", and "val" / "test"
        ROOT/val/<class>/*.jpg   (optional)        where those folders exist
        ROOT/test/<class>/*.jpg  (optional)

Classes are sorted by folder name, so label ``i`` is the ``i``-th name in
sorted order (for CIFAR-10 class folders this is the official label order).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import mmap
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import PIL

from alexnet.data.images import UnreadableImageError, decode_square, fit_square, load_rgb, read_image_file
from alexnet.errors import AlexnetError

__all__ = ["IMAGE_EXTENSIONS", "FolderScan", "scan_folder", "decode_images", "load_folder"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
"""File name suffixes treated as images (compared case-insensitively)."""

_SPLITS = ("train", "val", "test")
# Junk folders that archive tools leave behind; never classes.
_IGNORED_NAMES = frozenset({"__MACOSX"})
# Bump when the cache layout or the decoding changes, so old caches stop matching.
_CACHE_FORMAT = 1
# Below this many images a process pool costs more than it saves.
_MIN_PARALLEL = 512
# Largest chunk of decoded pixels one worker sends back at a time.
_MAX_CHUNK_BYTES = 32 * 1024 * 1024
_MAX_CHUNK_IMAGES = 4096
_STALE_TMP_SECONDS = 24 * 3600


@dataclass
class FolderScan:
    """What :func:`scan_folder` found: class names and, per split, files and labels."""

    classes: list[str]
    splits: dict[str, tuple[list[Path], list[int]]]
    root: Path = field(default_factory=Path)


def _visible(name: str) -> bool:
    return not name.startswith(".") and name not in _IGNORED_NAMES


def _subfolders(folder: Path) -> list[str]:
    """Visible subfolder names of ``folder``, sorted by name."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if _visible(e.name) and e.is_dir())


def _image_files(folder: Path) -> list[Path]:
    """Visible image files under ``folder`` (recursively), sorted by relative path."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if _visible(d)]  # prune hidden folders
        for name in filenames:
            if _visible(name) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(os.path.join(dirpath, name))
    found.sort()
    return [Path(p) for p in found]


def _no_images_error(root: Path) -> AlexnetError:
    exts = " ".join(sorted(IMAGE_EXTENSIONS))
    return AlexnetError(
        f"no images found under {root}; expected {root}/<class>/*.jpg, one subfolder per class "
        f"(or {root}/train/<class>/ and {root}/test/<class>/), with extensions {exts}"
    )


def _scan_split(split_dir: Path, classes: list[str] | None) -> tuple[list[str], tuple[list[Path], list[int]]]:
    """Scan one split folder. With ``classes`` None the folder defines the classes (train);
    otherwise its class folders must be among ``classes`` (val/test)."""
    names = _subfolders(split_dir)
    files = {name: _image_files(split_dir / name) for name in names}
    if classes is None:
        if not any(files.values()):
            raise _no_images_error(split_dir)
        empty = [name for name in names if not files[name]]
        if empty:
            raise AlexnetError(
                f"class folder {split_dir / empty[0]} has no images; add images to it or remove it "
                f"({len(empty)} empty class folder(s) under {split_dir})"
            )
        if len(names) < 2:
            raise AlexnetError(
                f"found 1 class ({names[0]}) under {split_dir}; need at least 2 classes, "
                f"one subfolder each, e.g. {split_dir}/cat/ and {split_dir}/dog/"
            )
        classes = names
    index = {name: i for i, name in enumerate(classes)}
    paths: list[Path] = []
    labels: list[int] = []
    for name in names:
        if name not in index:
            raise AlexnetError(
                f"class folder {split_dir / name} has no matching folder in the train split; "
                f"rename or remove it (train classes: {', '.join(classes)})"
            )
        paths.extend(files[name])
        labels.extend([index[name]] * len(files[name]))
    return classes, (paths, labels)


def _is_split_layout(root: Path) -> bool:
    """Layout B: ROOT/train holds class *folders* (in layout A, a class named
    "train" would hold image files instead)."""
    train = root / "train"
    return train.is_dir() and bool(_subfolders(train))


def scan_folder(root: str | os.PathLike[str]) -> FolderScan:
    """Find classes and image files under ``root`` (layout A or B, see module docstring).

    Hidden files and folders are ignored; files are sorted for determinism.
    Raises ``AlexnetError`` when the path is missing, holds no images, has a
    single class, or a val/test class is missing from train.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise AlexnetError(
            f"data path {root} does not exist; pass --data a folder of class subfolders ({root}/<class>/*.jpg)"
        )
    if not root.is_dir():
        raise AlexnetError(f"data path {root} is a file, not a folder; pass --data a folder laid out as DIR/<class>/*.jpg")
    subs = _subfolders(root)
    held = [name for name in ("test", "val") if name in subs and _subfolders(root / name)]
    if not _is_split_layout(root) and held and len(held) == len(subs):
        # ROOT/test/<class>/ alone (a held-out split packed like the training one): that folder is the data.
        root = root / held[0]
    if not _is_split_layout(root):
        classes, train = _scan_split(root, None)
        return FolderScan(classes, {"train": train}, root)
    classes, train = _scan_split(root / "train", None)
    splits = {"train": train}
    for name in ("val", "test"):
        if (root / name).is_dir():
            splits[name] = _scan_split(root / name, classes)[1]
    return FolderScan(classes, splits, root)


# ----------------------------------------------------------------------------- decoding


# An image to decode: a file path, or (name, encoded bytes) as read from an archive.
ImageSource = str | tuple[str, bytes]


def _source_name(item: ImageSource) -> str:
    return item[0] if isinstance(item, tuple) else item


def _load(item: ImageSource):
    if isinstance(item, tuple):
        name, data = item
        try:
            return load_rgb(io.BytesIO(data))
        except UnreadableImageError as exc:
            raise UnreadableImageError(name, exc.reason) from None
    return load_rgb(item)


def _load_square(item: ImageSource, size: int) -> np.ndarray:
    if isinstance(item, tuple):
        return decode_square(item[1], size, item[0])
    try:
        data = read_image_file(item)  # refuses a FIFO, or a file over ALEXNET_MAX_IMAGE_BYTES, before reading
    except OSError:
        return fit_square(load_rgb(item), size)  # it names why the file cannot be read
    return decode_square(data, size, item)


def _decode_into(paths: Sequence[ImageSource], size: int, out: np.ndarray) -> list[tuple[int, str]]:
    """Decode ``paths`` into ``out`` (len(paths), size, size, 3); return (index, reason) failures."""
    failures: list[tuple[int, str]] = []
    for i, path in enumerate(paths):
        try:
            out[i] = _load_square(path, size)
        except UnreadableImageError as exc:
            failures.append((i, exc.reason))
    return failures


def _decode_chunk(paths: Sequence[ImageSource], size: int) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Worker entry point: decode one chunk and send the pixels back."""
    out = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    return out, _decode_into(paths, size, out)


def _worker_count(workers: int) -> int:
    if workers < 0:
        raise AlexnetError(f"workers must be 0 (all cores) or a positive number, got {workers}; pass e.g. --workers 4")
    if workers > 0:
        return workers
    try:
        return len(os.sched_getaffinity(0))  # respects CPU pinning (containers, taskset)
    except AttributeError:
        return os.cpu_count() or 1


def _mp_context() -> multiprocessing.context.BaseContext:
    # fork starts workers in milliseconds and needs no re-import; elsewhere fork is unsafe.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


def _chunks(start: int, stop: int, size: int, workers: int) -> list[tuple[int, int]]:
    per_image = size * size * 3
    # A few chunks per worker balances load; the byte cap bounds memory for big images.
    step = min(_MAX_CHUNK_IMAGES, max(1, _MAX_CHUNK_BYTES // per_image), math.ceil((stop - start) / (workers * 4)))
    step = max(1, step)
    return [(lo, min(lo + step, stop)) for lo in range(start, stop, step)]


# The items being decoded and the array they go into, for workers started by fork: they inherit the list
# instead of receiving their chunk's encoded bytes through a pipe, and write pixels straight into the
# output, which lives in a shared anonymous mapping, instead of sending them back (50,000 CIFAR JPEGs:
# 3.95 -> 3.53 s on a 2-core AVX2-only CPU; benchmarks/NOTES.md, "The cold start").
_FORK_ITEMS: Sequence[ImageSource] = ()
_FORK_OUT: np.ndarray | None = None


def _shared_array(shape: tuple[int, ...]) -> np.ndarray:
    """An uint8 array in an anonymous MAP_SHARED mapping (zeroed; unmapped when the array is freed):
    what forked workers write into it, the parent sees."""
    count = math.prod(shape)
    return np.frombuffer(mmap.mmap(-1, max(count, 1)), dtype=np.uint8, count=count).reshape(shape)


def _decode_shared(lo: int, hi: int, size: int) -> list[tuple[int, str]]:
    """Worker entry point under fork: decode items lo:hi of the inherited list into the shared output."""
    assert _FORK_OUT is not None
    return [(lo + i, reason) for i, reason in _decode_into(_FORK_ITEMS[lo:hi], size, _FORK_OUT[lo:hi])]


def _decode_parallel(paths: list[ImageSource], start: int, size: int, workers: int, out: np.ndarray) -> list[tuple[int, str]]:
    """Decode paths[start:] into out[start:] on `workers` processes. Under fork, `out` must come from
    `_shared_array`: the workers write into it directly."""
    global _FORK_ITEMS, _FORK_OUT
    failures: list[tuple[int, str]] = []
    chunks = _chunks(start, len(paths), size, workers)
    context = _mp_context()
    shared = context.get_start_method() == "fork"
    if shared:
        _FORK_ITEMS, _FORK_OUT = paths, out
    pool = None
    try:
        pool = ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=context)
        if shared:
            for job in [pool.submit(_decode_shared, lo, hi, size) for lo, hi in chunks]:
                failures.extend(job.result())
        else:
            jobs = [(lo, pool.submit(_decode_chunk, paths[lo:hi], size)) for lo, hi in chunks]
            for lo, job in jobs:
                pixels, bad = job.result()
                out[lo : lo + len(pixels)] = pixels
                failures.extend((lo + i, reason) for i, reason in bad)
    except BrokenProcessPool as exc:
        raise AlexnetError(
            f"an image decoding worker died ({exc}); the machine may be out of memory: retry with --workers 1"
        ) from exc
    finally:
        # On Ctrl-C or an error, drop the queued chunks instead of decoding them all first.
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        _FORK_ITEMS, _FORK_OUT = (), None
    return failures


def _common_root(paths: Sequence[str]) -> str:
    try:
        return os.path.dirname(os.path.commonpath(paths)) if len(paths) == 1 else os.path.commonpath(paths)
    except ValueError:  # mixed drives or relative/absolute mix
        return "the given paths"


def _failure_error(paths: Sequence[str], failures: list[tuple[int, str]], root: str | os.PathLike[str] | None) -> AlexnetError:
    failures.sort()
    where = os.fspath(root) if root is not None else _common_root(paths)
    index, reason = failures[0]
    if len(failures) == 1:
        return AlexnetError(f"1 unreadable image under {where}: {paths[index]} ({reason}); remove or fix it")
    return AlexnetError(
        f"{len(failures)} unreadable images under {where}, e.g. {paths[index]} ({reason}); remove or fix them"
    )


def decode_images(
    paths: Sequence[str | os.PathLike[str] | tuple[str, bytes]],
    size: int | None,
    workers: int = 0,
    *,
    root: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """Decode image files into one uint8 array ``(N, S, S, 3)`` via ``load_rgb`` + ``fit_square``.

    Each item is a path, or ``(name, encoded bytes)`` for images read from an archive.

    ``size`` is the side ``S`` of the square grid. With ``size=None`` the grid
    is taken from the first readable image (its shorter side; for a folder of
    equally sized square images, such as CIFAR-10 PNGs or JPEGs, that is just
    their size), and every other image is mapped onto it with ``fit_square``.

    ``workers`` processes decode in parallel (0 = all available cores; small
    inputs are decoded in this process). Unreadable files do not stop the
    run: all of them are collected, then one ``AlexnetError`` reports how many
    there are, with the first as an example. ``root`` only names the folder in
    that message.
    """
    if size is not None and (isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1):
        raise AlexnetError(f"image size must be a positive integer, got {size!r}; pass e.g. --image-size 32")
    items: list[ImageSource] = [p if isinstance(p, tuple) else os.fspath(p) for p in paths]
    names = [_source_name(item) for item in items]
    n = len(names)
    failures: list[tuple[int, str]] = []
    start = 0
    first: np.ndarray | None = None
    if size is None:
        # The grid size must be known before work is handed out, so decode the first
        # readable image here, in order: the result then never depends on scheduling.
        while start < n and first is None:
            try:
                image = _load(items[start])
            except UnreadableImageError as exc:
                failures.append((start, exc.reason))
                start += 1
                continue
            size = min(image.size)
            first = fit_square(image, size)
        if size is None:  # no paths, or none readable
            if failures:
                raise _failure_error(names, failures, root)
            return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    workers = _worker_count(workers)
    parallel = workers > 1 and n - start - (first is not None) >= _MIN_PARALLEL
    shape = (n, size, size, 3)
    forked = parallel and _mp_context().get_start_method() == "fork"  # workers write into a shared array
    out = _shared_array(shape) if forked else np.empty(shape, dtype=np.uint8)
    if first is not None:
        out[start] = first
        start += 1
    if parallel:
        failures += _decode_parallel(items, start, size, workers, out)
    else:
        failures += [(start + i, reason) for i, reason in _decode_into(items[start:], size, out[start:])]
    if failures:
        raise _failure_error(names, failures, root)
    return out


# ----------------------------------------------------------------------------- caching


def _relative(path: Path, prefix: str) -> str:
    text = os.fspath(path)
    return text[len(prefix) :] if text.startswith(prefix) else os.path.relpath(text, prefix)


def _cache_key(scan: FolderScan, size: int | None) -> str:
    """sha256 over the decoding settings and every file's relative path, label, size and mtime.

    Stat-based, so it costs milliseconds, yet changes whenever a file is
    edited, added, removed, renamed or moved to another class.
    """
    digest = hashlib.sha256()
    header = {"format": _CACHE_FORMAT, "size": size, "pillow": PIL.__version__, "classes": scan.classes}
    digest.update(json.dumps(header, sort_keys=True).encode())
    prefix = os.path.join(os.fspath(scan.root), "")
    for split, (paths, labels) in scan.splits.items():
        digest.update(f"\0split\0{split}\0".encode())
        for path, label in zip(paths, labels):
            try:
                st = os.stat(path)
            except OSError as exc:
                raise AlexnetError(f"cannot read {path} ({exc.strerror}); check the file and run again") from exc
            line = f"{_relative(path, prefix)}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n"
            digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _entry_dir(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"folder-{key[:16]}"


def _read_cache(entry: Path, key: str, scan: FolderScan, size: int | None) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """Load a cache entry, or return None if it is missing, stale, partial or corrupt."""
    try:
        meta = json.loads((entry / "meta.json").read_text(encoding="utf-8"))
        if meta.get("key") != key or meta.get("classes") != scan.classes:
            return None
        if meta.get("splits") != {split: len(paths) for split, (paths, _) in scan.splits.items()}:
            return None
        data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        sides: set[int] = set()
        for split, (paths, labels) in scan.splits.items():
            images = np.load(entry / f"{split}-images.npy", allow_pickle=False)
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != len(paths):
                return None
            if images.shape[1] != images.shape[2] or images.shape[3] != 3:
                return None
            sides.add(images.shape[1])
            data[split] = (images, np.asarray(labels, dtype=np.int64))
        if len(sides) > 1 or (size is not None and sides != {size}):
            return None
        return data
    except Exception:  # noqa: BLE001 - any damage to the cache just means "decode again"
        return None


def _write_cache(cache_dir: Path, key: str, scan: FolderScan, size: int | None, data: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Store decoded images atomically: write a temp folder, then rename it into place.

    A failure to write only costs the speed-up next time, so it warns instead of raising.
    """
    entry = _entry_dir(cache_dir, key)
    meta = {
        "format": _CACHE_FORMAT,
        "key": key,
        "root": os.fspath(scan.root.resolve()),
        "size": size,
        "classes": scan.classes,
        "splits": {split: int(images.shape[0]) for split, (images, _) in data.items()},
    }
    tmp: Path | None = None
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", suffix=".tmp", dir=cache_dir))
        for split, (images, _) in data.items():
            np.save(tmp / f"{split}-images.npy", images, allow_pickle=False)
        # meta.json last: an entry without it is never trusted.
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        if entry.exists():  # a corrupt or partial entry with our key
            shutil.rmtree(entry, ignore_errors=True)
        try:
            os.rename(tmp, entry)
            tmp = None
        except OSError:
            if not entry.exists():  # else another process just stored the same entry
                raise
    except OSError as exc:
        warnings.warn(f"could not write the image cache in {cache_dir} ({exc}); continuing without it", stacklevel=3)
        return
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    _remove_stale(cache_dir, entry, meta)


def _remove_stale(cache_dir: Path, keep: Path, meta: dict) -> None:
    """Delete older entries for the same folder and size (superseded by ``keep``) and
    temp folders left by crashed runs, so edits to a dataset do not pile up copies."""
    now = time.time()
    for other in cache_dir.glob("*folder-*"):
        try:
            if other == keep:
                continue
            if other.name.startswith(".") and other.name.endswith(".tmp"):
                if now - other.stat().st_mtime > _STALE_TMP_SECONDS:
                    shutil.rmtree(other, ignore_errors=True)
                continue
            old = json.loads((other / "meta.json").read_text(encoding="utf-8"))
            if old.get("root") == meta["root"] and old.get("size") == meta["size"]:
                shutil.rmtree(other, ignore_errors=True)
        except Exception:  # noqa: BLE001 - cleanup is best effort
            continue


def load_folder(
    root: str | os.PathLike[str],
    cache_dir: Path | None,
    size: int | None = None,
    workers: int = 0,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """Load a class-folder dataset as ``({split: (images, labels)}, classes)``.

    ``images`` is uint8 ``(N, S, S, 3)``, ``labels`` int64 ``(N,)``; splits are
    "train" plus "val"/"test" when present (see :func:`scan_folder`), ``size``
    and ``workers`` as in :func:`decode_images` (with ``size=None`` one grid
    size, from the first train image, is used for all splits).

    With a ``cache_dir`` the decoded arrays are kept as ``.npy`` files in
    ``cache_dir/folder-<key>/``; the key covers every file's path, size and
    mtime, so any change to the folder decodes afresh. Damaged cache entries
    are ignored and rebuilt.
    """
    scan = scan_folder(root)
    key = _cache_key(scan, size) if cache_dir is not None else ""
    if cache_dir is not None:
        cache_dir = Path(cache_dir).expanduser()
        cached = _read_cache(_entry_dir(cache_dir, key), key, scan, size)
        if cached is not None:
            return cached, list(scan.classes)

    # One decode call for all splits: one worker pool and one grid size for everything.
    all_paths = [path for paths, _ in scan.splits.values() for path in paths]
    images = decode_images(all_paths, size, workers, root=scan.root)
    data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    offset = 0
    for split, (paths, labels) in scan.splits.items():
        data[split] = (images[offset : offset + len(paths)], np.asarray(labels, dtype=np.int64))
        offset += len(paths)
    if cache_dir is not None:
        _write_cache(cache_dir, key, scan, size, data)
    return data, list(scan.classes)
