"""Image folders too large for memory (ImageNet-style): decode and augment per image in worker
processes, finish each batch on the training device.

:class:`StreamingLoader` has the interface of :class:`alexnet.data.memory.BatchLoader`
(``set_epoch``, ``len`` = batches per epoch on this rank, iteration yields ``(x, y)`` on the
device), so the trainer can use either. The work is split by cost:

- worker processes (``torch.utils.data.DataLoader``) decode each file with ``load_rgb`` and
  crop/flip it with Pillow, returning uint8 CHW tensors: a quarter of the bytes of float32, so
  the host-to-device copy stays small;
- the main process converts each batch on the device, vectorised: to float, the PCA lighting
  noise (training), normalisation and channels-last memory.

Determinism: the order is a permutation drawn from ``(seed, epoch)`` exactly as in
``BatchLoader``, ranks take strided shares of whole global batches, and the random crop and flip
of sample ``i`` in epoch ``e`` come from a generator seeded by ``(seed, e, i)`` alone. Batches are
therefore identical for any number of workers and after a resume.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate

from alexnet.data.images import UnreadableImageError, load_rgb
from alexnet.data.lighting import LightingPCA, lighting_generator
from alexnet.data.prepare import centre_box, centre_view, resize_shorter
from alexnet.errors import AlexnetError

__all__ = ["CROPS", "StreamingLoader", "random_resized_box", "resize_shorter", "ten_crop_boxes"]

CROPS = ("random-resized", "paper")
"""Training crops: torchvision-style RandomResizedCrop, or the 2012 paper's 256 -> random 224/227."""

# Distinguishes the augmentation random stream from other streams derived from the same seed.
_AUGMENT_STREAM = 0xA06
_BILINEAR = Image.Resampling.BILINEAR


# ----------------------------------------------------------------------------- per-image transforms


def random_resized_box(width: int, height: int, rng: np.random.Generator,
                       scale: tuple[float, float] = (0.08, 1.0),
                       ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """``(left, top, w, h)`` of a random crop as torchvision's RandomResizedCrop picks it.

    Up to 10 tries at an area fraction in ``scale`` and a log-uniform aspect ratio in ``ratio``;
    if none fits, the centre crop of the whole image with its aspect clamped into ``ratio``.
    """
    area = width * height
    log_lo, log_hi = np.log(ratio[0]), np.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = float(np.exp(rng.uniform(log_lo, log_hi)))
        w = int(round(np.sqrt(target * aspect)))
        h = int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def ten_crop_boxes(width: int, height: int, size: int) -> list[tuple[int, int, int, int]]:
    """PIL boxes of the four corner crops (top-left, top-right, bottom-left, bottom-right) and the
    centre crop; the paper's ten views are these five and their mirror images."""
    s = size
    return [(0, 0, s, s), (width - s, 0, width, s), (0, height - s, s, height),
            (width - s, height - s, width, height), centre_box(width, height, s)]


def _chw(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) array -> uint8 (..., 3, H, W) tensor (one copy, contiguous)."""
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(pixels, -1, -3)))


@dataclass(frozen=True)
class _Transform:
    """What happens to one decoded image; small and picklable, so it travels to the workers."""

    train: bool
    image_size: int
    crop: str
    resize: int
    ten_crop: bool
    flip: bool

    def __call__(self, img: Image.Image, rng: np.random.Generator | None) -> torch.Tensor:
        s = self.image_size
        if self.train:
            assert rng is not None
            if self.crop == "random-resized":
                left, top, w, h = random_resized_box(*img.size, rng)
                # resize() with a box crops and scales in one pass, never scaling the whole image.
                img = img.resize((s, s), _BILINEAR, box=(left, top, left + w, top + h))
            else:
                img = resize_shorter(img, self.resize)
                left = int(rng.integers(0, img.size[0] - s + 1))
                top = int(rng.integers(0, img.size[1] - s + 1))
                img = img.crop((left, top, left + s, top + s))
            if self.flip and rng.random() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            return _chw(np.asarray(img))
        if not self.ten_crop:
            return _chw(centre_view(img, s, self.resize))
        img = resize_shorter(img, self.resize)
        five = np.stack([np.asarray(img.crop(box)) for box in ten_crop_boxes(*img.size, s)])
        return _chw(np.concatenate([five, five[:, :, ::-1]]))  # (10, 3, S, S); 5..9 mirror 0..4


@dataclass(frozen=True)
class _Unreadable:
    """Stands in for a sample whose file failed to decode; plain data, so it pickles exactly."""

    path: str
    reason: str


@dataclass(frozen=True)
class _UnreadableBatch:
    """What a batch with unreadable files becomes (pinning passes unknown types through as is)."""

    failed: list[_Unreadable]


class _ImageFiles(Dataset):
    """Map-style dataset keyed by ``(index, epoch)``: the epoch travels with each key, so workers
    never hold a stale epoch and the augmentation depends on nothing but (seed, epoch, index)."""

    def __init__(self, paths: Sequence[str], labels: Sequence[int], transform: _Transform, seed: int):
        self.paths, self.labels = list(paths), list(labels)
        self.transform, self.seed = transform, seed

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int] | _Unreadable:
        index, epoch = key
        try:
            img = load_rgb(self.paths[index])
        except UnreadableImageError as exc:
            # Raising here would reach the main process as a RuntimeError holding a traceback;
            # a marker lets the main process raise the original one-line error instead.
            return _Unreadable(exc.path, exc.reason)
        rng = None
        if self.transform.train:
            rng = np.random.default_rng([_AUGMENT_STREAM, self.seed % 2**63, epoch, index])
        return self.transform(img, rng), self.labels[index]


def _ignore_stop_signals(worker_id: int) -> None:
    """Decoding workers leave SIGINT and SIGTERM to the main process, which finishes its step and saves: a
    Ctrl-C (sent to the whole terminal's process group) or a scheduler's SIGTERM to every process must not kill
    the worker that process still needs. The DataLoader ends the workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _collate(items: list) -> tuple[torch.Tensor, torch.Tensor] | _UnreadableBatch:
    """Stack a batch (default_collate writes straight into shared memory inside a worker), or pass
    on the markers of the files that failed."""
    failed = [item for item in items if isinstance(item, _Unreadable)]
    if failed:
        return _UnreadableBatch(failed)
    x, y = default_collate(items)
    return x, y


class _KeyBatches:
    """The batch sampler: lists of ``(index, epoch)`` keys, one per batch of this rank."""

    def __init__(self, batches: list[torch.Tensor], epoch: int):
        self.batches, self.epoch = batches, epoch

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.batches:
            yield [(i, self.epoch) for i in batch.tolist()]


# ----------------------------------------------------------------------------- the loader


class StreamingLoader:
    """Yields ``(x, y)`` batches decoded from image files by ``workers`` processes.

    ``x`` is float32 on ``device``, normalised with ``mean``/``std`` (given in [0, 1] units),
    shape (B, 3, S, S) in channels-last memory; ``y`` is int64 (B,). Training (``train=True``):
    a shuffled order per epoch (see :meth:`set_epoch`), the crop ``crop`` ("random-resized" or
    "paper", see :data:`CROPS`), a mirror with p=0.5 when ``flip``, then ``lighting`` (PCA colour
    noise) on the device. As in ``BatchLoader``, an epoch holds whole global batches
    (``batch_size * world_size``) only and each rank takes a strided share of every global batch;
    all randomness is drawn per global batch or per sample, so N ranks see exactly the images one
    process would. Evaluation: every sample once, in file order, each rank taking the strided
    share ``rank::world_size`` (the caller gathers them back); the shorter side is resized to
    ``resize`` and the centre ``image_size`` crop taken. ``labels`` holds all labels (CPU, int64,
    file order), so ``len(loader.labels)`` is the size of the split as with ``BatchLoader``.

    With ``ten_crop=True`` (evaluation) each sample is the paper's ten views: the four corner crops
    and the centre crop, then the mirror images of those five in the same order, so ``x`` has shape
    (B, 10, 3, S, S). The consumer runs ``x.flatten(0, 1)`` (a view that is channels-last) through
    the model and averages the logits over the 10 views: ``logits.view(B, 10, -1).mean(1)``.

    An unreadable file raises :class:`UnreadableImageError` (an ``AlexnetError``) naming it, when
    its batch is reached: the run stops rather than training on silently dropped data.
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]], labels: Sequence[int], batch_size: int, *,
                 train: bool, image_size: int, mean: Sequence[float], std: Sequence[float],
                 device: torch.device | str, crop: str = "random-resized", resize: int = 256,
                 lighting: LightingPCA | None = None, ten_crop: bool = False, flip: bool = True,
                 seed: int = 0, rank: int = 0, world_size: int = 1, workers: int = 2,
                 channels_last: bool = True, pin_memory: bool | None = None):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        if not paths:
            raise AlexnetError("no images to load; check the data folder")
        if crop not in CROPS:
            raise AlexnetError(f"unknown crop {crop!r}; choose one of: {', '.join(CROPS)}")
        if image_size < 1 or batch_size < 1:
            raise AlexnetError(f"image size and batch size must be positive, got {image_size} and {batch_size}")
        if resize < image_size:
            raise AlexnetError(f"resize ({resize}) must be at least the image size ({image_size}); "
                               f"pass e.g. --resize 256 with --image-size 224")
        if workers < 0:
            raise AlexnetError(f"workers must be 0 or more, got {workers}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if ten_crop and train:
            raise ValueError("ten_crop is an evaluation mode; use it with train=False")
        self.device = torch.device(device)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.rank, self.world_size, self.workers = rank, world_size, workers
        self.lighting = lighting if train else None
        self.channels_last = channels_last
        self.pin_memory = self.device.type == "cuda" if pin_memory is None else pin_memory
        self.epoch = 0
        self.start = 0  # the first batch of the epoch to yield (a run resumed inside an epoch)
        self.labels = torch.tensor([int(v) for v in labels], dtype=torch.int64)
        transform = _Transform(train, image_size, crop, resize, ten_crop and not train, flip)
        self._dataset = _ImageFiles([os.fspath(p) for p in paths], self.labels.tolist(), transform, seed)
        # Normalisation constants in 0..255 pixel units, shaped to broadcast over (.., 3, H, W).
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(3, 1, 1) * 255
        self._inv_std = 1 / (torch.tensor(std, dtype=torch.float32, device=self.device).view(3, 1, 1) * 255)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Order, crops, flips and lighting depend only on (seed, epoch): a resumed run sees the
        same batches. ``start``: begin at that batch of the epoch (a run stopped inside it)."""
        self.epoch, self.start = epoch, start

    def _global_batches(self) -> list[torch.Tensor]:
        """This epoch's global batches of sample indices (the same arithmetic as ``BatchLoader``)."""
        n = len(self._dataset)
        if not self.train:
            # Evaluation: every sample once; ranks take strided shares, gathered again by the caller.
            return list(torch.arange(n)[self.rank::self.world_size].split(self.batch_size))
        # Same generator and seed formula as BatchLoader: one dataset, one order, either loader.
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        idx = torch.randperm(n, generator=gen)
        # Whole global batches only, so batch norm never sees a batch of one.
        global_batch = self.batch_size * self.world_size
        usable = (n // global_batch) * global_batch if n >= global_batch else n - n % self.world_size
        return list(idx[:usable].split(global_batch)) if usable else []

    def _shares(self, batches: list[torch.Tensor]) -> list[torch.Tensor]:
        """This rank's part of each training batch: a strided share (evaluation batches already are)."""
        return [g[self.rank::self.world_size] for g in batches] if self.train else batches

    def __len__(self) -> int:
        n = len(self._dataset)
        if not self.train:
            return -(-len(range(self.rank, n, self.world_size)) // self.batch_size)
        global_batch = self.batch_size * self.world_size
        return n // global_batch if n >= global_batch else int(n >= self.world_size)

    def _finish(self, x: torch.Tensor, y: torch.Tensor, batch: int,
                global_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 batch -> normalised float batch on the device, with lighting noise when training."""
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if self.channels_last:
            # Reorder while still uint8 (a quarter of the bytes); the float ops below keep the layout.
            # For ten-crop (B, 10, 3, S, S) the same layout makes x.flatten(0, 1) channels-last.
            x = x.movedim(-3, -1).contiguous().movedim(-1, -3)
        x = x.float()
        if self.lighting is not None:
            # Drawn for the whole global batch, then sharded: N ranks see what one process would.
            gen = lighting_generator(self.seed, self.epoch, batch)
            x = self.lighting.apply(x, self.lighting.shifts(global_size, gen)[self.rank::self.world_size])
        x.sub_(self._mean).mul_(self._inv_std)
        return x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        global_batches = self._global_batches()
        start = self.start
        sampler = _KeyBatches(self._shares(global_batches)[start:], self.epoch)
        # Its own generator: the DataLoader would otherwise draw its workers' base seed from the global RNG
        # (which dropout uses), so a run resumed inside an epoch would draw dropout masks out of step.
        loader = DataLoader(self._dataset, batch_sampler=sampler, num_workers=self.workers,
                            generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch),
                            worker_init_fn=_ignore_stop_signals if self.workers else None,
                            collate_fn=_collate, pin_memory=self.pin_memory)
        batches = iter(loader)
        try:
            for batch in range(len(sampler)):
                try:
                    item = next(batches)
                except RuntimeError as exc:
                    # "DataLoader worker (pid ...) exited unexpectedly / is killed by signal": usually memory.
                    if str(exc).startswith("DataLoader worker"):
                        raise AlexnetError(f"an image loading worker died ({str(exc).splitlines()[0]}); the "
                                           f"machine may be out of memory: retry with fewer --workers") from exc
                    raise
                if isinstance(item, _UnreadableBatch):
                    first = item.failed[0]
                    raise UnreadableImageError(first.path, first.reason)
                yield self._finish(*item, start + batch, len(global_batches[start + batch]))
        finally:
            # The workers ignore SIGTERM (see _ignore_stop_signals), so they must be ended through the loader
            # now: a traceback that keeps this frame alive would otherwise leave them to the interpreter's exit,
            # whose SIGTERM they ignore while it waits for them.
            del batches
