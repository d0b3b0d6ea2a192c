"""Explanation panels of the report: where, in the images the report shows, the model found the evidence for
the class it predicted and for the true class. The example gallery draws them beside each image
(`gallery.plot_examples`); the most confused pair gets a picture of its own here.

The report layer takes plain data: the maps come from an `Explainer` whose `maps(images, targets)` the caller
supplies (`reports.build` wires Grad-CAM on the run's model through `alexnet.saliency`, the code `alexnet explain`
runs). Only the images already shown are explained, each (image, class) once and all in one call: a report asks
for at most 16 examples x 2 classes + 6 pair images x 2 classes maps, whatever the size of the split.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alexnet.reports.gallery import _fig_frac, _show_image, draw_map_key, show_map
from alexnet.reports.plots import CORRECT, DPI, INK, MUTED, WRONG, format_percent, new_figure, save_figure, styled

__all__ = ["Explainer", "ShownMaps", "examples_note", "explain_shown", "pair_caption", "plot_pair_maps"]


@dataclass(frozen=True)
class Explainer:
    """How a report explains images: ``maps(images, targets)`` takes uint8 images (N, H, W, 3) and class indices
    (N,) and returns one map per image, (N, H, W) in [0, 1]; the rest names what the maps are, for the captions."""

    maps: Callable[[np.ndarray, np.ndarray], np.ndarray]
    method: str  # "Grad-CAM"
    layer: str  # the module explained, e.g. "features.relu5"
    grid: int | None = None  # the side of that layer's feature maps: how coarse a map is
    input_side: int | None = None  # the network's input side in pixels
    views: int = 1  # test-time views the maps are averaged over

    @property
    def label(self) -> str:
        return f"{self.method} at {self.layer}"


@dataclass(frozen=True)
class ShownMaps:
    """Maps of the images a report shows, each (N, H, W): for every image, its predicted class's map and its true
    class's map (the same map when the prediction is right)."""

    examples: tuple[np.ndarray, np.ndarray]
    pair: tuple[np.ndarray, np.ndarray]


def explain_shown(explainer: Explainer, images_of: Callable[[np.ndarray], np.ndarray], examples: np.ndarray,
                  pair: np.ndarray, pred: np.ndarray, labels: np.ndarray) -> ShownMaps:
    """The maps of the gallery's `examples` and of the most confused pair's images (dataset indices), for their
    predicted (`pred`) and true (`labels`) classes; `images_of(indices)` gives the images as the report draws them."""
    keys = sorted({(int(i), int(c)) for i in (*examples, *pair) for c in (pred[i], labels[i])})
    idx = np.asarray([i for i, _ in keys], dtype=np.int64)
    images = np.asarray(images_of(idx))
    maps = np.asarray(explainer.maps(images, np.asarray([c for _, c in keys], dtype=np.int64)), dtype=np.float32)
    if maps.shape != (len(keys), *images.shape[1:3]):
        raise ValueError(f"the explainer gave maps of shape {maps.shape} for images {images.shape}")
    found = dict(zip(keys, maps))
    empty = np.zeros((0, *images.shape[1:3]), dtype=np.float32)

    def of(indices: np.ndarray, classes: np.ndarray) -> np.ndarray:
        return np.stack([found[(int(i), int(classes[i]))] for i in indices]) if len(indices) else empty

    return ShownMaps((of(examples, pred), of(examples, labels)), (of(pair, pred), of(pair, labels)))


def examples_note(explainer: Explainer) -> str:
    """What the gallery's map panels are, for its caption."""
    return (f"Beside each image: the {explainer.method} map (layer {explainer.layer}, {_views(explainer)}) of the "
            "predicted class and, for a mistake, of the true class; red marks where the evidence for that class lies, "
            "blue none, each map scaled to its own maximum.")


def pair_caption(explainer: Explainer, true: str, pred: str, count: int, shown: int) -> tuple[str, str]:
    """The title and caption of the most confused pair's picture: what its maps show, and what they cannot."""
    side = explainer.input_side
    coarse = ""
    if explainer.grid and side:
        coarse = (f" The layer sees the {side} px input as a {explainer.grid}\u00d7{explainer.grid} grid, each cell "
                  f"about {side / explainer.grid:.0f} px wide, smoothly enlarged: a map places the evidence to "
                  "within a cell, not to a pixel, an edge or a small part.")
    caption = (f"The {shown} most confident of the {count:,} {true} images taken for {pred}. Under each image, the "
               f"{explainer.method} map (layer {explainer.layer}, the last convolution's rectified maps; {_views(explainer)}) of the "
               f"predicted class, {pred}, and of the true class, {true}: red where the features that raise that "
               "class's score lie, blue where none do. Each map is scaled to its own maximum, so colours compare "
               f"places within a map, not one map with another.{coarse} The maps do not say what the evidence is "
               "(shape, texture, colour or background), nor that hiding it would change the answer: alexnet explain "
               "--method occlusion measures that.")
    return "Most confused pair, explained", caption


def _views(explainer: Explainer) -> str:
    if explainer.views > 1:
        return f"averaged over the run's {explainer.views} test-time views, as alexnet explain does"
    return "on the image alone, as the run predicts"


def plot_pair_maps(images: np.ndarray, pred_maps: np.ndarray, true_maps: np.ndarray, pred_probs: np.ndarray,
                   true: str, pred: str, count: int, label: str, path: str | os.PathLike[str]) -> Path:
    """One column per mistake of the pair (true class ``true`` predicted as ``pred``, ``count`` times): the image
    with the predicted class's probability, its map for ``pred``, its map for ``true``. ``label``: method and layer."""
    images = np.asarray(images)
    n = len(images)
    if not n or len(pred_maps) != n or len(true_maps) != n or len(pred_probs) != n:
        raise ValueError(f"{n} images, {len(pred_maps)} and {len(true_maps)} maps, {len(pred_probs)} probabilities")
    label_w, side, gap, row_gap, pad, head, col_head = 1.6, 1.2, 0.1, 0.12, 0.2, 0.95, 0.28
    fig_w = max(pad + label_w + n * (side + gap) + pad, 7.0)
    fig_h = head + col_head + 3 * (side + row_gap) + 0.05
    rows: Sequence[tuple[str, str]] = (("image", INK), (f"map of {pred[:18]}\n(predicted)", WRONG),
                                       (f"map of {true[:18]}\n(true class)", CORRECT))
    with styled():
        fig = new_figure(fig_w, fig_h)
        fig.text(pad / fig_w, 1 - 0.18 / fig_h, f"Most confused pair: {true[:24]} \u2192 {pred[:24]} "
                 f"({count:,} mistakes)", fontsize=12, fontweight="bold", va="top")
        draw_map_key(fig, pad, 0.62, f"{label}; the {n} most confident of these mistakes")
        for r, (name, colour) in enumerate(rows):
            top = head + col_head + r * (side + row_gap)
            fig.text(pad / fig_w, 1 - (top + side / 2) / fig_h, name, fontsize=9, fontweight="bold", color=colour,
                     va="center")
        px = int(side * DPI)
        for c in range(n):
            left = pad + label_w + c * (side + gap)
            axes = [fig.add_axes(_fig_frac(fig, left, head + col_head + r * (side + row_gap), side, side))
                    for r in range(3)]
            _show_image(axes[0], images[c], px, WRONG)
            axes[0].set_title(f"{pred[:12]} {format_percent(pred_probs[c], 1)}", fontsize=8, color=MUTED,
                              loc="center", fontweight="normal", pad=3)
            show_map(axes[1], images[c], pred_maps[c], px, WRONG)
            show_map(axes[2], images[c], true_maps[c], px, CORRECT)
        return save_figure(fig, path)
