"""Small datasets held in memory as one uint8 tensor and augmented a whole batch at a time.

As in airbench: decoding happens once; each batch is gathered, cropped, flipped, normalised and
resized with a handful of vectorised tensor ops on the training device. On a GPU a background thread
(`prefetch`) prepares the next batch while the current one trains; on a CPU it is made inline.
"""

from __future__ import annotations

import hashlib
import math
import queue
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class ImageSet:
    """Images as uint8 (N, H, W, 3) and int64 labels (N,), with the class names."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: np.ndarray) -> "ImageSet":
        return ImageSet(self.images[idx], self.labels[idx], self.classes)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx): `fraction` of every class held out, chosen by `seed`, both sorted."""
    if fraction <= 0:
        return np.arange(len(labels)), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n_val = int(round(fraction * len(members)))
        if len(members) > 1:  # every class is seen on both sides, however small
            n_val = min(max(n_val, 1), len(members) - 1)
        val.append(rng.permutation(members)[:n_val])
    val_idx = np.sort(np.concatenate(val))
    train_mask = np.ones(len(labels), dtype=bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask), val_idx


def channel_stats(images: np.ndarray, max_samples: int = 10_000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units, from (a seeded sample of) the training images."""
    if len(images) > max_samples:
        images = images[np.random.default_rng(0).choice(len(images), max_samples, replace=False)]
    # torch's reduction runs on every core, in float32 with cascaded sums: 0.1 s where numpy's float64
    # std over a strided (N*H*W, 3) view took 1.8 s of a cold start on the 2-core box.
    x = torch.from_numpy(np.ascontiguousarray(images)).reshape(-1, 3).float().div_(255.0)
    std, mean = torch.std_mean(x, dim=0, correction=0)
    return mean.double().tolist(), std.clamp_min(1e-3).double().tolist()  # a constant channel: no division by 0


def to_device_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 NHWC array -> uint8 NCHW tensor on `device`; its memory stays NHWC (= channels-last)."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)


def images_digest(images: torch.Tensor) -> str:
    """A content hash of a uint8 image tensor (as `to_device_tensor` makes it: NHWC memory), which ties outputs
    saved during training to the very images they were computed on. ~25 ms for 5,000 CIFAR images."""
    pixels = images.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    return hashlib.blake2b(pixels.tobytes(), digest_size=16).hexdigest()


def crop_offsets(n: int, padding: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (dy, dx) in [0, 2*padding] for n images."""
    return (torch.randint(0, 2 * padding + 1, (n,), generator=gen),
            torch.randint(0, 2 * padding + 1, (n,), generator=gen))


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, padding: int) -> torch.Tensor:
    """Crop each zero-padded image at its own offset: a translation by up to `padding` px.

    The images that share an offset are cut out of the padded batch with one slice each ((2p+1)^2 slices at
    most) instead of a gather over every pixel: 1.5 against 5.6 ms for 256 CIFAR images with p=1 on the
    2-core box, and the batch keeps its memory layout (channels-last stays channels-last)."""
    _, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    side = 2 * padding + 1
    key = (dy * side + dx).to(x.device)
    out = torch.empty_like(x)
    for k in torch.unique(key).tolist():
        idx = (key == k).nonzero().squeeze(1)
        oy, ox = divmod(k, side)
        out[idx] = padded[idx, :, oy:oy + h, ox:ox + w]
    return out


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Translate every image by up to `padding` px (zero fill), each by its own random offset."""
    if padding == 0:
        return x
    return translate(x, *crop_offsets(x.shape[0], padding, gen), padding)


def cutout_centres(n: int, height: int, width: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (cy, cx) inside an image, for n images: the centre of each image's cut-out square."""
    return torch.randint(0, height, (n,), generator=gen), torch.randint(0, width, (n,), generator=gen)


def cutout(x: torch.Tensor, cy: torch.Tensor, cx: torch.Tensor, size: int, fill: torch.Tensor) -> torch.Tensor:
    """Paint a size x size square centred at (cy, cx) of each image with `fill` (DeVries & Taylor, 2017).

    The square may hang over the border, so an image loses at most size*size pixels and sometimes fewer.
    `fill` is the training mean colour, which normalises to zero.
    """
    h, w = x.shape[-2:]
    top = cy.to(x.device)[:, None] - size // 2
    left = cx.to(x.device)[:, None] - size // 2
    rows = torch.arange(h, device=x.device)[None, :]
    cols = torch.arange(w, device=x.device)[None, :]
    in_rows = (rows >= top) & (rows < top + size)  # (n, h)
    in_cols = (cols >= left) & (cols < left + size)  # (n, w)
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (n, 1, h, w)
    return torch.where(mask, fill, x)


def mirror(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images where `mask` is true."""
    return torch.where(mask.to(x.device)[:, None, None, None], x.flip(3), x)


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the batch left-right."""
    return mirror(x, torch.rand(x.shape[0], generator=gen) < 0.5)


def resized_crop_params(n: int, min_scale: float, gen: torch.Generator,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """(n, 4) rows of (width, height, centre x, centre y) of random crops, in units of the image side, centres in
    [-1, 1]: each covers between `min_scale` and all of the image's area at an aspect ratio drawn log-uniformly
    from `ratio`, as torchvision's RandomResizedCrop draws them (clamped into the image instead of redrawn)."""
    area = torch.empty(n).uniform_(min_scale, 1.0, generator=gen)
    aspect = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen).exp()
    w, h = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - w)
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - h)
    return torch.stack([w, h, cx, cy], dim=1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor | None, size: int) -> torch.Tensor:
    """Cut each image's box (`resized_crop_params`) out of the batch and scale it to `size` x `size`, mirrored
    where `flips` is true: one bilinear `grid_sample` for the whole batch (float out, same units as in)."""
    w, h, cx, cy = boxes.to(x.device, torch.float32).unbind(1)
    sx = w if flips is None else torch.where(flips.to(x.device), -w, w)  # a negative x scale samples mirrored
    zero = torch.zeros_like(w)
    theta = torch.stack([torch.stack([sx, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


class Normalizer:
    """uint8 batch -> float batch: scale, subtract the training mean, divide by std, resize to input."""

    def __init__(self, mean: list[float], std: list[float], image_size: int, device: torch.device,
                 channels_last: bool = True):
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.inv_std = 1 / (torch.tensor(std, device=device).view(1, 3, 1, 1) * 255)
        self.image_size = image_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, x: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """size: the side to bring the batch to (default: the model's input side)."""
        shrink = size is not None and size < self.image_size
        size = size or self.image_size
        x = (x.float() - self.mean) * self.inv_std
        if x.shape[-1] != size or x.shape[-2] != size:
            # Upsampling (the notebook recipe), or a progressive-resizing shrink below the input side,
            # per batch on the device; the shrink averages (antialias) rather than skipping pixels.
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
        return x.contiguous(memory_format=self.memory_format)


class BatchLoader:
    """Yields (inputs, labels) batches from an in-memory ImageSet, optionally augmented and shuffled."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, normalize: Normalizer,
                 *, train: bool, crop_padding: int = 0, flip: bool = False, flip_mode: str = "random",
                 cutout: int = 0, crop_scale: float = 0.0, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.images, self.labels = images, labels
        self.crop_scale = crop_scale  # > 0: random-resized crops of at least this area instead of translations
        self.batch_size, self.normalize = batch_size, normalize
        self.train, self.crop_padding, self.flip, self.seed = train, crop_padding, flip, seed
        self.rank, self.world_size = rank, world_size
        self.cutout = cutout
        self.cutout_fill = normalize.mean.round().clamp(0, 255).to(images.dtype)  # the mean colour, stored units
        self.epoch = 0
        self.start = 0  # the first batch of the epoch to yield (a run resumed inside an epoch)
        self.size: int | None = None  # training side this epoch (progressive resizing); None = input side
        # Alternating flip (airbench): each image gets a seeded coin once, then is mirrored in every other
        # epoch, so any two consecutive epochs show it both ways instead of by chance.
        self.alternate = flip_mode == "alternate"
        self.base_flips = (torch.rand(len(labels), generator=torch.Generator().manual_seed(seed * 7_919 + 1)) < 0.5
                           if self.alternate else None)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Order and augmentation depend only on (seed, epoch): a resumed run sees the same batches. `start`:
        begin at that batch of the epoch (a run stopped inside it), the batches after it exactly as before."""
        self.epoch, self.start = epoch, start

    def set_size(self, size: int | None) -> None:
        """Bring training batches to `size` px from now on (None: the model's input side)."""
        self.size = size

    def _global_batches(self, gen: torch.Generator) -> list[torch.Tensor]:
        n = len(self.labels)
        if not self.train:
            # Evaluation: every sample once; ranks take strided shares, gathered again by the caller.
            idx = torch.arange(n)[self.rank::self.world_size]
            return list(idx.split(self.batch_size))
        # Whole global batches only, so batch norm never sees a batch of one.
        global_batch = self.batch_size * self.world_size
        idx = torch.randperm(n, generator=gen)
        usable = (n // global_batch) * global_batch if n >= global_batch else n - n % self.world_size
        return list(idx[:usable].split(global_batch))

    def __len__(self) -> int:
        n = len(self.labels)
        if not self.train:
            return -(-len(range(self.rank, n, self.world_size)) // self.batch_size)
        return max(n // (self.batch_size * self.world_size), 1)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        # Cut-out squares have their own stream, so turning them on leaves every crop and flip as it was.
        cut_gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch + 7_777_777)
        for i, g in enumerate(self._global_batches(gen)):
            if self.train:
                # Augmentation is drawn for the whole global batch and then sharded, so N ranks see
                # exactly the images one process would (same crops, same flips).
                if self.crop_scale:
                    boxes = resized_crop_params(len(g), self.crop_scale, gen)
                elif self.crop_padding:
                    dy, dx = crop_offsets(len(g), self.crop_padding, gen)
                if self.flip:
                    flips = torch.rand(len(g), generator=gen) < 0.5
                    if self.base_flips is not None:  # the coins above are still drawn: crops stay the same
                        flips = self.base_flips[g] ^ (self.epoch % 2 == 1)
                if self.cutout:
                    cy, cx = cutout_centres(len(g), *self.images.shape[-2:], cut_gen)
                if i < self.start:  # skipped, its random draws made: the batches after it are unchanged
                    continue
                share = slice(self.rank, None, self.world_size)
                b = g[share].to(self.images.device)
                x = self.images[b]
                if self.crop_scale:  # crop, scale and mirror in one resampling, to the side this epoch trains at
                    x = resized_crop(x, boxes[share], flips[share] if self.flip else None,
                                     self.size or self.normalize.image_size)
                elif self.crop_padding:
                    x = translate(x, dy[share], dx[share], self.crop_padding)
                if self.flip and not self.crop_scale:
                    x = mirror(x, flips[share])
                if self.cutout:
                    x = cutout(x, cy[share], cx[share], self.cutout, self.cutout_fill)
            else:
                if i < self.start:
                    continue
                b = g.to(self.images.device)
                x = self.images[b]
            yield self.normalize(x, self.size if self.train else None), self.labels[b]


def prefetch(batches: Iterator, device: torch.device | None = None, depth: int = 2) -> Iterator:
    """Run `batches` in a background thread, `depth` items ahead (tensor ops release the GIL), so the host
    prepares the next batch while a GPU computes. For a CPU `device` the batches come back as they are: the
    thread's tensor ops would run a second OpenMP team on the cores the training step already fills
    (4-6% fewer images/s on the 2-core box, benchmarks/NOTES.md)."""
    if device is not None and device.type == "cpu":
        return batches
    return _threaded(batches, depth)


def _threaded(batches: Iterator, depth: int) -> Iterator:
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in batches:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as e:  # hand the failure to the consumer
            q.put(e)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # drain so the producer can see `stop` and exit
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
