"""The report layer: pictures, self-contained HTML, Markdown, from plain numpy data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet.reports import write_report
from alexnet.reports.gallery import most_confused, plot_confused_pairs, plot_filters, select_examples
from alexnet.reports.heatmaps import Explainer, explain_shown
from alexnet.reports.html import per_class_rows
from alexnet.reports.plots import plot_confusion, plot_curves
from conftest import run_cli, write_class_folder

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CAT, DOG = 3, 5


def _metrics(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """The `alexnet evaluate --json` schema, computed independently with plain numpy."""
    c = len(classes)
    pred = probs.argmax(1)
    cm = np.zeros((c, c), dtype=int)
    np.add.at(cm, (labels, pred), 1)
    per_class = {}
    for i, name in enumerate(classes):
        tp = cm[i, i]
        precision = tp / cm[:, i].sum() if cm[:, i].sum() else 0.0
        recall = tp / cm[i].sum() if cm[i].sum() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                           "support": int(cm[i].sum())}
    top5 = None
    if c > 5:
        top5 = float((np.argsort(-probs, 1)[:, :5] == labels[:, None]).any(1).mean())
    return {"accuracy": float((pred == labels).mean()), "top5": top5, "num_samples": int(len(labels)),
            "classes": list(classes), "per_class": per_class, "confusion_matrix": cm.tolist()}


def _synthetic(n: int, c: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded probs with ~70% accuracy and a planted cat -> dog confusion."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), labels] += 2.5
    cats = np.nonzero(labels == CAT)[0]
    logits[cats[: int(0.4 * len(cats))], DOG] += 5
    probs = np.exp(logits)
    return probs / probs.sum(1, keepdims=True), labels


HISTORY = [
    {"epoch": e, "train_loss": 2.3 / e, "train_acc": 0.3 + 0.1 * e, "val_loss": 2.0 / e**0.5,
     "val_acc": [0.35, 0.55, 0.52][e - 1], "lr": 0.01 if e < 3 else 0.001, "seconds": 61.2,
     "images_per_s": 812.4}
    for e in (1, 2, 3)
]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One full report over a 2,000-sample split, shared by the tests below (rendering is the slow part)."""
    probs, labels = _synthetic(2000)
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2000, 32, 32, 3), dtype=np.uint8)
    calls: list[np.ndarray] = []

    def fetch(idx: np.ndarray) -> np.ndarray:
        calls.append(np.asarray(idx).copy())
        return images[idx]

    metrics = _metrics(probs, labels, CLASSES)
    run_info = {
        "name": "cifar10 <alexnet> & friends",
        "config": {"model": "alexnet-cifar", "optim": {"lr": 0.01, "momentum": 0.9}, "epochs": 3,
                   "data_url": "https://example.org/cifar"},
        "dataset": "CIFAR-10 (<local>)",
        "hardware": {"device": "cpu", "threads": 2},
        "versions": {"torch": "2.13", "python": "3.11"},
        "train_seconds": 183.6,
    }
    out = tmp_path_factory.mktemp("report")
    paths = write_report(out, metrics=metrics, history=HISTORY, probs=probs, labels=labels, classes=CLASSES,
                         fetch_images=fetch, filters=np.random.default_rng(2).normal(size=(96, 3, 11, 11)),
                         run_info=run_info, split="val", seed=0)
    return {"paths": paths, "out": out, "metrics": metrics, "calls": calls, "probs": probs, "labels": labels}


def test_every_file_is_written(report: dict) -> None:
    out: Path = report["out"]
    expected = ["curves.png", "confusion.png", "examples.png", "confused_pairs.png", "filters.png",
                "metrics.json", "report.html", "report.md", "per_class.csv"]
    for name in expected:
        assert (out / name).is_file(), name
    assert {p.name for p in report["paths"].values()} == set(expected)
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))  # atomic writes leave no temp files
    for png in out.glob("*.png"):
        with Image.open(png) as im:
            assert im.format == "PNG"
            assert 400 <= im.width < 3000 and 150 <= im.height < 3000, (png.name, im.size)
        assert png.stat().st_size < 1_000_000, png.name


def test_html_is_self_contained(report: dict) -> None:
    html = (report["out"] / "report.html").read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower()
    srcs = re.findall(r"""\bsrc\s*=\s*["']?([^"'\s>]*)""", html, flags=re.I)
    assert len(srcs) == 5
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in html.lower() and "@import" not in html and "url(" not in html
    # user strings are escaped
    assert "cifar10 &lt;alexnet&gt; &amp; friends" in html and "<alexnet>" not in html
    assert "CIFAR-10 (&lt;local&gt;)" in html


def test_headline_numbers_match_metrics(report: dict) -> None:
    m = report["metrics"]
    html = (report["out"] / "report.html").read_text(encoding="utf-8")
    md = (report["out"] / "report.md").read_text(encoding="utf-8")
    acc, top5 = f"{m['accuracy'] * 100:.2f}%", f"{m['top5'] * 100:.2f}%"
    for text in (html, md):
        assert acc in text and top5 in text and "2,000" in text and "val" in text
    for name in ("curves", "confusion", "examples", "confused_pairs", "filters"):
        assert f"![{name}]({name}.png)" in md
    assert "| cat |" in md and "sorted by F1" in md and "sorted by F1" in html
    assert json.loads((report["out"] / "metrics.json").read_text()) == m


def test_only_shown_images_are_fetched(report: dict) -> None:
    calls = report["calls"]
    assert len(calls) == 1
    fetched = calls[0]
    assert len(fetched) == len(set(fetched.tolist())) and 16 <= len(fetched) < 100
    shown = select_examples(report["probs"], report["labels"], n=16, seed=0)
    assert set(shown.tolist()) <= set(fetched.tolist())


def test_per_class_rows_sorted_by_f1_descending(report: dict) -> None:
    rows = per_class_rows(report["metrics"])
    assert [r["class"] for r in rows] != CLASSES and sorted(r["class"] for r in rows) == sorted(CLASSES)
    f1 = [r["f1"] for r in rows]
    assert f1 == sorted(f1, reverse=True)
    assert rows[-1]["class"] == "cat"  # the planted confusion makes cat the worst class


def test_select_examples_is_seeded_and_mixed() -> None:
    probs, labels = _synthetic(500)
    a, b = select_examples(probs, labels, 16, seed=0), select_examples(probs, labels, 16, seed=0)
    assert np.array_equal(a, b) and len(a) == 16 and len(set(a.tolist())) == 16
    assert not np.array_equal(a, select_examples(probs, labels, 16, seed=1))
    pred, conf = probs.argmax(1), probs.max(1)
    correct = pred[a] == labels[a]
    assert correct.sum() >= 5 and (~correct).sum() >= 5
    for kind, mask in ((correct, pred == labels), (~correct, pred != labels)):
        # a third of the picks come from the 15 (= 3 * 16 // 3) most confident of that kind
        cutoff = np.sort(conf[mask])[::-1][14]
        assert (conf[a][kind] >= cutoff).sum() >= 5
    top2 = np.sort(probs, 1)[:, -2:]
    assert int(np.argmin(top2[:, 1] - top2[:, 0])) in a.tolist()  # the closest call is shown

    perfect = np.eye(10)[labels] * 0.9 + 0.01  # 100% accuracy: no mistakes to show
    sel = select_examples(perfect, labels, 16)
    assert len(sel) == 16 and len(set(sel.tolist())) == 16
    assert len(select_examples(probs[:5], labels[:5], 16)) == 5


def test_most_confused_finds_planted_pair() -> None:
    probs, labels = _synthetic(2000)
    cm = np.asarray(_metrics(probs, labels, CLASSES)["confusion_matrix"])
    pairs = most_confused(cm, CLASSES, k=8)
    assert pairs[0][:2] == ("cat", "dog") and pairs[0][2] == cm[CAT, DOG]
    assert len(pairs) == 8 and all(n > 0 for *_, n in pairs)
    assert [n for *_, n in pairs] == sorted((n for *_, n in pairs), reverse=True)
    assert most_confused(np.diag([5, 6, 7]), ["a", "b", "c"]) == []


def test_edge_cases_plot(tmp_path: Path) -> None:
    # 100 classes: legible and bounded in size
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 100, 3000)
    pred = np.where(rng.random(3000) < 0.6, labels, rng.integers(0, 100, 3000))
    cm = np.zeros((100, 100), dtype=int)
    np.add.at(cm, (labels, pred), 1)
    path = plot_confusion(cm, [f"class_{i}" for i in range(100)], tmp_path / "cm100.png")
    with Image.open(path) as im:
        assert 400 <= im.width < 3000 and 400 <= im.height < 3000
    # one epoch, and no validation at all
    with Image.open(plot_curves(HISTORY[:1], tmp_path / "one.png")) as im:
        assert im.width >= 400
    no_val = [dict(r, val_acc=None, val_loss=float("nan")) for r in HISTORY]
    assert plot_curves(no_val, tmp_path / "noval.png").is_file()
    # zero confusions, grayscale filters
    with Image.open(plot_confused_pairs([], {}, tmp_path / "none.png")) as im:
        assert im.width >= 400
    with Image.open(plot_filters(rng.normal(size=(64, 1, 7, 7)), tmp_path / "f64.png")) as im:
        assert im.width >= 400


def test_report_without_history_filters_or_mistakes(tmp_path: Path) -> None:
    classes = ["a", "b", "c"]
    labels = np.arange(12) % 3
    probs = np.eye(3)[labels] * 0.8 + 0.2 / 3
    metrics = _metrics(probs, labels, classes)
    assert metrics["top5"] is None and metrics["accuracy"] == 1.0
    paths = write_report(tmp_path, metrics=metrics, history=None, probs=probs, labels=labels, classes=classes,
                         fetch_images=lambda idx: np.zeros((len(idx), 8, 8, 3), np.uint8), filters=None,
                         run_info={}, split="test")
    assert "curves" not in paths and "filters" not in paths
    html = paths["html"].read_text(encoding="utf-8")
    assert "100.00%" in html and "No confusions" in html
    assert "100.00%" in paths["markdown"].read_text(encoding="utf-8")


def test_sparse_validation_is_drawn_as_one_joined_line(tmp_path, monkeypatch):
    # --val-every 2: epochs 1 and 3 have no validation; the val line must join epochs 2 and 4, not vanish.
    import matplotlib.axes

    from alexnet.reports import plots

    drawn = []
    original = matplotlib.axes.Axes.plot

    def spy(self, *args, **kwargs):
        if kwargs.get("color") == plots.VAL:
            drawn.append(list(args[0]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    rows = [dict(HISTORY[0], epoch=e, val_acc=0.1 * e) for e in (1, 2, 3, 4)]
    sparse = [dict(r, val_acc=float("nan"), val_loss=float("nan")) if r["epoch"] % 2 else r for r in rows]
    plot_curves(sparse, tmp_path / "sparse.png")
    assert drawn and all(xs == [2, 4] for xs in drawn)


# -- Explanations: the Grad-CAM maps of the shown images, from a real trained model -------------------------------


@pytest.fixture(scope="module")
def mistaken_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A class folder with the colours swapped round (the dog folder holds cat-coloured images, ship dog-coloured,
    cat ship-coloured): the tiny model trained on `tiny_folder` takes them for other classes, so the report has
    mistakes and a most confused pair to explain."""
    return write_class_folder(tmp_path_factory.mktemp("swapped"), 4, seed=2, classes=["dog", "ship", "cat"])


@pytest.fixture(scope="module")
def explained(trained_run: Path, mistaken_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The report of `trained_run` on `mistaken_folder`, with what its picture functions were handed and every
    batch of images Grad-CAM was asked to explain."""
    from alexnet.inference import load_model
    from alexnet.reports import html as report_html
    from alexnet.reports.build import build_report
    from alexnet.saliency import cam

    handed: dict[str, tuple] = {}
    explained_batches: list[int] = []
    maps_of = cam.input_maps

    def counting(loaded, images, *args, **kwargs):
        explained_batches.append(len(images))
        return maps_of(loaded, images, *args, **kwargs)

    def recording(name: str):
        draw = getattr(report_html, name)

        def spy(*args, **kwargs):
            handed[name] = (args, kwargs)
            return draw(*args, **kwargs)
        return spy

    out = tmp_path_factory.mktemp("explained") / "report"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cam, "input_maps", counting)
        for name in ("plot_examples", "plot_pair_maps"):
            mp.setattr(report_html, name, recording(name))
        build_report(trained_run, data=str(mistaken_folder), split="test", out=out)
    metrics = json.loads((out / "metrics.json").read_text())
    return {"out": out, "handed": handed, "batches": explained_batches, "metrics": metrics,
            "layer": cam.find_layer(load_model(trained_run).model)[0]}


def test_the_report_explains_its_examples_and_its_most_confused_pair(explained: dict) -> None:
    out, handed, metrics = explained["out"], explained["handed"], explained["metrics"]
    assert metrics["accuracy"] < 0.5  # the swapped colours make mistakes, so there is a pair to explain
    (images, labels, probs, classes, _), kwargs = handed["plot_examples"]
    predicted, true = kwargs["maps"]
    assert predicted.shape == true.shape == images.shape[:3] and images.shape[1:] == (32, 32, 3)
    assert "Grad-CAM" in kwargs["maps_label"] and explained["layer"] in kwargs["maps_label"]
    wrong = probs.argmax(1) != labels
    assert wrong.any() and not any(np.allclose(predicted[k], true[k]) for k in np.nonzero(wrong)[0])
    assert all(np.array_equal(predicted[k], true[k]) for k in np.nonzero(~wrong)[0])

    pair_true, pair_pred, count = most_confused(np.asarray(metrics["confusion_matrix"]), metrics["classes"])[0]
    args, _ = handed["plot_pair_maps"]
    assert args[4:7] == (pair_true, pair_pred, count) and 1 <= len(args[0]) <= 6
    assert (out / "confused_pair_maps.png").is_file() and (out / "examples.png").is_file()
    html = (out / "report.html").read_text(encoding="utf-8")
    md = (out / "report.md").read_text(encoding="utf-8")
    for text in (html, md):
        assert "Most confused pair, explained" in text and f"layer {explained['layer']}" in text
        assert "4\u00d74 grid" in text and "Grad-CAM" in text
    assert "![confused_pair_maps](confused_pair_maps.png)" in md and "![examples](examples.png)" in md
    # Only the images shown are explained, each with its predicted and true class, all in one batch.
    assert len(explained["batches"]) == 1 and explained["batches"][0] <= 2 * 16 + 2 * 6


def test_the_maps_shown_are_alexnet_explains_maps_of_the_images_shown(explained: dict, trained_run: Path,
                                                                      tmp_path: Path) -> None:
    import alexnet
    from alexnet.explanations import load_explainer

    classifier = load_explainer(trained_run)
    (images, labels, probs, classes, _), kwargs = explained["handed"]["plot_examples"]
    pair_images, pair_pred_maps, pair_true_maps, _, pair_true, pair_pred = explained["handed"]["plot_pair_maps"][0][:6]
    cases = [(img, classes[int(p.argmax())], m) for img, p, m in zip(images, probs, kwargs["maps"][0])]
    cases += [(img, classes[int(t)], m) for img, t, m in zip(images, labels, kwargs["maps"][1])]
    cases += [(img, pair_pred, m) for img, m in zip(pair_images, pair_pred_maps)]
    cases += [(img, pair_true, m) for img, m in zip(pair_images, pair_true_maps)]
    for target in sorted({c for _, c, _ in cases}):
        mine = [(img, m) for img, c, m in cases if c == target]
        files = []
        for img, _ in mine:
            files.append(tmp_path / f"{len(list(tmp_path.iterdir()))}.png")
            Image.fromarray(img).save(files[-1])
        records = alexnet.explain(classifier, files, target=target)
        for (_, shown), record in zip(mine, records):
            assert record["layer"] == explained["layer"] and record["method"] == "gradcam"
            np.testing.assert_allclose(shown, record["heatmap"], atol=1e-4)


def test_the_explained_report_is_one_self_contained_file(explained: dict) -> None:
    import base64

    out = explained["out"]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html and "<script" not in html.lower()
    assert "<link" not in html.lower() and "@import" not in html and "url(" not in html
    srcs = re.findall(r"""\bsrc\s*=\s*["']?([^"'\s>]*)""", html, flags=re.I)
    assert len(srcs) == 6 and all(s.startswith("data:image/png;base64,") for s in srcs)
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in srcs}
    assert (out / "confused_pair_maps.png").read_bytes() in embedded
    assert (out / "examples.png").read_bytes() in embedded


def test_no_explain_leaves_the_maps_out(trained_run: Path, mistaken_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = run_cli("report", trained_run, "--data", mistaken_folder, "--split", "test", "--out", out,
                     "--no-explain")
    assert result.returncode == 0, result.stderr
    html = (out / "report.html").read_text(encoding="utf-8")
    md = (out / "report.md").read_text(encoding="utf-8")
    assert not (out / "confused_pair_maps.png").exists()
    for text in (html, md):
        assert "Grad-CAM" not in text and "explained" not in text and "confused_pair_maps" not in text
    assert len(re.findall(r"\bsrc\s*=", html)) == 5 and "Most confused pairs" in html


def test_the_api_without_explanations_computes_no_map(trained_run: Path, mistaken_folder: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from alexnet.api import report as report_run
    from alexnet.reports import html as report_html
    from alexnet.saliency import cam

    def refuse(*args, **kwargs):
        raise AssertionError("a report without explanations computed a map")

    handed = []
    draw = report_html.plot_examples
    monkeypatch.setattr(cam, "input_maps", refuse)
    monkeypatch.setattr(report_html, "plot_examples", lambda *a, **k: handed.append(k) or draw(*a, **k))
    report_run(trained_run, data=str(mistaken_folder), split="test", out=tmp_path / "report", explain=False)
    assert handed and handed[0]["maps"] is None
    assert not (tmp_path / "report" / "confused_pair_maps.png").exists()


def test_each_shown_image_is_explained_once_per_class_and_its_maps_land_in_place() -> None:
    labels = np.array([0, 1, 2, 0, 1])
    pred = np.array([0, 2, 2, 1, 1])  # 1 and 3 are mistakes
    images = np.arange(5 * 4 * 4 * 3, dtype=np.uint8).reshape(5, 4, 4, 3)
    asked: list[tuple[np.ndarray, np.ndarray]] = []

    def maps(batch: np.ndarray, targets: np.ndarray) -> np.ndarray:
        asked.append((batch, targets))
        # Each map says which image (its pixels) and which class it is of, in whole numbers a float holds exactly.
        return batch[..., 0].astype(np.float32) + 1000 * targets[:, None, None]

    explainer = Explainer(maps, "Grad-CAM", "features.conv5")
    shown = explain_shown(explainer, lambda idx: images[idx], np.array([3, 0, 1]), np.array([1, 4]), pred, labels)
    assert len(asked) == 1
    pairs = sorted(zip(asked[0][0][:, 0, 0, 0].tolist(), asked[0][1].tolist()))
    assert len(pairs) == len(set(pairs)) == 6  # (3: 1, 0), (0: 0), (1: 2, 1), (4: 1)

    def expected(i: int, c: int) -> np.ndarray:
        return images[i, ..., 0].astype(np.float32) + 1000 * c

    for (got_pred, got_true), idx in ((shown.examples, [3, 0, 1]), (shown.pair, [1, 4])):
        for k, i in enumerate(idx):
            np.testing.assert_array_equal(got_pred[k], expected(i, pred[i]))
            np.testing.assert_array_equal(got_true[k], expected(i, labels[i]))


def test_alexnet_report_stays_the_function_after_training_loaded_the_report_code():
    # `alexnet.train` writes its report through the reports package; `alexnet.report(run)` must still be the verb
    # the README's Python example calls (a subpackage of the same name would replace it on import).
    import alexnet
    import alexnet.reports.html  # noqa: F401 - what training imports
    from alexnet.api import report as api_report

    assert alexnet.report is api_report
