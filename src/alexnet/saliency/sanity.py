"""Sanity checks of saliency maps: does a map depend on what the network learned, does it point at the object,
and does it rank first the pixels the prediction rests on?

- model randomisation (Adebayo et al. 2018, "Sanity Checks for Saliency Maps"): the network's layers are
  re-initialised from the output down, cumulatively, and each randomised network's map is compared with the
  trained one's by Spearman's rank correlation. A map that explains the network falls towards 0; one that
  stays high shows the image (edges, contrast), whatever the weights;
- localisation: against a known object mask, the pointing game (Zhang et al. 2016: does the map's maximum lie
  on the object?) and the share of the map's mass on the object;
- faithfulness (Petsiuk et al. 2018, RISE): deletion and insertion curves, the class probability as pixels are
  removed from the image (or added to a blank one) in the order the map ranks them; a faithful map's deletion
  curve falls faster, and its insertion curve rises faster, than a random map's.

`explain_model` computes a method's maps exactly as `alexnet explain` does, for any `LoadedModel`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..inference import LoadedModel, image_probabilities
from .cam import input_maps
from .occlusion import Probabilities, fill_colour, occlusion_maps

__all__ = ["average_ranks", "cascading_randomisation", "curve_auc", "deletion_curves", "explain_model",
           "insertion_curves", "mass_inside", "model_probabilities", "peak_centres", "pointing_game", "random_maps",
           "randomisation_stages", "randomisation_test", "rank_correlations", "spearman"]

# Layers whose weights act on the output of the layer before them alone: re-initialised together with it.
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


# ---------------------------------------------------------------------------------------------------------------
# Spearman's rank correlation.

def average_ranks(values: np.ndarray) -> np.ndarray:
    """The ranks 1..n of the values of an array (flattened), tied values sharing the mean of the ranks they span:
    [10, 30, 20, 20] -> [1, 4, 2.5, 2.5]."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(flat, kind="stable")
    ordered = flat[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # where each run of equal values begins
    counts = np.diff(np.r_[starts, flat.size])
    group_rank = starts + (counts + 1) / 2  # ranks starts+1 .. starts+count, averaged
    ranks = np.empty(flat.size)
    ranks[order] = np.repeat(group_rank, counts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps of one shape: Pearson's correlation of their average ranks, in
    [-1, 1]. NaN when either map is constant (an all-zero map has no order to compare)."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"maps of different shapes: {np.shape(a)} and {np.shape(b)}")
    ra, rb = average_ranks(a), average_ranks(b)
    ra -= ra.mean()
    rb -= rb.mean()
    norm = np.sqrt((ra @ ra) * (rb @ rb))
    return float(ra @ rb / norm) if norm > 0 else float("nan")


def rank_correlations(maps_a: np.ndarray, maps_b: np.ndarray) -> np.ndarray:
    """`spearman` of each pair of maps (N, H, W) x (N, H, W) -> (N,)."""
    return np.array([spearman(a, b) for a, b in zip(maps_a, maps_b)], dtype=np.float64)


# ---------------------------------------------------------------------------------------------------------------
# Model randomisation.

def randomisation_stages(model: nn.Module) -> list[list[str]]:
    """The layers that hold weights, from the output down, as lists of module names: each convolution or linear
    layer with the normalisation that follows it (["features.conv5", "features.bn5"]). A stage is named by its
    first module."""
    stages: list[list[str]] = []
    for name, module in model.named_modules():
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if not own:
            continue
        if isinstance(module, NORMS) and stages:
            stages[-1].append(name)
        else:
            stages.append([name])
    return stages[::-1]


def cascading_randomisation(model: nn.Module, fresh: nn.Module, stages: Sequence[Sequence[str]] | None = None
                            ) -> Iterator[tuple[str, nn.Module]]:
    """Adebayo et al.'s cascade: a copy of `model` (in eval mode) whose stages (`randomisation_stages` by
    default) are re-initialised one at a time from the output down, cumulatively; yields (the stage's name, the
    copy) after each, the classifier alone first, the whole network last. A stage takes every parameter and
    buffer (batch-norm statistics too) from `fresh`, an untrained network of the same architecture: the
    randomised layers are as training would have started. The copy is one object, changed in place: use it
    before asking for the next stage."""
    randomised = copy.deepcopy(model).eval()
    mine, theirs = dict(randomised.named_modules()), dict(fresh.named_modules())
    for stage in stages if stages is not None else randomisation_stages(model):
        with torch.no_grad():
            for name in stage:
                target, source = mine[name], theirs[name]
                for key, value in [*source.named_parameters(recurse=False), *source.named_buffers(recurse=False)]:
                    getattr(target, key).copy_(value)
        yield stage[0], randomised


def randomisation_test(model: nn.Module, fresh: nn.Module, explain: Callable[[nn.Module], np.ndarray],
                       stages: Sequence[Sequence[str]] | None = None) -> list[dict]:
    """The cascade's rank correlations: `explain(network)` gives the maps (N, H, W) of the same images and
    target classes through a network; each randomised network's maps are compared with the trained one's.

    Returns one row per stage, {"layer", "spearman" (the mean over images), "per_image", "constant" (how many
    maps the randomised network left constant)}. A constant map keeps nothing of the trained map's order and
    counts as 0; images whose trained map is itself constant are left out of every row (nothing to compare).
    """
    trained = explain(model)
    varied = np.array([m.max() > m.min() for m in trained], dtype=bool)
    rows = []
    for layer, randomised in cascading_randomisation(model, fresh, stages):
        rho = rank_correlations(trained[varied], explain(randomised)[varied])
        constant = np.isnan(rho)
        rho[constant] = 0.0
        rows.append({"layer": layer, "spearman": float(rho.mean()) if rho.size else float("nan"),
                     "per_image": rho.tolist(), "constant": int(constant.sum())})
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Localisation against a known object.

def peak_centres(maps: np.ndarray) -> np.ndarray:
    """(N, 2) float (y, x): the mean position of the pixels where each map (N, H, W) reaches its maximum. One
    pixel for a map with one maximum; the middle of a plateau (occlusion's maps are flat over each stride)."""
    maps = np.asarray(maps)
    out = np.empty((len(maps), 2))
    for i, m in enumerate(maps):
        ys, xs = np.nonzero(m == m.max())
        out[i] = ys.mean(), xs.mean()
    return out


def pointing_game(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N,) bool: a hit where the map's maximum (`peak_centres`, rounded to the pixel) lies on the object's mask
    (N, H, W, True on the object). A constant map points nowhere and misses."""
    maps, masks = np.asarray(maps), np.asarray(masks, dtype=bool)
    centres = np.rint(peak_centres(maps)).astype(np.int64)
    hits = masks[np.arange(len(maps)), centres[:, 0], centres[:, 1]]
    varied = np.ptp(maps.reshape(len(maps), -1), axis=1) > 0
    return hits & varied


def mass_inside(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N,) the share of each map's sum (maps >= 0) that lies on the object; 0 for an all-zero map. A map
    spread evenly scores the object's share of the area."""
    maps = np.asarray(maps, dtype=np.float64)
    total = maps.sum(axis=(1, 2))
    inside = (maps * np.asarray(masks, dtype=bool)).sum(axis=(1, 2))
    return np.divide(inside, total, out=np.zeros_like(total), where=total > 0)


# ---------------------------------------------------------------------------------------------------------------
# Faithfulness: deletion and insertion.

def random_maps(count: int, side: int, seed: int = 0, grid: int | None = None) -> np.ndarray:
    """(count, side, side) uniform random maps: the baseline a map has to beat. Every pixel its own value (pixels
    ranked at random), or with `grid`, a grid x grid of values resized bilinearly to the side: random regions as
    smooth as a Grad-CAM map from a layer of that side, so that deleting in their order removes blobs rather than
    scattered pixels (which perturb an image more than its blobs do)."""
    rng = np.random.default_rng(seed)
    if grid is None:
        return rng.random((count, side, side)).astype(np.float32)
    coarse = torch.from_numpy(rng.random((count, 1, grid, grid)))
    return F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)[:, 0].float().numpy()


def pixel_ranks(saliency: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H * W,) each pixel's place in the map's order, 0 for its highest value; ties in random order (a flat
    region, such as Grad-CAM's zeros, is not taken row by row from the top)."""
    flat = np.asarray(saliency, dtype=np.float64).ravel()
    order = np.lexsort((rng.permutation(flat.size), -flat))  # by value, high first; then the random key
    ranks = np.empty(flat.size, dtype=np.int64)
    ranks[order] = np.arange(flat.size)
    return ranks


def perturbation_curves(probabilities: Probabilities, images: np.ndarray, targets: Sequence[int],
                        maps: np.ndarray, fill: np.ndarray, insert: bool, steps: int = 32, seed: int = 0,
                        batch_size: int = 256) -> np.ndarray:
    """(N, steps + 1): the target class's probability after 0, 1/steps, ..., all of the pixels were changed in
    the map's order: deleted (set to `fill`) or, with `insert`, copied from the image onto one all `fill`."""
    images = np.ascontiguousarray(images)
    n, side = len(images), images.shape[1]
    pixels = side * side
    counts = np.rint(np.arange(steps + 1) * pixels / steps).astype(np.int64)  # pixels changed after each step
    rng = np.random.default_rng(seed)
    targets = np.asarray(targets, dtype=np.int64)
    curves = np.empty((n, steps + 1))
    per_call = max(1, batch_size // (steps + 1))  # images whose whole curve goes through one call
    for start in range(0, n, per_call):
        chunk = range(start, min(start + per_call, n))
        copies = []
        for i in chunk:
            changed = pixel_ranks(maps[i], rng)[None, :] < counts[:, None]  # (steps + 1, pixels)
            keep = ~changed if not insert else changed
            flat = np.where(keep[..., None], images[i].reshape(1, pixels, 3), fill.reshape(1, 1, 3))
            copies.append(flat.reshape(steps + 1, side, side, 3).astype(np.uint8))
        probs = np.asarray(probabilities(np.concatenate(copies)), dtype=np.float64)
        probs = probs.reshape(len(chunk), steps + 1, -1)
        curves[start:start + len(chunk)] = probs[np.arange(len(chunk)), :, targets[chunk.start:chunk.stop]]
    return curves


def deletion_curves(probabilities: Probabilities, images: np.ndarray, targets: Sequence[int], maps: np.ndarray,
                    fill: np.ndarray, steps: int = 32, seed: int = 0, batch_size: int = 256) -> np.ndarray:
    """(N, steps + 1) probabilities as the map's highest-ranked pixels are set to `fill` first (a faithful map
    makes this fall fast: a low area under it)."""
    return perturbation_curves(probabilities, images, targets, maps, fill, False, steps, seed, batch_size)


def insertion_curves(probabilities: Probabilities, images: np.ndarray, targets: Sequence[int], maps: np.ndarray,
                     fill: np.ndarray, steps: int = 32, seed: int = 0, batch_size: int = 256) -> np.ndarray:
    """(N, steps + 1) probabilities as the image's pixels are put back onto an image all `fill`, the map's
    highest-ranked first (a faithful map makes this rise fast: a high area under it)."""
    return perturbation_curves(probabilities, images, targets, maps, fill, True, steps, seed, batch_size)


def curve_auc(curves: np.ndarray) -> np.ndarray:
    """(N,) the area under each curve (N, steps + 1) over the fraction of pixels changed, 0 to 1 (trapezoids)."""
    curves = np.asarray(curves, dtype=np.float64)
    steps = curves.shape[1] - 1
    return (curves[:, 1:] + curves[:, :-1]).sum(axis=1) / (2 * steps)


# ---------------------------------------------------------------------------------------------------------------
# Maps of any loaded model, as `alexnet explain` makes them.

def explain_model(loaded: LoadedModel, images: np.ndarray, targets: Sequence[int], method: str,
                  network: nn.Module | None = None, layer: str | None = None) -> np.ndarray:
    """(N, S, S) maps of `method` ("gradcam", "gradcam++", "occlusion") over uint8 images (N, S, S, 3) as
    `alexnet explain` makes them: the default patch and stride, Grad-CAM on `layer` (default the last
    convolution), the run's normalisation and test-time views. `network` replaces the loaded one (a randomised
    copy), everything else kept."""
    if network is not None:
        loaded = replace(loaded, model=network)
    if method == "occlusion":
        return occlusion_maps(model_probabilities(loaded), images, targets, fill_colour(loaded.spec.mean))
    return input_maps(loaded, images, targets, layer, method)


def model_probabilities(loaded: LoadedModel) -> Probabilities:
    """uint8 images -> class probabilities, as `alexnet predict` computes them (fp32, the run's views)."""
    return lambda images: image_probabilities(loaded, images)
