"""One place that decides how images reach the model: in memory (small data) or streamed (big data).

Training, evaluation, prediction and the report all go through here, so an image is always brought
to the model's input the same way. What a run used is described by a small `InputSpec` that travels
in every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from PIL import Image

from ..config import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from ..errors import AlexnetError
from .memory import BatchLoader, Normalizer, channel_stats, stratified_split, to_device_tensor
# InputSpec and prepare_image live in the torch-free prepare.py (onnxruntime serving uses them without torch).
from .prepare import InputSpec, prepare_image
from .sources import cache_root, is_cifar_source, load_splits

if TYPE_CHECKING:
    from .folder import FolderScan

# Above this side (px) a folder's images are streamed from disk rather than decoded into memory.
STREAM_ABOVE_PX = 64


@dataclass
class EvalData:
    """One split ready to evaluate: a loader, its labels, and a way to fetch a few images to show."""

    loader: Any
    labels: np.ndarray
    classes: list[str]
    description: str
    fetch_images: Callable[[np.ndarray], np.ndarray]


@dataclass
class TrainData:
    train: Any
    val: EvalData | None
    classes: list[str]
    description: str
    spec: InputSpec
    lighting: dict | None
    num_train: int


def fixed_stats(cfg: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) fixed by the config (ImageNet's, for pretrained weights); None: measure the training images."""
    return (IMAGENET_MEAN, IMAGENET_STD) if cfg.input_stats == "imagenet" else None


def folder_scan(cfg: DataConfig) -> FolderScan | None:
    """The one walk of an image folder's tree that a set-up shares (an ImageNet-style tree holds a million
    files); None where no walk is needed here: CIFAR, archives, or in-memory loading (which scans itself)."""
    if cfg.loader == "memory" or is_cifar_source(cfg.source) or cfg.source.endswith((".tar.gz", ".tgz")):
        return None
    from .folder import scan_folder  # lazy: the folder reader (process pools, decoding) only for image folders

    return scan_folder(Path(cfg.source))


def wants_streaming(cfg: DataConfig, scan: FolderScan | None = None) -> bool:
    """auto: CIFAR and folders of small images go to memory; folders of photos are streamed. `scan`: the
    folder's `folder_scan`, when the caller has it."""
    if cfg.loader != "auto":
        return cfg.loader == "stream"
    if is_cifar_source(cfg.source) or cfg.source.endswith((".tar.gz", ".tgz")):
        return False
    scan = scan or folder_scan(cfg)
    first = scan.splits["train"][0][0]
    with Image.open(first) as im:  # reads the header only
        return min(im.size) > STREAM_ABOVE_PX


def file_splits(cfg: DataConfig, scan: FolderScan | None = None
                ) -> tuple[dict[str, tuple[list[Path], np.ndarray]], list[str]]:
    """Streaming: file lists per split, with the same seeded, stratified validation hold-out."""
    from .folder import scan_folder  # lazy: as in folder_scan, imported where an image folder is read

    scan = scan or scan_folder(Path(cfg.source))
    paths, labels = scan.splits["train"]
    labels = np.asarray(labels, dtype=np.int64)
    train_idx, val_idx = stratified_split(labels, cfg.val_split, cfg.split_seed)
    out = {"train": ([paths[i] for i in train_idx], labels[train_idx])}
    if len(val_idx):
        out["val"] = ([paths[i] for i in val_idx], labels[val_idx])
    for name in ("test", "val"):
        if name in scan.splits and "test" not in out:
            p, y = scan.splits[name]
            out["test"] = (list(p), np.asarray(y, dtype=np.int64))
    return out, scan.classes


def stream_loader(paths: list[Path], labels: np.ndarray, batch_size: int, spec: InputSpec, cfg: DataConfig,
                  device: torch.device, *, train: bool, seed: int = 0, lighting: Any = None,
                  ten_crop: bool = False, rank: int = 0, world_size: int = 1, channels_last: bool = True):
    from .streaming import StreamingLoader  # lazy: torch's DataLoader and its workers, for streamed data only

    return StreamingLoader([str(p) for p in paths], labels.tolist(), batch_size, train=train,
                           image_size=spec.image_size, mean=list(spec.mean), std=list(spec.std), device=device,
                           crop=cfg.crop, resize=spec.resize or cfg.resize, lighting=lighting,
                           ten_crop=ten_crop, flip=cfg.flip, seed=seed, rank=rank, world_size=world_size,
                           workers=cfg.workers or 2, channels_last=channels_last)


def memory_eval(images: np.ndarray, labels: np.ndarray, spec: InputSpec, batch_size: int, device: torch.device,
                channels_last: bool, rank: int = 0, world_size: int = 1) -> Any:
    normalize = Normalizer(list(spec.mean), list(spec.std), spec.image_size, device, channels_last)
    return BatchLoader(to_device_tensor(images, device), torch.from_numpy(labels).to(device), batch_size,
                       normalize, train=False, rank=rank, world_size=world_size)


def build_training(cfg: DataConfig, image_size: int, batch_size: int, seed: int, device: torch.device, *,
                   channels_last: bool = True, rank: int = 0, world_size: int = 1,
                   spec: InputSpec | None = None, lighting: dict | None = None) -> TrainData:
    """Loaders for the training and validation splits; `spec`/`lighting` come from a checkpoint on resume."""
    shard = {"rank": rank, "world_size": world_size}
    scan = folder_scan(cfg)  # walked once, shared by the decisions below
    streaming = wants_streaming(cfg, scan)
    eval_batch = max(batch_size, 256) if not streaming else batch_size
    if streaming:
        from .lighting import LightingPCA, color_stats  # lazy: only streamed data computes its colour statistics here

        if cfg.cutout:
            raise AlexnetError(f"--cutout works on in-memory data only, and {cfg.source} is streamed; "
                               "drop --cutout or pass --loader memory")

        files, classes = file_splits(cfg, scan)
        paths, labels = files["train"]
        if spec is None:
            fixed = fixed_stats(cfg)
            # Keyed by the sampled files' content (lighting.py): the same entry in every process and run.
            stats = None if fixed and not cfg.lighting else color_stats(
                paths, cache_dir=cache_root(cfg.cache_dir) / "color-stats", root=scan.root if scan else None)
            mean, std = fixed or (tuple(stats.mean), tuple(stats.std))
            spec = InputSpec("stream", image_size, resize=cfg.resize, mean=mean, std=std)
            lighting = LightingPCA.from_stats(stats).to_dict() if cfg.lighting else None
        pca = LightingPCA.from_dict(lighting) if lighting else None
        train = stream_loader(paths, labels, batch_size, spec, cfg, device, train=True, seed=seed, lighting=pca,
                              channels_last=channels_last, **shard)
        val = None
        if "val" in files:
            vp, vy = files["val"]
            val = EvalData(stream_loader(vp, vy, eval_batch, spec, cfg, device, train=False,
                                         channels_last=channels_last, **shard),
                           vy, classes, f"image folder {cfg.source}", lambda idx: stream_images(vp, idx, spec))
        return TrainData(train, val, classes, f"image folder {cfg.source} (streamed)", spec, lighting, len(paths))

    splits = load_splits(cfg.source, cfg.val_split, cfg.split_seed, cfg.cache_dir, cfg.workers, cfg.store_size)
    if spec is None:
        mean, std = fixed_stats(cfg) or channel_stats(splits.train.images)
        spec = InputSpec("memory", image_size, store_size=int(splits.train.images.shape[1]),
                         mean=tuple(mean), std=tuple(std))
    normalize = Normalizer(list(spec.mean), list(spec.std), image_size, device, channels_last)
    train = BatchLoader(to_device_tensor(splits.train.images, device),
                        torch.from_numpy(splits.train.labels).to(device), batch_size, normalize, train=True,
                        crop_padding=cfg.crop_padding, flip=cfg.flip, flip_mode=cfg.flip_mode, cutout=cfg.cutout,
                        crop_scale=cfg.crop_scale, seed=seed, **shard)
    val = None
    if splits.val is not None:
        v = splits.val
        val = EvalData(memory_eval(v.images, v.labels, spec, eval_batch, device, channels_last, **shard),
                       v.labels, splits.classes, splits.description, lambda idx: v.images[np.asarray(idx)])
    return TrainData(train, val, splits.classes, splits.description, spec, None, len(splits.train))


def build_eval(cfg: DataConfig, spec: InputSpec, split: str, device: torch.device, *, batch_size: int = 256,
               channels_last: bool = True, ten_crop: bool = False, expect_classes: list[str] | None = None,
               held_out: bool = False) -> EvalData:
    """The named split of `cfg.source`, fed exactly as the model's training fed its validation split.

    `expect_classes` (a model's classes) is checked before the split is chosen, so a wrong dataset is named
    as such rather than as a missing split. `held_out`: the data is not what the model trained on, so for
    `split="test"` a plain class folder (no train/ test/ subfolders) is the test set, all of it.
    """
    whole = held_out and split == "test"
    if whole:
        cfg = replace(cfg, val_split=0.0)
    if spec.kind == "stream":
        files, classes = file_splits(cfg)
        check_classes(cfg.source, classes, expect_classes)
        if whole and "test" not in files:
            files["test"] = files["train"]
        if split not in files:
            raise AlexnetError(f"the data has no {split!r} split (image folder {cfg.source}); "
                               "choose --split train, val or test as present")
        paths, labels = files[split]
        loader = stream_loader(paths, labels, batch_size, spec, cfg, device, train=False, ten_crop=ten_crop,
                               channels_last=channels_last)
        return EvalData(loader, labels, classes, f"image folder {cfg.source}",
                        lambda idx: stream_images(paths, idx, spec))
    if ten_crop:
        raise AlexnetError("--ten-crop needs a streamed (ImageNet-style) model; small in-memory data uses "
                           "flip test-time augmentation instead")
    splits = load_splits(cfg.source, cfg.val_split, cfg.split_seed, cfg.cache_dir, cfg.workers, cfg.store_size)
    check_classes(cfg.source, splits.classes, expect_classes)
    images = splits.train if whole and splits.test is None else splits.get(split)
    if images.images.shape[1] != spec.store_size:
        raise AlexnetError(f"--data {cfg.source} holds {images.images.shape[1]}px images but the model was "
                           f"trained on {spec.store_size}px ones")
    loader = memory_eval(images.images, images.labels, spec, batch_size, device, channels_last)
    return EvalData(loader, images.labels, splits.classes, splits.description,
                    lambda idx: images.images[np.asarray(idx)])


def check_classes(source: str, found: list[str], expected: list[str] | None) -> None:
    if expected is None or list(found) == list(expected):
        return
    n, m = len(found), len(expected)
    raise AlexnetError(f"--data {source} has {n} classes {list(found)[:5]}{'...' if n > 5 else ''} but the "
                       f"checkpoint was trained on {m} classes {list(expected)[:5]}{'...' if m > 5 else ''}")


def stream_images(paths: list[Path], idx: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Decode only the few images a report shows."""
    return np.stack([prepare_image(paths[i], spec) for i in np.asarray(idx)])
