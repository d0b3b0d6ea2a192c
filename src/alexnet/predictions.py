"""`alexnet predict` over many images: files, folders and globs expanded lazily, predicted in batches, written
as they come (a table, JSON or CSV), so thousands of images never sit in memory together. No torch here."""

from __future__ import annotations

import csv
import glob
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from .errors import AlexnetError

# The extensions a folder is searched for (the formats training reads from class folders).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
GLOB_CHARS = frozenset("*?[")


def _folder_images(folder: Path) -> Iterator[Path]:
    """Image files under `folder`, recursively, in a stable (sorted) order, hidden entries skipped."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                yield Path(root) / name


def expand_images(items: Sequence[str]) -> Iterator[Path]:
    """Each argument as the image files it names: a file as is, a folder's images (recursively), a glob's
    matches (`**` included; quote it so the shell leaves it alone). An argument that names nothing is an error."""
    for item in items:
        path = Path(item).expanduser()
        if GLOB_CHARS & set(item) and not path.exists():
            matches = sorted(glob.glob(os.path.expanduser(item), recursive=True))
            files = [Path(m) for m in matches if os.path.isfile(m)]
            if not files:
                raise AlexnetError(f"no image file matches {item!r}")
            yield from files
        elif path.is_dir():
            found = _folder_images(path)
            first = next(found, None)
            if first is None:
                raise AlexnetError(f"folder {item} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            yield first
            yield from found
        elif path.is_file():
            yield path
        else:
            raise AlexnetError(f"image {item} does not exist; pass image files, folders or quoted globs")


def batched(items: Iterable[Path], size: int) -> Iterator[list[Path]]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def predict_stream(predict: Callable[[list[Path], int], list[dict[str, Any]]], items: Sequence[str], top_k: int,
                   batch_size: int) -> Iterator[dict[str, Any]]:
    """Results one image at a time, computed `batch_size` images per call of `predict(paths, top_k)`."""
    for batch in batched(expand_images(items), batch_size):
        yield from predict(batch, top_k)


def csv_header(top_k: int) -> list[str]:
    return ["image", *itertools.chain.from_iterable((f"class_{i}", f"probability_{i}") for i in range(1, top_k + 1))]


def csv_row(result: dict[str, Any]) -> list[Any]:
    return [result["image"], *itertools.chain.from_iterable(
        (p["class"], f"{p['probability']:.6g}") for p in result["predictions"])]


def write_csv(results: Iterable[dict[str, Any]], out: TextIO) -> int:
    """Write results as CSV rows (image, class_1, probability_1, ...); returns the number of rows."""
    writer = csv.writer(out)
    count = 0
    for result in results:
        if count == 0:  # k is what the model gives: --top-k, or its class count if that is smaller
            writer.writerow(csv_header(len(result["predictions"])))
        writer.writerow(csv_row(result))
        count += 1
    return count
