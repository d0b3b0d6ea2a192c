"""A recipe chosen from the data when no --preset is given: look at the images, pick settings that fit them.

The default recipe (the `cifar10` preset's network and schedule) is built for tens of thousands of 32 px
images. A folder of a few hundred photos given to it trains one step an epoch at 32 px and a learning rate
made for batches of 256, and ends at chance. So `alexnet train` first profiles the data it is given (how
many images and classes, their typical size, whether a test/ split exists) and, for photos, starts from
the photo recipe below. It says so in one line, saves the choice and why in the run's config, and any flag
or --config value the user gives still wins.

Torch-free: the config is resolved before torch is imported.
"""

from __future__ import annotations

import io
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import AlexnetError

# Images whose typical shorter side is at most this many pixels are CIFAR-like: the default recipe fits them.
SMALL_IMAGE_PX = 64
# Photo folders up to this many training images are decoded once into memory at the recipe's side (96 px
# RGB: 27.6 KB an image, 1.4 GB for 50,000); larger ones keep the default recipe, streamed from disk.
PHOTOS_IN_MEMORY = 50_000
# Headers read to measure a folder's typical image size (spread evenly over the sorted file list).
SIZE_SAMPLE = 64


@dataclass(frozen=True)
class DataProfile:
    """What `alexnet train` looks at before choosing a recipe."""

    images: int | None  # training images (the train/ split, or the whole folder); None: not counted
    classes: int | None
    median_width: int
    median_height: int
    test_split: bool  # a test/ (or val/) folder beside train/
    largest_class_share: float  # the share of the largest class: the accuracy of always answering it

    @property
    def shorter_side(self) -> int:
        return min(self.median_width, self.median_height)


@dataclass(frozen=True)
class Recipe:
    name: str
    reason: str  # the one line `alexnet train` prints
    overrides: dict[str, dict[str, Any]]
    profile: DataProfile | None

    def record(self) -> dict[str, Any]:
        """What the run's config.json keeps of the choice."""
        return {"name": self.name, "reason": self.reason, "settings": self.overrides,
                "profile": asdict(self.profile) if self.profile else None}


def _median_size(sizes: list[tuple[int, int]]) -> tuple[int, int]:
    return int(statistics.median(w for w, _ in sizes)), int(statistics.median(h for _, h in sizes))


def _evenly(items: list[Any], count: int) -> list[Any]:
    if len(items) <= count:
        return items
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def _small(sizes: list[tuple[int, int] | None]) -> bool:
    known = [s for s in sizes if s is not None]
    return bool(known) and min(_median_size(known)) <= SMALL_IMAGE_PX


def _header_size(source: Any) -> tuple[int, int] | None:
    """(width, height) from an image's header (no decoding); None for a file PIL cannot identify."""
    from PIL import Image, UnidentifiedImageError  # lazy: only a folder or archive is profiled (not CIFAR-10)

    try:
        with Image.open(source) as im:
            return im.size
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None  # training names unreadable files itself, with their paths


def _profile(labels: list[int], num_classes: int, sizes: list[tuple[int, int] | None], test_split: bool
             ) -> DataProfile | None:
    known = [s for s in sizes if s is not None]
    if not labels or not known:
        return None
    counts = [labels.count(c) for c in range(num_classes)]
    width, height = _median_size(known)
    return DataProfile(len(labels), num_classes, width, height, test_split, max(counts) / len(labels))


def profile_folder(root: Path) -> DataProfile | None:
    """The profile of a class folder; headers of at most SIZE_SAMPLE images are read."""
    # lazy: the data's readers (numpy, PIL, process pools) are imported only for the kind of source at hand
    from .data.folder import scan_folder

    scan = scan_folder(root)
    paths, labels = scan.splits["train"]
    sizes = [_header_size(p) for p in _evenly(list(paths), SIZE_SAMPLE)]
    return _profile(list(labels), len(scan.classes), sizes, any(s in scan.splits for s in ("test", "val")))


def profile_archive(path: Path) -> DataProfile | None:
    """The profile of a .tar.gz of class folders: one walk through it, reading the headers of the first images."""
    # lazy: the data's readers are imported only for the kind of source at hand
    from .data.archive import _is_image, layout
    from .data.tarball import member_parts, members

    names: list[str] = []
    sizes: list[tuple[int, int] | None] = []
    walk = members(path)
    try:
        for member in walk:
            if member.is_dir or not _is_image(member_parts(member.name)):
                continue
            names.append(member.name)
            if len(sizes) < SIZE_SAMPLE:
                sizes.append(_header_size(io.BytesIO(member.read())))
            elif len(sizes) == SIZE_SAMPLE and _small(sizes):
                break  # the default recipe: no need to read the rest (CIFAR's 50,000 JPEGs)
    finally:
        walk.close()
    if not names:
        return None
    if len(sizes) == SIZE_SAMPLE and _small(sizes):  # stopped early: sizes only
        width, height = _median_size([s for s in sizes if s is not None])
        return DataProfile(None, None, width, height, False, float("nan"))
    classes, splits = layout(sorted(names), path)  # counts from the part read when the walk stopped early
    return _profile(list(splits["train"][1]), len(classes), sizes, any(s in splits for s in ("test", "val")))


def profile_data(source: str) -> DataProfile | None:
    """A profile of an image folder or archive; None for CIFAR-10 (its own format) or what cannot be profiled
    here (a missing path: training reports it)."""
    from .data.sources import is_cifar_source  # lazy: numpy, not needed before a source is profiled

    path = Path(source)
    if source == "cifar10" or not path.exists():
        return None
    if path.is_file() and source.endswith((".tar.gz", ".tgz")):
        from .data.archive import is_cifar_archive  # lazy: the archive reader, for archives only

        return None if is_cifar_archive(path) else profile_archive(path)
    if is_cifar_source(source) or not path.is_dir():
        return None
    return profile_folder(path)


def photo_epochs(images: int) -> int:
    """Epochs for a photo folder from scratch: about 25,000 training images seen in all (a minute or two on two
    cores at 96 px), at least 15 and at most 100 passes."""
    return max(15, min(100, round(25_000 / max(images, 1))))


def photo_recipe(profile: DataProfile, user: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The settings of the photo recipe: alexnet-cifar at 96 px from images decoded once into memory, with
    random-resized crops and flips, SGD at a rate for batch 32 with a warm-up, validated every epoch."""
    side = user.get("data", {}).get("image_size") or 96
    return {
        "data": {
            "loader": "memory",  # decoded once: a few hundred photos per epoch are not worth decoding again
            "store_size": side,  # held at the input side: evaluation needs no resize, crops scale up from it
            "crop_scale": 0.25,  # random-resized crops of 25-100% of the photo, then flips: few photos, many views
            "image_size": side,  # 96 px: measured against 64 and 128 px (docs/data.md)
            "val_split": 0.2,  # one photo in five held out, so the validation figure is worth choosing epochs by
        },
        "model": {
            "name": "alexnet-cifar",  # the five-conv AlexNet with batch norm, trained from scratch
            "widths": (32, 64, 128, 256, 256),
            "pools": (1, 2, 3, 4),  # 96 -> 48 -> 24 -> 12 -> 6 px before conv5
            "global_pool": True,  # conv5's map max-pooled whole: a small head for any input side
            "hidden": 0,
            "dropout": 0.0,
            "pool_first": True,
        },
        "train": {
            "epochs": photo_epochs(round(profile.images * 0.8)),
            "batch_size": 32,  # a few hundred photos still make several steps an epoch
            "optimizer": "sgd",
            "lr": 0.05,  # SGD's rate for batch 32 (the default 0.4 is for batch 256 and diverged here)
            "clip_grad": 1.0,  # the classifier's first gradients are several times its weights: without this the
            # loss rose to 3-5x its start in the first epochs even at a tenth of this rate (docs/data.md)
            "warmup_epochs": 3,  # a handful of steps an epoch: ramp up over three of them
            "schedule": "linear",
            "val_every": 1,  # every epoch: best.pt is the best validated epoch, and the curve shows progress
        },
    }


def choose_recipe(source: str, user: dict[str, dict[str, Any]]) -> Recipe | None:
    """The recipe for `source` when no --preset is given; None keeps the default recipe without a word (CIFAR-10
    itself, or data that cannot be profiled). `user`: the options the user gave (flags and --config)."""
    try:
        profile = profile_data(source)
    except AlexnetError:
        return None  # an unreadable folder or archive: the data step names the problem with its own message
    if profile is None:
        return None
    if profile.shorter_side <= SMALL_IMAGE_PX:
        return Recipe("small images", "CIFAR-sized images: the default recipe", {}, profile)
    if profile.images is None or profile.images > PHOTOS_IN_MEMORY:
        return Recipe("large photo folder", "the default recipe streamed from disk; --preset imagenet is the "
                      "227 px network", {}, profile)
    return Recipe("small photo folder", "trained from scratch on photos decoded once into memory",
                  photo_recipe(profile, user), profile)


def recipe_line(recipe: Recipe, cfg: Any) -> str:
    """The line `alexnet train` starts with: the data it saw and what the run will do (`cfg`: the resolved
    RunConfig, the user's options included)."""
    p = recipe.profile
    seen = ""
    if p is not None:
        counted = f"{p.images:,} images, {p.classes} classes, " if p.images is not None else ""
        seen = f" ({counted}median {p.median_width}x{p.median_height}{', a test split' if p.test_split else ''})"
    d, t = cfg.data, cfg.train
    side = f" at {d.image_size} px" if d.image_size else ""
    crops = "random-resized crops" if d.crop_scale or d.loader == "stream" else f"{d.crop_padding} px crops"
    every = {0: "validation after the last epoch", 1: "validation every epoch"}.get(
        t.val_every, f"validation every {t.val_every} epochs")
    return (f"recipe: {recipe.name}{seen} -> {cfg.model.name}{side}, batch {t.batch_size}, lr {t.lr:g}, "
            f"{t.epochs} epochs, {crops}, {every}")
