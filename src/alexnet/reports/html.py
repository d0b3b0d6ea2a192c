"""One self-contained HTML page (plus a Markdown twin) describing an evaluated run.

The page embeds every picture as a base64 ``data:`` URI and carries its CSS
inline; it has no scripts and refers to nothing outside itself, so it can be
mailed, attached to a CI run or opened offline. All numbers come from the
``metrics`` dict as given (the output of ``alexnet evaluate --json``); nothing
is recomputed differently here.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from alexnet.jsonio import json_text
from alexnet.metrics import chance_sentence
from alexnet.reports.gallery import most_confused, plot_confused_pairs, plot_examples, plot_filters, select_examples
from alexnet.reports.heatmaps import Explainer, examples_note, explain_shown, pair_caption, plot_pair_maps
from alexnet.reports.plots import (
    format_duration,
    format_percent,
    plot_confusion,
    plot_curves,
    write_atomic,
)

N_EXAMPLES = 16
N_PAIRS = 8
THUMBS_PER_PAIR = 6

_CSS = """
:root{--ink:#1f2933;--muted:#6b7280;--line:#e5e7eb;--bg:#f5f6f8;--card:#fff;--ok:#2a9d8f;--bad:#e76f51;--accent:#3a6ea5}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);
 font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans",sans-serif}
main{max-width:1120px;margin:0 auto;padding:36px 20px 56px}
.eyebrow{text-transform:uppercase;font-size:12px;letter-spacing:.08em;color:var(--accent);font-weight:600}
h1{font-size:30px;line-height:1.2;margin:6px 0 6px;letter-spacing:-.01em;overflow-wrap:anywhere}
.sub{color:var(--muted);margin:0}
.stats{display:grid;grid-template-columns:repeat(auto-fit,minmax(210px,1fr));gap:16px;margin:26px 0 20px}
.stat{background:var(--card);border:1px solid var(--line);border-radius:14px;padding:18px 22px}
.stat .label{font-size:13px;color:var(--muted);font-weight:500}
.stat .value{font-size:36px;font-weight:700;line-height:1.15;margin:6px 0 2px;font-variant-numeric:tabular-nums}
.stat.primary .value{color:var(--ok)}
.stat .hint{font-size:12.5px;color:var(--muted)}
.stat.alarm .value{color:#b42318}
.warning{background:#fef3f2;border:1px solid #fda29b;color:#7a271a;border-radius:10px;padding:12px 16px;margin:0 0 16px}
.card{background:var(--card);border:1px solid var(--line);border-radius:14px;padding:22px 26px;margin:0 0 20px;
 box-shadow:0 1px 2px rgba(16,24,40,.04)}
.card h2{font-size:19px;margin:0 0 14px}
.card h2 small{font-weight:400;color:var(--muted);font-size:14px;margin-left:6px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:22px 28px}
h3{font-size:12.5px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted);margin:0 0 8px}
table{border-collapse:collapse;width:100%;font-size:14px;font-variant-numeric:tabular-nums}
th,td{padding:6px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{font-weight:600;color:var(--muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em;background:var(--card)}
.num{text-align:right;white-space:nowrap}
table.kv td:first-child{color:var(--muted);width:42%;overflow-wrap:anywhere}
table.kv td{overflow-wrap:anywhere}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
.chips{display:flex;flex-wrap:wrap;gap:6px;max-height:210px;overflow:auto}
.chip{background:#eef2f7;border-radius:999px;padding:1px 10px;font-size:13px}
figure{margin:0}
figure img{display:block;max-width:100%;height:auto;margin:0 auto}
.wide{overflow-x:auto}
.wide img{max-width:none}
figcaption{color:var(--muted);font-size:14px;margin-top:12px}
.meter{display:inline-block;width:90px;height:8px;margin-right:10px;background:#eef1f4;border-radius:4px;
 overflow:hidden;vertical-align:middle}
.meter i{display:block;height:100%;background:var(--ok);opacity:.75}
.scroll{max-height:640px;overflow:auto}
thead th{position:sticky;top:0}
.bad{color:var(--bad);font-weight:600}
.muted{color:var(--muted)}
footer{color:var(--muted);font-size:13px;text-align:center;margin-top:28px}
@media print{body{background:#fff}.card,.stat{box-shadow:none;break-inside:avoid}.scroll{max-height:none}}
"""


def _esc(value: Any) -> str:
    """HTML-escape any user string. "://" is also broken up with an entity so a URL
    that appears as text (say in the config) can never look like an external link."""
    return escape(str(value), quote=True).replace("://", "&#58;//")


def _md(value: Any) -> str:
    """Make a string safe inside a Markdown table cell."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _value(v: Any) -> str:
    """Config/hardware values: strings as-is, everything else as compact JSON."""
    return v if isinstance(v, str) else json.dumps(v, default=str)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested config dicts as dotted keys (optim.lr), which read better in a table."""
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def per_class_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per-class rows {class, precision, recall, f1, support}, sorted by F1, best first.

    Ties keep the class order of ``metrics["classes"]``.
    """
    per = metrics.get("per_class") or {}
    names = metrics.get("classes") or list(per)
    rows = [
        {
            "class": str(name),
            "precision": float(per[name]["precision"]),
            "recall": float(per[name]["recall"]),
            "f1": float(per[name]["f1"]),
            "support": int(per[name]["support"]),
        }
        for name in names
        if name in per
    ]
    rows.sort(key=lambda r: (math.isnan(r["f1"]), -r["f1"] if not math.isnan(r["f1"]) else 0.0))
    return rows


def write_report(
    out_dir: Path,
    *,
    metrics: dict[str, Any],
    history: list[dict[str, Any]] | None,
    probs: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    fetch_images: Callable[[np.ndarray], np.ndarray],
    filters: np.ndarray | None,
    run_info: dict[str, Any],
    split: str,
    seed: int = 0,
    explainer: Explainer | None = None,
) -> dict[str, Path]:
    """Write the pictures, metrics.json, per_class.csv, report.html and report.md.

    ``probs`` (N, C) and ``labels`` (N,) pick the example images and the
    thumbnails of confused pairs; ``fetch_images(indices)`` is called once, with
    only those dataset indices (at most 16 + 8*6), and must return uint8 images
    (len, H, W, 3) in the same order. ``run_info`` may hold name, config,
    dataset, hardware, versions and train_seconds. Returns the written paths by
    name (curves, confusion, examples, confused_pairs, filters, metrics,
    per_class_csv, html, markdown); curves/filters only when given. With an
    ``explainer`` the examples get the maps of their predicted and true classes
    and the most confused pair a picture of its own (confused_pair_maps); only
    the images shown are explained.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    classes = [str(c) for c in classes]
    c = len(classes)
    if probs.ndim != 2 or probs.shape != (labels.shape[0], c):
        raise ValueError(f"probs {probs.shape} must be (len(labels)={labels.shape[0]}, len(classes)={c})")
    cm = np.asarray(metrics["confusion_matrix"], dtype=np.int64)
    if cm.shape != (c, c):
        raise ValueError(f"confusion_matrix {cm.shape} does not match {c} classes")

    paths: dict[str, Path] = {}
    paths["metrics"] = write_atomic(
        out / "metrics.json", (json_text(metrics) + "\n").encode()
    )
    if history:
        paths["curves"] = plot_curves(history, out / "curves.png")
    paths["confusion"] = plot_confusion(cm, classes, out / "confusion.png")

    # Decide every image we will show first, then fetch them all in one call:
    # decoding a handful of files is cheap, decoding the whole split is not.
    pred = probs.argmax(axis=1) if len(probs) else np.zeros(0, dtype=np.int64)
    shown = select_examples(probs, labels, n=N_EXAMPLES, seed=seed)
    pairs = most_confused(cm, classes, k=N_PAIRS)
    index = {name: i for i, name in enumerate(classes)}
    pair_idx: dict[tuple[str, str], np.ndarray] = {}
    for true, wrong, _ in pairs:
        ti, pi = index[true], index[wrong]
        cand = np.nonzero((labels == ti) & (pred == pi))[0]
        # The most confident mistakes are the most telling ones.
        pair_idx[(true, wrong)] = cand[np.argsort(-probs[cand, pi], kind="stable")][:THUMBS_PER_PAIR]
    wanted = np.unique(np.concatenate([shown, *pair_idx.values()]).astype(np.int64))
    images = np.asarray(fetch_images(wanted)) if wanted.size else np.zeros((0, 1, 1, 3), np.uint8)
    if len(images) != len(wanted):
        raise ValueError(f"fetch_images returned {len(images)} images for {len(wanted)} indices")
    slot = {int(i): k for k, i in enumerate(wanted)}

    def take(idx: np.ndarray) -> np.ndarray:
        return images[[slot[int(i)] for i in idx]] if len(idx) else images[:0]

    top_pair = pair_idx[pairs[0][:2]] if pairs else np.zeros(0, dtype=np.int64)
    maps = explain_shown(explainer, take, shown, top_pair, pred, labels) if explainer and len(shown) else None
    paths["examples"] = plot_examples(
        take(shown), labels[shown], probs[shown], classes, out / "examples.png",
        title=f"Example predictions \u00b7 {split} split",
        maps=maps.examples if maps else None, maps_label=explainer.label if explainer else "",
    )
    captions = dict(_CAPTIONS)
    if explainer and maps:
        captions["examples"] = (captions["examples"][0], f"{captions['examples'][1]} {examples_note(explainer)}")
        if len(top_pair):
            true, wrong, count = pairs[0]
            paths["confused_pair_maps"] = plot_pair_maps(take(top_pair), *maps.pair, probs[top_pair, index[wrong]],
                                                         true, wrong, count, explainer.label,
                                                         out / "confused_pair_maps.png")
            captions["confused_pair_maps"] = pair_caption(explainer, true, wrong, count, len(top_pair))
    reverse = {(t, p): int(cm[index[p], index[t]]) for t, p, _ in pairs}
    paths["confused_pairs"] = plot_confused_pairs(
        pairs, {k: take(v) for k, v in pair_idx.items()}, out / "confused_pairs.png",
        reverse_counts=reverse, max_thumbs=THUMBS_PER_PAIR,
    )
    if filters is not None:
        paths["filters"] = plot_filters(np.asarray(filters), out / "filters.png")

    rows = per_class_rows(metrics)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["class", "precision", "recall", "f1", "support"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    paths["per_class_csv"] = write_atomic(out / "per_class.csv", buf.getvalue().encode())

    page = _Page(metrics, history, classes, cm, pairs, reverse, rows, run_info, split, out.name, captions)
    pictures = {k: paths[k] for k in ("curves", "confusion", "examples", "confused_pairs", "confused_pair_maps",
                                      "filters") if k in paths}
    paths["html"] = write_atomic(out / "report.html", page.html(pictures).encode("utf-8"))
    paths["markdown"] = write_atomic(out / "report.md", page.markdown(pictures).encode("utf-8"))
    return paths


_CAPTIONS = {
    "curves": ("Training curves", "Accuracy and loss per epoch on the training and validation data; the dashed "
               "line marks the epoch with the best validation accuracy. Bottom: the learning rate."),
    "confusion": ("Confusion matrix", "Rows are the true classes, columns the predictions. Colour is the share of "
                  "the row, so the diagonal is each class's recall; off-diagonal cells are mistakes."),
    "examples": ("Example predictions", "A seeded mix of confident correct predictions, confident mistakes and "
                 "close calls (smallest gap between the top two classes). Bars: the top-3 probabilities; "
                 "teal marks the true class, red-orange a wrong prediction."),
    "confused_pairs": ("Most confused pairs", "The class pairs the model mixes up most (true \u2192 predicted), "
                       "with the count of the opposite mistake and the most confident misclassified images."),
    "filters": ("First-layer filters", "The kernels of the first convolution, each scaled to its own range "
                "(compare Figure 3 of Krizhevsky, Sutskever and Hinton, 2012)."),
}


class _Page:
    """Renders the same facts as HTML and as Markdown, so the two never disagree."""

    def __init__(self, metrics: Mapping[str, Any], history: Sequence[Mapping[str, Any]] | None,
                 classes: list[str], cm: np.ndarray, pairs: list[tuple[str, str, int]],
                 reverse: Mapping[tuple[str, str], int], rows: list[dict[str, Any]],
                 run_info: Mapping[str, Any], split: str, fallback_name: str,
                 captions: Mapping[str, tuple[str, str]] = _CAPTIONS) -> None:
        self.classes, self.cm, self.pairs, self.reverse, self.rows = classes, cm, pairs, reverse, rows
        self.captions = captions
        self.split = str(split)
        self.name = str(run_info.get("name") or fallback_name or "run")
        self.dataset = str(run_info.get("dataset") or "\u2014")
        self.config = dict(_flatten(run_info.get("config") or {}))
        self.hardware = dict(_flatten(run_info.get("hardware") or {}))
        self.versions = dict(_flatten(run_info.get("versions") or {}))
        self.accuracy = format_percent(metrics.get("accuracy"))
        self.top5 = format_percent(metrics.get("top5"))
        self.top5_hint = "needs more than 5 classes" if metrics.get("top5") is None and len(classes) <= 5 else ""
        self.samples = f"{int(metrics.get('num_samples', int(cm.sum()))):,}"
        self.correct = f"{int(np.trace(cm)):,}"
        self.train_time = format_duration(run_info.get("train_seconds"))
        self.epochs = len(history) if history else int(run_info.get("epochs_trained") or 0)
        self.generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        chance = metrics.get("chance")
        self.chance = format_percent(chance["accuracy"]) if chance else "\u2014"
        self.chance_hint = (f"always answering {chance['class']}; "
                            f"{'above it' if chance['better'] else 'NOT above it'} (p = {chance['p_value']:.2g})"
                            if chance else "")
        self.chance_warning = ""
        if chance and not chance["better"]:
                    self.chance_warning = chance_sentence(float(metrics["accuracy"]), int(metrics["num_samples"]), chance)

    # -- HTML ---------------------------------------------------------------
    def html(self, pictures: Mapping[str, Path]) -> str:
        stat = ('<div class="stat{cls}"><div class="label">{label}</div><div class="value">{value}</div>'
                '<div class="hint">{hint}</div></div>')
        stats = "".join([
            stat.format(cls=" primary", label="Top-1 accuracy", value=self.accuracy,
                        hint=f"{self.correct} of {self.samples} correct"),
            stat.format(cls="" if not self.chance_warning else " alarm", label="Chance (largest class)",
                        value=self.chance, hint=_esc(self.chance_hint)),
            stat.format(cls="", label="Top-5 accuracy", value=self.top5, hint=_esc(self.top5_hint)),
            stat.format(cls="", label="Samples", value=self.samples, hint=f"{_esc(self.split)} split"),
            stat.format(cls="", label="Training time", value=self.train_time,
                        hint=f"{self.epochs} epochs" if self.epochs else ""),
        ])
        chips = "".join(f'<span class="chip">{_esc(c)}</span>' for c in self.classes)
        run = (
            '<section class="card"><h2>Run</h2><div class="grid">'
            f"<div><h3>Configuration</h3>{_kv_table(self.config)}</div>"
            f'<div><h3>Dataset</h3><p>{_esc(self.dataset)} <span class="muted">\u00b7 {len(self.classes)} classes'
            f'</span></p><div class="chips">{chips}</div>'
            f'<h3 style="margin-top:18px">Hardware</h3>{_kv_table(self.hardware)}'
            f'<h3 style="margin-top:18px">Versions</h3>{_kv_table(self.versions)}</div>'
            "</div></section>"
        )
        figures = []
        for key, path in pictures.items():
            title, caption = self.captions[key]
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            # Many classes: show the matrix at full size (scrollable) so labels stay legible.
            wide = ' class="wide"' if key == "confusion" and len(self.classes) > 30 else ""
            figures.append(
                f'<section class="card"><h2>{_esc(title)}</h2><figure>'
                f'<div{wide}><img src="data:image/png;base64,{data}" alt="{_esc(title)}"></div>'
                f"<figcaption>{_esc(caption)}</figcaption></figure></section>"
            )
        body_rows = "".join(
            f"<tr><td>{_esc(r['class'])}</td><td class=\"num\">{format_percent(r['precision'])}</td>"
            f"<td class=\"num\">{format_percent(r['recall'])}</td>"
            f"<td class=\"num\"><span class=\"meter\"><i style=\"width:{_bar(r['f1'])}%\"></i></span>"
            f"{format_percent(r['f1'])}</td>"
            f"<td class=\"num\">{r['support']:,}</td></tr>"
            for r in self.rows
        )
        per_class = (
            '<section class="card"><h2>Per-class metrics<small>sorted by F1, best first</small></h2>'
            '<div class="scroll"><table><thead><tr><th>class</th><th class="num">precision</th>'
            '<th class="num">recall</th><th class="num">F1</th><th class="num">support</th></tr></thead>'
            f"<tbody>{body_rows}</tbody></table></div></section>"
        )
        if self.pairs:
            pair_rows = "".join(
                f"<tr><td>{_esc(t)}</td><td class=\"bad\">{_esc(p)}</td><td class=\"num\">{n:,}</td>"
                f"<td class=\"num\">{self._share(t, n)}</td><td class=\"num\">{self.reverse[(t, p)]:,}</td></tr>"
                for t, p, n in self.pairs
            )
            confused = (
                '<table><thead><tr><th>true class</th><th>predicted as</th><th class="num">count</th>'
                '<th class="num">share of true class</th><th class="num">reverse (pred \u2192 true)</th></tr></thead>'
                f"<tbody>{pair_rows}</tbody></table>"
            )
        else:
            confused = '<p class="muted">No confusions: every sample was classified correctly.</p>'
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(self.name)} \u00b7 {_esc(self.split)} report</title><style>{_CSS}</style></head>\n"
            "<body><main>"
            '<header><div class="eyebrow">AlexNet evaluation report</div>'
            f"<h1>{_esc(self.name)}</h1>"
            f'<p class="sub">{_esc(self.dataset)} \u00b7 {_esc(self.split)} split \u00b7 {self.samples} samples'
            f" \u00b7 generated {self.generated}</p></header>"
            + (f'<p class="warning">{_esc(self.chance_warning)}</p>' if self.chance_warning else "")
            + f'<section class="stats">{stats}</section>{run}{"".join(figures)}{per_class}'
            f'<section class="card"><h2>Most confused pairs</h2>{confused}</section>'
            "<footer>Generated by alexnet \u00b7 self-contained: no scripts, no external resources</footer>"
            "</main></body></html>\n"
        )

    def _share(self, true: str, count: int) -> str:
        support = int(self.cm[self.classes.index(true)].sum())
        return format_percent(count / support) if support else "\u2014"

    # -- Markdown -----------------------------------------------------------
    def markdown(self, pictures: Mapping[str, Path]) -> str:
        lines = [
            f"# {_md(self.name)} \u2014 evaluation report",
            "",
            "| metric | value |",
            "|---|---:|",
            f"| Accuracy (top-1) | {self.accuracy} |",
            f"| Chance (largest class) | {self.chance} ({_md(self.chance_hint)}) |",
            f"| Top-5 accuracy | {self.top5} |",
            f"| Samples | {self.samples} |",
            f"| Split | {_md(self.split)} |",
            f"| Dataset | {_md(self.dataset)} ({len(self.classes)} classes) |",
            f"| Training time | {self.train_time} |",
            "",
        ]
        for key, path in pictures.items():
            title, caption = self.captions[key]
            lines += [f"## {title}", "", f"![{key}]({Path(path).name})", "", caption, ""]
        lines += ["## Per-class metrics (sorted by F1, best first)", "",
                  "| class | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {_md(r['class'])} | {format_percent(r['precision'])} | {format_percent(r['recall'])} | "
                  f"{format_percent(r['f1'])} | {r['support']:,} |" for r in self.rows]
        lines += ["", "## Most confused pairs", ""]
        if self.pairs:
            lines += ["| true class | predicted as | count | reverse (pred \u2192 true) |", "|---|---|---:|---:|"]
            lines += [f"| {_md(t)} | {_md(p)} | {n:,} | {self.reverse[(t, p)]:,} |" for t, p, n in self.pairs]
        else:
            lines.append("No confusions: every sample was classified correctly.")
        for title, table in (("Configuration", self.config), ("Hardware", self.hardware), ("Versions", self.versions)):
            if table:
                lines += ["", f"## {title}", "", "| key | value |", "|---|---|"]
                lines += [f"| {_md(k)} | {_md(_value(v))} |" for k, v in table.items()]
        lines += ["", f"_Generated {self.generated}._", ""]
        return "\n".join(lines)


def _bar(x: float) -> str:
    return f"{max(0.0, min(1.0, x)) * 100:.1f}" if math.isfinite(x) else "0"


def _kv_table(d: Mapping[str, Any]) -> str:
    if not d:
        return '<p class="muted">\u2014</p>'
    rows = "".join(f"<tr><td>{_esc(k)}</td><td><code>{_esc(_value(v))}</code></td></tr>" for k, v in d.items())
    return f'<table class="kv"><tbody>{rows}</tbody></table>'
