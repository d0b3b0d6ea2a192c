"""Report charts: training curves and the confusion matrix, plus the shared style.

Every function takes plain data (lists of dicts, numpy arrays), writes one PNG
atomically and returns its path. Figures are built with matplotlib's object API
(``Figure`` + ``FigureCanvasAgg``) rather than pyplot: nothing can open a
window, nothing lingers in pyplot's global figure registry between calls, and
it works the same on a headless server.

The palette and the small figure/save helpers defined here are shared with
``gallery.py`` so that "correct" and "wrong" look the same in every picture.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from ..atomic import atomic_write

# Shared palette (also used by gallery.py and the HTML page).
CORRECT = "#2a9d8f"
WRONG = "#e76f51"
TRAIN = "#3a6ea5"
VAL = "#f28e2b"
LR = "#8a8f98"
INK = "#1f2933"
MUTED = "#6b7280"
DPI = 110

_RC: dict[str, Any] = {
    "font.family": "DejaVu Sans",  # ships with matplotlib: same look on every machine
    "font.size": 9,
    "axes.titlesize": 10.5,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.labelsize": 9,
    "axes.labelcolor": INK,
    "axes.edgecolor": "#9aa0a6",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#e6e8eb",
    "grid.linewidth": 0.8,
    "xtick.color": "#4b5563",
    "ytick.color": "#4b5563",
    "legend.frameon": False,
    "legend.fontsize": 8.5,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "text.color": INK,
}


def format_percent(x: float | None, decimals: int = 2) -> str:
    """Format a fraction 0..1 as a percentage ("77.34%"); None/NaN become an em dash."""
    if x is None or not math.isfinite(float(x)):
        return "\u2014"
    return f"{float(x):.{decimals}%}"


def write_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write bytes to ``path`` so that readers (a browser refreshing the report, a CI artifact upload) never
    see a half-written file (`alexnet.atomic.atomic_write`)."""
    path = Path(path)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return path


@contextlib.contextmanager
def styled() -> Iterator[None]:
    """Apply the report's matplotlib style for the duration of the block only."""
    with matplotlib.rc_context(_RC):
        yield


def new_figure(width_in: float, height_in: float, **kwargs: Any) -> Figure:
    """A pyplot-free figure with an Agg canvas attached (call inside ``styled()``)."""
    fig = Figure(figsize=(width_in, height_in), dpi=DPI, **kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike[str], *, tight: bool = False) -> Path:
    """Render ``fig`` to PNG in memory, then write it atomically.

    ``tight`` crops/extends the canvas to the drawn content, for figures whose
    label sizes are only known at draw time.
    """
    buf = io.BytesIO()
    extra: dict[str, Any] = {"bbox_inches": "tight", "pad_inches": 0.15} if tight else {}
    fig.savefig(buf, format="png", dpi=DPI, **extra)
    return write_atomic(path, buf.getvalue())


def _column(rows: Sequence[dict[str, Any]], key: str, scale: float = 1.0) -> np.ndarray:
    """One history field as floats; None, missing and inf become NaN (gaps in the line)."""
    out = np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows]) * scale
    out[~np.isfinite(out)] = np.nan
    return out


def format_duration(seconds: float | None) -> str:
    """Human duration: 45.2s, 12m 05s, 1h 02m; None/NaN become an em dash."""
    if seconds is None or not math.isfinite(float(seconds)):
        return "\u2014"
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m}m {s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m"


def plot_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Plot accuracy, loss and learning rate per epoch; mark the best validation epoch.

    ``history`` rows: epoch (1-based), train_loss, train_acc, val_loss, val_acc
    (fractions; val_* may be None/NaN), lr, seconds, images_per_s.
    """
    if not history:
        raise ValueError("plot_curves needs at least one history row")
    rows = sorted(history, key=lambda r: int(r["epoch"]))
    ep = np.array([int(r["epoch"]) for r in rows])
    tr_acc, va_acc = _column(rows, "train_acc", 100), _column(rows, "val_acc", 100)
    tr_loss, va_loss = _column(rows, "train_loss"), _column(rows, "val_loss")
    lr = _column(rows, "lr")
    has_lr = bool(np.isfinite(lr).any())
    # Markers keep a 1-epoch (or short) run visible; on long runs they are noise.
    mk: dict[str, Any] = {"marker": "o", "markersize": 3.5} if len(ep) <= 40 else {}

    with styled():
        ratios = [3, 3, 1.2] if has_lr else [3, 3]
        fig = new_figure(9, 7.2 if has_lr else 6.2, layout="constrained")
        axes = fig.subplots(len(ratios), 1, sharex=True, gridspec_kw={"height_ratios": ratios})
        ax_acc, ax_loss = axes[0], axes[1]

        for ax, tr, va, name in ((ax_acc, tr_acc, va_acc, "accuracy"), (ax_loss, tr_loss, va_loss, "loss")):
            fmt = format_percent if name == "accuracy" else (lambda v: f"{v:.4f}")
            scale = 100 if name == "accuracy" else 1
            if np.isfinite(tr).any():
                last = tr[np.isfinite(tr)][-1]
                ax.plot(ep, tr, color=TRAIN, lw=2, label=f"train (last {fmt(last / scale)})", **mk)
            if np.isfinite(va).any():
                # Runs with --val-every N validate some epochs only: join the validated ones, always marked.
                seen = np.isfinite(va)
                last = va[seen][-1]
                ax.plot(ep[seen], va[seen], color=VAL, lw=2, label=f"val (last {fmt(last / scale)})",
                        **(mk if seen.all() else {"marker": "o", "markersize": 3.5}))
            ax.set_ylabel(name)

        ax_acc.set_title("Accuracy", pad=8)
        ax_acc.yaxis.set_major_formatter(PercentFormatter(xmax=100, decimals=0))
        acc_all = np.concatenate([tr_acc, va_acc])
        if np.isfinite(acc_all).any():
            lo, hi = np.nanmin(acc_all), np.nanmax(acc_all)
            pad = max(2.0, 0.1 * (hi - lo))
            ax_acc.set_ylim(max(0.0, lo - pad), min(102.0, hi + pad))
        # Opaque legends: they may sit on top of the best-epoch line.
        legend_kw: dict[str, Any] = {"frameon": True, "facecolor": "white", "edgecolor": "none", "framealpha": 0.9}
        ax_acc.legend(loc="lower right", **legend_kw)

        ax_loss.set_title("Loss", pad=8)
        loss_all = np.concatenate([tr_loss, va_loss])
        finite = loss_all[np.isfinite(loss_all)]
        # Loss often spans decades (2.3 -> 0.01); a log axis keeps the tail readable.
        if finite.size and finite.min() > 0 and finite.max() / finite.min() > 20:
            ax_loss.set_yscale("log")
        ax_loss.legend(loc="upper right", **legend_kw)

        if has_lr:
            ax_lr = axes[2]
            ax_lr.plot(ep, lr, color=LR, lw=1.5, drawstyle="steps-mid", **mk)
            fin = lr[np.isfinite(lr)]
            if fin.min() > 0 and fin.max() / fin.min() > 10:
                ax_lr.set_yscale("log")
            else:
                ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
            ax_lr.set_ylabel("learning rate")
        axes[-1].set_xlabel("epoch")
        if len(ep) <= 12:
            axes[-1].set_xticks(ep)  # MaxNLocator falls back to fractional ticks for 1-2 epochs
        else:
            axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
        span = float(ep[-1] - ep[0])
        margin = max(0.4, 0.02 * span)
        axes[-1].set_xlim(ep[0] - margin, ep[-1] + margin)

        if np.isfinite(va_acc).any():
            b = int(np.nanargmax(va_acc))
            for ax in axes:
                ax.axvline(ep[b], color=CORRECT, ls="--", lw=1.1, zorder=1)
            ax_acc.plot([ep[b]], [va_acc[b]], marker="*", ms=12, color=CORRECT, zorder=5)
            # Put the label on whichever side of the star has more room.
            right_side = span == 0 or (ep[b] - ep[0]) / span < 0.6
            y0, y1 = ax_acc.get_ylim()
            below = (va_acc[b] - y0) / (y1 - y0) > 0.5
            ax_acc.annotate(
                f"best val {format_percent(va_acc[b] / 100)}\nepoch {ep[b]}",
                xy=(ep[b], va_acc[b]), xytext=(10 if right_side else -10, -14 if below else 14),
                textcoords="offset points", ha="left" if right_side else "right",
                va="top" if below else "bottom",
                fontsize=8.5, color=INK,
                bbox={"boxstyle": "round,pad=0.3", "fc": "white", "ec": CORRECT, "lw": 0.8, "alpha": 0.95},
            )
        else:
            ax_acc.text(0.01, 0.97, "no validation set", transform=ax_acc.transAxes,
                        va="top", color=MUTED, fontsize=8.5)

        secs = _column(rows, "seconds")
        ips = _column(rows, "images_per_s")
        summary = [f"{len(ep)} epoch{'s' if len(ep) != 1 else ''}"]
        if np.isfinite(secs).any():
            summary.append(format_duration(float(np.nansum(secs))))
        if np.isfinite(ips).any():
            summary.append(f"{np.nanmean(ips):,.0f} img/s")
        ax_acc.set_title("  \u00b7  ".join(summary), loc="right", fontsize=8.5,
                         fontweight="normal", color=MUTED, pad=8)
        return save_figure(fig, path)


def _cluster_order(cm: np.ndarray) -> np.ndarray:
    """Order classes so that classes confused with each other end up adjacent.

    Greedy seriation: walk the class pairs from most to least confused (both
    directions summed) and join them into chains, never giving a class more than
    two neighbours or closing a loop. The strongest confusions are therefore
    always side by side; chains are then laid out by their first class index.
    """
    c = cm.shape[0]
    s = (cm + cm.T).astype(np.int64)
    iu, ju = np.triu_indices(c, 1)
    w = s[iu, ju]
    keep = w > 0
    iu, ju, w = iu[keep], ju[keep], w[keep]
    root = list(range(c))

    def find(x: int) -> int:
        while root[x] != x:
            root[x] = root[root[x]]
            x = root[x]
        return x

    neighbours: list[list[int]] = [[] for _ in range(c)]
    for e in np.argsort(-w, kind="stable").tolist():
        a, b = int(iu[e]), int(ju[e])
        if len(neighbours[a]) == 2 or len(neighbours[b]) == 2 or find(a) == find(b):
            continue
        root[find(a)] = find(b)
        neighbours[a].append(b)
        neighbours[b].append(a)
    order: list[int] = []
    seen = [False] * c
    for start in range(c):  # every chain is a path, so it has an end with < 2 neighbours
        if seen[start] or len(neighbours[start]) == 2:
            continue
        prev, cur = -1, start
        while cur != -1:
            order.append(cur)
            seen[cur] = True
            nxt = [n for n in neighbours[cur] if n != prev]
            prev, cur = cur, (nxt[0] if nxt else -1)
    return np.asarray(order, dtype=np.int64)


def _short(name: str, limit: int = 18) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "\u2026"


def plot_confusion(
    cm: np.ndarray,
    classes: Sequence[str],
    path: str | os.PathLike[str],
    *,
    reorder: bool | None = None,
) -> Path:
    """Heatmap of the row-normalised confusion matrix (rows = true class).

    Up to 20 classes every cell shows its count and row percentage. Above that
    cells are colour only and tick labels shrink (every k-th label when they
    cannot all fit). ``reorder`` (default: when there are more than 50 classes)
    sorts classes so that mutually confused classes sit together.
    """
    cm = np.asarray(cm, dtype=np.int64)
    c = cm.shape[0]
    if cm.shape != (c, c) or len(classes) != c:
        raise ValueError(f"confusion matrix {cm.shape} does not match {len(classes)} classes")
    total = int(cm.sum())
    acc = np.trace(cm) / total if total else float("nan")
    if reorder is None:
        reorder = c > 50
    perm = _cluster_order(cm) if reorder and c > 2 else np.arange(c)
    m = cm[np.ix_(perm, perm)]
    names = [_short(str(classes[i])) for i in perm]
    row = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, row, out=np.zeros(m.shape), where=row > 0)
    annotate = c <= 20

    with styled():
        if annotate:
            cell = 0.62 if c <= 10 else 0.5
            side = max(3.0, c * cell)
        else:
            side = min(12.0, max(6.0, 0.11 * c))
        # Fixed square axes + explicit colorbar axes; a tight bbox at save time then
        # fits the (long, rotated) class names. Constrained layout mis-places the
        # y label of equal-aspect axes, so it is not used here.
        fw, fh = side + 3.6, side + 2.6
        fig = new_figure(fw, fh)
        ax = fig.add_axes((2.0 / fw, 2.0 / fh, side / fw, side / fh))
        cax = fig.add_axes(((2.3 + side) / fw, (2.0 + 0.1 * side) / fh, 0.16 / fw, 0.8 * side / fh))
        ax.grid(False)
        # sqrt colour scale: small confusions stay visible next to a dark diagonal.
        norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)
        im = ax.imshow(frac, cmap="Blues", norm=norm, interpolation="nearest", aspect="equal")
        for sp in ax.spines.values():
            sp.set_visible(False)

        cell_pt = side * 72 / c
        if annotate:
            fs_tick = 9.0
            step = 1
            text_fs = 8.0 if c <= 10 else (6.5 if c <= 15 else 5.5)
            for i in range(c):
                for j in range(c):
                    if m[i, j] == 0:
                        ax.text(j, i, "0", ha="center", va="center", fontsize=text_fs, color="#b8bec6")
                        continue
                    dark = norm(frac[i, j]) > 0.6
                    ax.text(j, i, f"{m[i, j]:,}\n{frac[i, j]:.0%}", ha="center", va="center",
                            fontsize=text_fs, color="white" if dark else INK, linespacing=1.15)
            # Thin white separators between cells.
            ax.set_xticks(np.arange(c + 1) - 0.5, minor=True)
            ax.set_yticks(np.arange(c + 1) - 0.5, minor=True)
            ax.grid(which="minor", color="white", linewidth=1.2)
            ax.tick_params(which="minor", length=0)
        else:
            fs_tick = float(np.clip(cell_pt * 0.75, 4.5, 8.0))
            step = max(1, math.ceil(fs_tick * 1.15 / cell_pt))  # label every k-th class if they'd overlap
        ticks = np.arange(0, c, step)
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
        ax.set_xticklabels([names[i] for i in ticks], fontsize=fs_tick,
                           rotation=45 if annotate else 90, ha="right" if annotate else "center",
                           rotation_mode="anchor" if annotate else "default")
        ax.set_yticklabels([names[i] for i in ticks], fontsize=fs_tick)
        ax.tick_params(length=2 if not annotate else 3)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        title = f"Confusion matrix \u2014 accuracy {format_percent(acc)} on {total:,} samples"
        notes = []
        if reorder and c > 2:
            notes.append("classes ordered so that confused classes sit together")
        if step > 1:
            notes.append(f"every {step}th class labelled")
        ax.set_title(title, pad=24 if notes else 10)
        if notes:
            ax.text(0, 1.01, "; ".join(notes), transform=ax.transAxes, fontsize=8, color=MUTED, va="bottom")
        cb = fig.colorbar(im, cax=cax)
        cb.ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
        cb.set_ticks([0, 0.05, 0.25, 0.5, 0.75, 1.0])
        cb.set_label("share of the true class (row %)")
        cb.outline.set_visible(False)
        return save_figure(fig, path, tight=True)
