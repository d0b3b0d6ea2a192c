"""Colour statistics of an image folder: per-channel mean/std and the paper's "fancy PCA" lighting.

Krizhevsky et al. (2012), section 4.1: compute the principal components of the RGB values of the
training set, then to every training image add ``sum_i alpha_i * lambda_i * p_i`` where ``p_i``
and ``lambda_i`` are the eigenvectors and eigenvalues of the 3x3 RGB covariance and each
``alpha_i ~ N(0, 0.1)`` is drawn once per image (per presentation of it). This changes the
intensity and colour of the illumination but not the object's identity.

Both statistics come from a seeded sample of the training images (downscaled, so a couple of
thousand ImageNet JPEGs take seconds) and can be cached as one small JSON file, so a run on a
million images does not rescan them at every start. The cache is keyed by content: the sampled
files' paths (relative to the dataset's root), sizes and modification times, the number of files
and the settings. That is exactly what the statistics depend on (the sample is drawn from the file
count and the seed), it costs one stat per sampled file (milliseconds, where hashing their bytes
would read as much as recomputing), it is the same in every process, and a copy of the dataset
that keeps its timestamps (cp -a, rsync -t) still hits.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from alexnet.data.images import load_rgb

__all__ = ["ColorStats", "LightingPCA", "color_stats", "dataset_mean_std", "lighting_generator"]

_CACHE_FORMAT = 2  # 2: keyed by the sampled files' sizes and mtimes, not their names alone
# Distinguishes the lighting random stream from any other stream derived from the same seed.
_LIGHTING_STREAM = 0x11647


@dataclass
class ColorStats:
    """Per-channel ``mean``/``std`` and RGB covariance eigen-decomposition, all for pixels in [0, 1].

    ``eigvals`` are in descending order; ``eigvecs[:, i]`` (a column) belongs to ``eigvals[i]``.
    """

    mean: list[float]
    std: list[float]
    eigvals: list[float]
    eigvecs: list[list[float]]  # 3x3, row-major


def _sample(paths: Sequence[str | os.PathLike[str]], max_images: int, seed: int) -> list[str]:
    """A seeded sample of at most ``max_images`` paths, in the input order (cheap, reproducible)."""
    names = [os.fspath(p) for p in paths]
    if len(names) <= max_images:
        return names
    chosen = np.sort(np.random.default_rng(seed).choice(len(names), max_images, replace=False))
    return [names[i] for i in chosen]


def _small_pixels(path: str, size: int) -> np.ndarray:
    """The image squeezed to ``size`` x ``size`` as float64 (size*size, 3) in [0, 1].

    Squeezing distorts shapes but not colours, and gives every image the same weight.
    """
    img = load_rgb(path).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(img, dtype=np.float64).reshape(-1, 3) / 255.0


def _compute(names: Sequence[str], size: int) -> ColorStats:
    if not names:
        raise ValueError("need at least one image to compute colour statistics")
    total = np.zeros(3)
    outer = np.zeros((3, 3))
    count = 0
    for name in names:
        x = _small_pixels(name, size)
        total += x.sum(axis=0)
        outer += x.T @ x
        count += len(x)
    mean = total / count
    cov = outer / count - np.outer(mean, mean)
    std = np.sqrt(np.maximum(np.diag(cov), 0.0))
    std = np.maximum(std, 1e-3)  # a constant channel must not divide by zero
    vals, vecs = np.linalg.eigh(cov)  # ascending, columns are eigenvectors
    order = np.argsort(vals)[::-1]
    vals, vecs = np.maximum(vals[order], 0.0), vecs[:, order]
    # eigh's signs are arbitrary: fix them (largest component positive) so results are reproducible.
    signs = np.sign(vecs[np.argmax(np.abs(vecs), axis=0), np.arange(3)])
    vecs = vecs * np.where(signs == 0, 1.0, signs)
    return ColorStats(mean.tolist(), std.tolist(), vals.tolist(), vecs.tolist())


def _settings(total: int, max_images: int, seed: int, size: int) -> list:
    return [_CACHE_FORMAT, total, max_images, seed, size]


def _cache_key(names: Sequence[str], settings: list, root: str | os.PathLike[str] | None) -> str:
    """sha256 over the settings and each sampled file's path (relative to ``root``), size and mtime."""
    digest = hashlib.sha256(json.dumps(settings).encode())
    prefix = os.path.join(os.fspath(root), "") if root is not None else ""
    for name in names:
        try:
            st = os.stat(name)
            stamp = f"{st.st_size}\0{st.st_mtime_ns}"
        except OSError:  # decoding it will name the problem; the key just must not match a good entry
            stamp = "missing"
        relative = name[len(prefix):] if prefix and name.startswith(prefix) else name
        digest.update(f"{relative}\0{stamp}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _read_cache(path: Path, key: str) -> ColorStats | None:
    """The cached statistics, or None when the file is missing, stale or damaged in any way."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != _CACHE_FORMAT or data.get("key") != key:
            return None
        stats = ColorStats(*(data[k] for k in ("mean", "std", "eigvals", "eigvecs")))
        arrays = [np.asarray(stats.mean, float), np.asarray(stats.std, float), np.asarray(stats.eigvals, float)]
        vecs = np.asarray(stats.eigvecs, float)
        if any(a.shape != (3,) for a in arrays) or vecs.shape != (3, 3):
            return None
        if not all(np.isfinite(a).all() for a in [*arrays, vecs]) or (arrays[1] <= 0).any():
            return None
        return stats
    except Exception:  # noqa: BLE001 - any damage just means "compute again"
        return None


def _write_cache(path: Path, key: str, stats: ColorStats, extra: dict | None = None) -> None:
    """Write atomically (temp file + rename); a failure only costs the speed-up, so it warns."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"format": _CACHE_FORMAT, "key": key, **(extra or {}), **stats.__dict__}
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        warnings.warn(f"could not write colour statistics to {path} ({exc}); continuing without the cache",
                      stacklevel=3)
        tmp.unlink(missing_ok=True)


def _remove_superseded(folder: Path, keep: Path, root: str, settings: list) -> None:
    """Entries of the same dataset root and settings but an older key: the dataset changed since."""
    for other in folder.glob("*.json"):
        try:
            if other != keep:
                old = json.loads(other.read_text(encoding="utf-8"))
                if old.get("root") == root and old.get("settings") == settings:
                    other.unlink()
        except Exception:  # noqa: BLE001 - cleanup is best effort
            continue


def color_stats(paths: Sequence[str | os.PathLike[str]], cache_path: str | os.PathLike[str] | None = None, *,
                cache_dir: str | os.PathLike[str] | None = None, root: str | os.PathLike[str] | None = None,
                max_images: int = 2000, seed: int = 0, size: int = 64) -> ColorStats:
    """Mean, std and RGB eigen-decomposition of a seeded sample of ``max_images`` training images.

    Each sampled image is decoded with ``load_rgb`` and squeezed to ``size`` px. The result is cached
    as JSON, in the file ``cache_path`` or in ``cache_dir`` under a name made of its content key (see
    the module docstring; ``root``, the dataset's folder, makes the key independent of where the dataset
    lies), and reused while the sampled files, their number and the settings stay the same; a missing,
    stale or corrupt entry is recomputed. An unreadable sampled image raises ``UnreadableImageError``.
    """
    names = _sample(paths, max_images, seed)
    settings = _settings(len(paths), max_images, seed, size)
    key = _cache_key(names, settings, root)
    cache = Path(cache_path).expanduser() if cache_path is not None else None
    if cache is None and cache_dir is not None:
        cache = Path(cache_dir).expanduser() / f"{key[:16]}.json"
    if cache is not None and (stats := _read_cache(cache, key)) is not None:
        return stats
    stats = _compute(names, size)
    if cache is not None:
        where = os.fspath(Path(root).resolve()) if root is not None else None
        _write_cache(cache, key, stats, {"root": where, "settings": settings})
        if cache_path is None and where is not None:
            _remove_superseded(cache.parent, cache, where, settings)
    return stats


def dataset_mean_std(paths: Sequence[str | os.PathLike[str]], max_images: int = 2000, seed: int = 0,
                     cache_path: str | os.PathLike[str] | None = None) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std) in [0, 1] units, for normalisation; see :func:`color_stats`."""
    stats = color_stats(paths, cache_path, max_images=max_images, seed=seed)
    return stats.mean, stats.std


def lighting_generator(seed: int, epoch: int, batch: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, epoch, batch index): resumed runs redraw
    exactly the same lighting noise."""
    state = np.random.SeedSequence([_LIGHTING_STREAM, seed % 2**63, epoch, batch]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class LightingPCA:
    """The paper's PCA colour augmentation, applied on the device to a whole float batch.

    ``eigvals``/``eigvecs`` describe the covariance of RGB pixels in [0, 1]; the added shift is in
    those units times ``scale`` (255 for batches still in 0..255 pixel units, i.e. before
    normalisation, which is how the streaming loader applies it).
    """

    def __init__(self, eigvals: Sequence[float], eigvecs: Sequence[Sequence[float]], alpha_std: float = 0.1):
        self.eigvals = torch.as_tensor(eigvals, dtype=torch.float32).reshape(3)
        self.eigvecs = torch.as_tensor(eigvecs, dtype=torch.float32).reshape(3, 3)
        self.alpha_std = float(alpha_std)

    @classmethod
    def from_stats(cls, stats: ColorStats, alpha_std: float = 0.1) -> "LightingPCA":
        return cls(stats.eigvals, stats.eigvecs, alpha_std)

    @classmethod
    def from_images(cls, paths: Sequence[str | os.PathLike[str]], max_images: int = 2000, seed: int = 0,
                    alpha_std: float = 0.1) -> "LightingPCA":
        """Computed from a seeded sample of training images (see :func:`color_stats`)."""
        return cls.from_stats(color_stats(paths, max_images=max_images, seed=seed), alpha_std)

    @classmethod
    def cached(cls, paths: Sequence[str | os.PathLike[str]], cache_path: str | os.PathLike[str],
               max_images: int = 2000, seed: int = 0, alpha_std: float = 0.1) -> "LightingPCA":
        """Like :meth:`from_images`, computed once and then read from the JSON file ``cache_path``."""
        return cls.from_stats(color_stats(paths, cache_path, max_images=max_images, seed=seed), alpha_std)

    def to_dict(self) -> dict:
        """Plain lists and floats, for a checkpoint."""
        return {"eigvals": self.eigvals.tolist(), "eigvecs": self.eigvecs.tolist(), "alpha_std": self.alpha_std}

    @classmethod
    def from_dict(cls, data: dict) -> "LightingPCA":
        return cls(data["eigvals"], data["eigvecs"], data.get("alpha_std", 0.1))

    def shifts(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, 3) RGB shifts in [0, 1] units: ``eigvecs @ (alpha * eigvals)``, one alpha triple per image."""
        alpha = torch.randn(n, 3, generator=generator) * self.alpha_std
        return (alpha * self.eigvals) @ self.eigvecs.T

    def apply(self, x: torch.Tensor, shifts: torch.Tensor, scale: float = 255.0) -> torch.Tensor:
        """Add ``shifts`` (N, 3), times ``scale``, to float ``x`` of shape (N, 3, H, W); returns a new tensor."""
        if self.alpha_std == 0:
            return x
        shift = (shifts * scale).to(device=x.device, dtype=x.dtype)
        return x + shift.view(x.shape[0], 3, *([1] * (x.ndim - 2)))

    def __call__(self, x: torch.Tensor, generator: torch.Generator, scale: float = 255.0) -> torch.Tensor:
        """Add a random per-image colour shift to float ``x`` of shape (N, 3, H, W).

        The alphas are drawn on the CPU from ``generator`` (so they do not depend on the device)
        and moved to ``x``'s device: only N*3 numbers travel.
        """
        return self.apply(x, self.shifts(x.shape[0], generator), scale)
