"""Turn a `--data` value into in-memory splits: CIFAR-10 (download, tarball, batches) or class folders.

Reading a source imports numpy and PIL only, so a child forked before torch is imported can run it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import AlexnetError

if TYPE_CHECKING:
    from .memory import ImageSet


@dataclass
class Splits:
    """The train / val / test image sets of one data source (test may be None)."""

    train: ImageSet
    val: ImageSet | None
    test: ImageSet | None
    classes: list[str]
    description: str

    def get(self, name: str) -> ImageSet:
        found = {"train": self.train, "val": self.val, "test": self.test}.get(name)
        if found is None or len(found) == 0:
            raise AlexnetError(f"the data has no {name!r} split ({self.description}); "
                               "choose --split train, val or test as present")
        return found


def cache_root(cache_dir: str | None) -> Path:
    return Path(cache_dir or os.environ.get("ALEXNET_DATA") or Path.home() / ".cache" / "alexnet")


def is_cifar_source(source: str) -> bool:
    p = Path(source)
    return (source == "cifar10" or source.endswith((".tar.gz", ".tgz"))
            or (p.is_dir() and (p / "data_batch_1").exists()))


def read_source(source: str, cache_dir: str | None = None, workers: int = 0, size: int | None = None
                ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str], str]:
    """({split: (uint8 NHWC images, labels)}, classes, a description) for any supported source. `size`: the
    square side image folders are decoded to (None: the first image's shorter side; CIFAR keeps its 32 px)."""
    if source.endswith((".tar.gz", ".tgz")) and Path(source).is_file():
        # lazy: each back-end is imported only when its kind of data is read
        from .archive import is_cifar_archive, load_image_archive

        if not is_cifar_archive(Path(source)):  # an image folder packed as a tarball
            splits, classes = load_image_archive(Path(source), cache_root(cache_dir), size, workers=workers)
            return splits, classes, f"image archive {source}"
    if is_cifar_source(source):
        from . import cifar10  # lazy: each back-end is imported only when its kind of data is read

        splits, classes = cifar10.load_cifar10(None if source == "cifar10" else source, root=cache_root(cache_dir))
        return splits, classes, f"CIFAR-10 ({source})"
    if not Path(source).exists():
        raise AlexnetError(f"--data {source}: no such file or folder; pass 'cifar10', a "
                           "cifar-10-python.tar.gz, a cifar-10-batches-py folder or an image folder")
    from . import folder  # lazy: each back-end is imported only when its kind of data is read

    splits, classes = folder.load_folder(Path(source), cache_root(cache_dir) / "folders", size, workers=workers)
    return splits, classes, f"image folder {source}"


def load_splits(source: str, val_split: float, split_seed: int, cache_dir: str | None = None,
                workers: int = 0, size: int | None = None) -> Splits:
    """Read the source and carve the seeded, stratified validation split out of its training split."""
    from .memory import ImageSet, stratified_split  # lazy: torch, which reading a source does not need (prefetch.py)

    raw, classes, description = read_source(source, cache_dir, workers, size)
    x, y = raw["train"]
    full = ImageSet(x, y, classes)
    train_idx, val_idx = stratified_split(y, val_split, split_seed)
    val = full.subset(val_idx) if len(val_idx) else None
    test = None
    for name in ("test", "val"):  # a folder's own val/ serves as its test split when test/ is absent
        if name in raw:
            test = ImageSet(raw[name][0], raw[name][1], classes)
            break
    return Splits(full.subset(train_idx), val, test, classes, description)
