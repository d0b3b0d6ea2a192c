"""Report pictures made of image tiles: example predictions, confused pairs, first-layer filters.

Images arrive as uint8 arrays (N, H, W, 3); small ones (CIFAR's 32x32) are
upscaled by an integer factor with nearest-neighbour so pixels stay sharp
squares instead of a blurry smear. Saliency maps (H, W) in [0, 1] are drawn
blended on their image with the colours of `alexnet explain --out`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from alexnet.reports.plots import CORRECT, DPI, INK, MUTED, WRONG, format_percent, new_figure, save_figure, styled
from alexnet.saliency.overlay import COLORMAP, blend

_OTHER = "#b8c0cc"  # bars for classes that are neither the truth nor a wrong prediction


def select_examples(probs: np.ndarray, labels: np.ndarray, n: int = 16, seed: int = 0) -> np.ndarray:
    """Pick up to ``n`` sample indices worth looking at, reproducibly for a given seed.

    Roughly a third each of: confident correct predictions, confident mistakes,
    and close calls (smallest gap between the top two probabilities). The
    confident groups are drawn at random (seeded) from the most confident
    candidates, so the page is not always the same handful of trivial images.
    When a group runs short (e.g. 100% accuracy: no mistakes) the rest is filled
    with close calls. Returned in group order, without duplicates;
    ``min(n, N)`` indices.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    total = probs.shape[0]
    if total == 0 or n <= 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    if probs.shape[1] > 1:
        part = np.partition(probs, -2, axis=1)
        margin = part[:, -1] - part[:, -2]
    else:
        margin = np.ones(total)
    by_conf = np.argsort(-conf, kind="stable")
    third = n // 3

    def confident(mask: np.ndarray, quota: int) -> list[int]:
        pool = by_conf[mask[by_conf]][: 3 * quota]  # the 3*quota most confident of this kind
        take = min(quota, pool.size)
        picked = rng.choice(pool, size=take, replace=False) if take else pool[:0]
        return sorted(picked.tolist(), key=lambda j: -conf[j])

    chosen = confident(pred == labels, third) + confident(pred != labels, third)
    taken = set(chosen)
    for j in np.argsort(margin, kind="stable").tolist():  # close calls, then anything left
        if len(chosen) >= min(n, total):
            break
        if j not in taken:
            chosen.append(j)
            taken.add(j)
    return np.asarray(chosen, dtype=np.int64)


def most_confused(cm: np.ndarray, classes: Sequence[str], k: int = 8) -> list[tuple[str, str, int]]:
    """The ``k`` largest off-diagonal cells as (true, predicted, count), count > 0, largest first."""
    cm = np.asarray(cm, dtype=np.int64)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    t, p = np.nonzero(off > 0)
    # Ties broken by class index so the list is deterministic.
    order = np.lexsort((p, t, -off[t, p]))[:k]
    return [(str(classes[t[i]]), str(classes[p[i]]), int(off[t[i], p[i]])) for i in order]


def _upscale(img: np.ndarray, target_px: int) -> tuple[np.ndarray, str]:
    """Integer nearest-neighbour upscale to at least ``target_px``; large images are
    left alone and drawn antialiased (nearest would alias when shrinking)."""
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    elif img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=2)
    f = math.ceil(target_px / max(img.shape[:2]))
    if f <= 1:
        return img, "antialiased"
    return img.repeat(f, axis=0).repeat(f, axis=1), "nearest"


def _show_image(ax: Axes, img: np.ndarray, target_px: int, frame: str | None) -> None:
    up, interp = _upscale(img, target_px)
    ax.imshow(up, interpolation=interp)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for sp in ax.spines.values():
        sp.set_visible(frame is not None)
        if frame is not None:
            sp.set_color(frame)
            sp.set_linewidth(2.5)


def show_map(ax: Axes, img: np.ndarray, saliency: np.ndarray, target_px: int, frame: str | None) -> None:
    """An image with its (H, W) saliency map blended on, enlarged like the image beside it."""
    img = np.asarray(img)
    if img.shape[:2] != saliency.shape:
        raise ValueError(f"the map is {saliency.shape}, the image {img.shape[:2]}")
    rgb = img if img.ndim == 3 and img.shape[-1] == 3 else np.repeat(img.reshape(*img.shape[:2], 1), 3, axis=2)
    _show_image(ax, blend(rgb, saliency), target_px, frame)


def draw_map_key(fig: Figure, left: float, top: float, text: str) -> None:
    """The maps' colour scale with what they are (method, layer), at ``left``/``top`` inches from the top-left."""
    width = 1.1
    bar = fig.add_axes(_fig_frac(fig, left, top, width, 0.1))
    colorbar = fig.colorbar(ScalarMappable(norm=Normalize(0, 1), cmap=COLORMAP), cax=bar, orientation="horizontal")
    colorbar.set_ticks([0, 1], labels=["none", "most"])
    colorbar.outline.set_visible(False)
    bar.tick_params(labelsize=7, length=2, pad=1)
    fw, fh = fig.get_size_inches()
    fig.text((left + width + 0.12) / fw, 1 - (top + 0.05) / fh, text, fontsize=8.5, color=MUTED, va="center")


def _blank(path: str | os.PathLike[str], message: str) -> Path:
    with styled():
        fig = new_figure(6, 1.4)
        fig.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, color=MUTED)
        return save_figure(fig, path)


def _fig_frac(fig: Figure, left: float, top: float, w: float, h: float) -> tuple[float, float, float, float]:
    """Axes rectangle from inches measured from the figure's top-left corner."""
    fw, fh = fig.get_size_inches()
    return (left / fw, 1 - (top + h) / fh, w / fw, h / fh)


def plot_examples(
    images: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    path: str | os.PathLike[str],
    title: str | None = None,
    *,
    maps: tuple[np.ndarray, np.ndarray] | None = None,
    maps_label: str = "",
) -> Path:
    """Grid of images, each with "true: x / pred: y (p%)" and a top-3 probability bar chart.

    Correct predictions are framed in teal, mistakes in red-orange; in the bars
    the true class is teal and a wrong prediction red-orange. ``maps``: the
    saliency maps (N, H, W) of each image's predicted class and of its true
    class, drawn beside it (one map when the two classes are the same), with
    ``maps_label`` (method and layer) over the colour scale.
    """
    images = np.asarray(images)
    labels = np.asarray(labels).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n = len(images)
    if n == 0:
        return _blank(path, "No examples to show")
    if maps is not None and not all(len(m) == n for m in maps):
        raise ValueError(f"{n} examples but {[len(m) for m in maps]} maps")
    ncols = min(n, 4 if n <= 16 else 6)
    tile_w, img_in, title_h, bar_h, gap_w, gap_h, head = 2.45, 1.75, 0.42, 0.55, 0.22, 0.28, 0.62
    label_h = 0.0
    if maps is not None:  # three panels a tile (image, predicted's map, true's map): fewer, wider tiles
        ncols, img_in, label_h, head = min(n, 3), 1.2, 0.22, 0.95
        tile_w = 3 * img_in + 2 * _PANEL_GAP
    nrows = math.ceil(n / ncols)
    tile_h = title_h + img_in + label_h + 0.08 + bar_h
    fig_w = ncols * tile_w + (ncols + 1) * gap_w
    if maps is not None:
        fig_w = max(fig_w, 8.0)  # room for the title, the legend and the maps' key over one or two tiles
    fig_h = head + nrows * (tile_h + gap_h)
    topk = min(3, probs.shape[1])

    with styled():
        fig = new_figure(fig_w, fig_h)
        fig.text(gap_w / fig_w, 1 - 0.18 / fig_h, title or "Example predictions", fontsize=12,
                 fontweight="bold", va="top")
        fig.legend(handles=[Patch(color=CORRECT, label="correct / true class"),
                            Patch(color=WRONG, label="wrong prediction")],
                   loc="upper right", bbox_to_anchor=(1 - gap_w / fig_w, 1 - 0.1 / fig_h), ncol=2,
                   fontsize=8.5, handlelength=1.2)
        if maps is not None:
            draw_map_key(fig, gap_w, 0.62, f"heatmaps: {maps_label}, of the predicted and of the true class")
        for k in range(n):
            r, c = divmod(k, ncols)
            left = gap_w + c * (tile_w + gap_w)
            top = head + r * (tile_h + gap_h)
            p = probs[k]
            true, pred = int(labels[k]), int(p.argmax())
            ok = true == pred
            colour = CORRECT if ok else WRONG
            if maps is not None:
                ax = _map_panels(fig, left, top + title_h, img_in, images[k], maps[0][k], maps[1][k],
                                 str(classes[pred]), str(classes[true]), colour)
            else:
                ax = fig.add_axes(_fig_frac(fig, left + (tile_w - img_in) / 2, top + title_h, img_in, img_in))
                _show_image(ax, images[k], int(img_in * DPI), colour)
            text = f"true: {classes[true]} / pred: {classes[pred]} ({format_percent(p[pred], 1)})"
            if len(text) > 34:  # two lines rather than running into the neighbour
                text = text.replace(" / ", "\n")
            ax.set_title(text, fontsize=8.5, color=colour, loc="center", fontweight="bold", pad=4)

            bx = fig.add_axes(_fig_frac(fig, left, top + title_h + img_in + label_h + 0.08, tile_w, bar_h))
            order = np.argsort(-p, kind="stable")[:topk]
            for y, j in enumerate(order):
                fill = CORRECT if j == true else (WRONG if j == pred else _OTHER)
                # The bar track ends at 0.8 so the percentage sits on white, not on the fill.
                bx.barh(y, 0.8, color="#f1f3f5", height=0.78)
                bx.barh(y, 0.8 * p[j], color=fill, alpha=0.55, height=0.78)
                bx.text(0.015, y, str(classes[j])[:22], va="center", ha="left", fontsize=7.5, color=INK)
                bx.text(1.0, y, format_percent(p[j], 1), va="center", ha="right", fontsize=7.5, color=INK)
            bx.set_xlim(0, 1)
            bx.set_ylim(topk - 0.5, -0.5)
            bx.set_axis_off()
        return save_figure(fig, path)


_PANEL_GAP = 0.08  # inches between the panels of one example


def _map_panels(fig: Figure, left: float, top: float, side: float, image: np.ndarray, pred_map: np.ndarray,
                true_map: np.ndarray, pred: str, true: str, colour: str) -> Axes:
    """One example as three panels: the image, the predicted class's map, the true class's map (for a correct
    prediction the one map, and a note in the third place). Returns the middle axes, which carries the title."""
    axes = [fig.add_axes(_fig_frac(fig, left + i * (side + _PANEL_GAP), top, side, side)) for i in range(3)]
    px = int(side * DPI)
    _show_image(axes[0], image, px, colour)
    show_map(axes[1], image, pred_map, px, colour)
    names = ["image", f"map: {pred[:14]} (pred)", f"map: {true[:14]} (true)"]
    if pred == true:
        names[1:] = [f"map: {true[:14]} (pred = true)", ""]
        axes[2].set_axis_off()
        axes[2].text(0.5, 0.5, "prediction is\nthe true class", ha="center", va="center", fontsize=7.5, color=MUTED,
                     transform=axes[2].transAxes)
    else:
        show_map(axes[2], image, true_map, px, CORRECT)
    for ax, name in zip(axes, names):
        ax.text(0.5, -0.04, name, ha="center", va="top", fontsize=7.5, color=INK, transform=ax.transAxes)
    return axes[1]


def plot_confused_pairs(
    pairs: Sequence[tuple[str, str, int]],
    thumbs: Mapping[tuple[str, str], np.ndarray],
    path: str | os.PathLike[str],
    *,
    reverse_counts: Mapping[tuple[str, str], int] | None = None,
    max_thumbs: int = 6,
) -> Path:
    """One row per confused pair: "cat → dog: 123" and up to ``max_thumbs`` of those images.

    ``pairs`` is the output of :func:`most_confused`; ``thumbs[(true, pred)]``
    holds uint8 images (M, H, W, 3) of that mistake. ``reverse_counts[(true,
    pred)]`` is the count of the opposite mistake (pred → true), shown under
    the label when given. With no pairs a PNG saying so is written.
    """
    if not pairs:
        return _blank(path, "No confusions: every sample was classified correctly")
    reverse_counts = reverse_counts or {}
    label_w, th, tgap, row_h, pad, head = 2.5, 0.92, 0.08, 1.12, 0.2, 0.62
    fig_w = pad + label_w + max_thumbs * (th + tgap) + pad
    fig_h = head + len(pairs) * row_h + 0.1
    with styled():
        fig = new_figure(fig_w, fig_h)
        fig.text(pad / fig_w, 1 - 0.18 / fig_h, "Most confused pairs", fontsize=12, fontweight="bold", va="top")
        fig.text(1 - pad / fig_w, 1 - 0.22 / fig_h, "true \u2192 predicted: count", fontsize=8.5,
                 color=MUTED, va="top", ha="right")
        for r, (true, pred, count) in enumerate(pairs):
            top = head + r * row_h
            mid = 1 - (top + th / 2) / fig_h
            fig.text(pad / fig_w, mid + 0.1 / fig_h, f"{true[:16]} \u2192 {pred[:16]}: {count:,}",
                     fontsize=9.5, fontweight="bold", color=WRONG, va="center")
            back = reverse_counts.get((true, pred))
            if back is not None:
                fig.text(pad / fig_w, mid - 0.14 / fig_h, f"{pred[:16]} \u2192 {true[:16]}: {back:,}",
                         fontsize=8.5, color=MUTED, va="center")
            imgs = thumbs.get((true, pred))
            if imgs is None or len(imgs) == 0:
                fig.text((pad + label_w) / fig_w, mid, "(no images)", fontsize=8.5, color=MUTED, va="center")
                continue
            for t, img in enumerate(np.asarray(imgs)[:max_thumbs]):
                ax = fig.add_axes(_fig_frac(fig, pad + label_w + t * (th + tgap), top, th, th))
                _show_image(ax, img, int(th * DPI), WRONG)
        return save_figure(fig, path)


def _grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols) for n tiles: an exact, landscape-ish factorisation if one exists
    (96 -> 8x12, 64 -> 8x8, like Figure 3 of the AlexNet paper), else a near-square grid."""
    root = math.sqrt(n)
    for cols in range(math.ceil(root), n + 1):
        if cols > 2.5 * root:
            break
        if n % cols == 0 and cols / (n // cols) <= 2.5:
            return n // cols, cols
    cols = math.ceil(root)
    return math.ceil(n / cols), cols


def plot_filters(weight: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Show first-layer conv kernels (O, I, kh, kw) as a grid of tiles.

    With 3 input channels each kernel is min/max-normalised on its own and shown
    as RGB; otherwise the channel mean is shown in grayscale.
    """
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim != 4 or w.shape[0] == 0:
        raise ValueError(f"expected conv weights (O, I, kh, kw), got shape {w.shape}")
    o, i, kh, kw = w.shape
    tiles = w.transpose(0, 2, 3, 1) if i == 3 else w.mean(axis=1)[..., None]
    flat = tiles.reshape(o, -1)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    rng = np.where(hi > lo, hi - lo, 1.0)
    tiles = (tiles - lo[:, None, None, None]) / rng[:, None, None, None]
    tiles[hi <= lo] = 0.5  # constant kernel: mid-grey rather than a divide-by-zero
    if i != 3:
        tiles = np.repeat(tiles, 3, axis=3)

    rows, cols = _grid_shape(o)
    gap = 3
    k = max(kh, kw)
    scale = max(1, math.ceil(56 / k))
    while cols * (k * scale + gap) + gap < 520:  # wide enough for the title to fit
        scale += 1
    tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    th, tw = kh * scale, kw * scale
    h_px, w_px = rows * (th + gap) + gap, cols * (tw + gap) + gap
    canvas = np.ones((h_px, w_px, 3))
    for n in range(o):
        r, c = divmod(n, cols)
        y, x = gap + r * (th + gap), gap + c * (tw + gap)
        canvas[y : y + th, x : x + tw] = tiles[n]

    title_px = 52
    with styled():
        fig = new_figure(w_px / DPI, (h_px + title_px) / DPI)
        ax = fig.add_axes((0, 0, 1, h_px / (h_px + title_px)))
        # Pixels are already upscaled by an integer factor, so the axes maps 1:1.
        ax.imshow(canvas, interpolation="nearest")
        ax.set_axis_off()
        top = 1 - 8 / (h_px + title_px)
        fig.text(gap / w_px, top, f"First-layer filters \u00b7 {o} kernels of {i}\u00d7{kh}\u00d7{kw}",
                 fontsize=10.5, fontweight="bold", va="top")
        note = "RGB, each kernel scaled to its own min\u2013max" if i == 3 else \
            "mean over input channels, each kernel scaled to its own min\u2013max"
        fig.text(gap / w_px, top - 20 / (h_px + title_px), note, fontsize=8.5, color=MUTED, va="top")
        return save_figure(fig, path)
