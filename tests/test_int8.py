"""int8 export (calibrated on training images, checked against fp32) and the --precision / --views choices of
predict and serve, checked against onnxruntime runs of the graphs and torch forward passes run here."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

import alexnet
from alexnet import cli
from alexnet.cpuinfo import int8_class
from alexnet.data.pipeline import prepare_image
from alexnet.errors import AlexnetError
from alexnet.export import build as export_build
from alexnet.export import export_model
from alexnet.runtime import load_classifier
from conftest import CLASSES, run_cli, serving
from test_export import FAMILIES, make_checkpoint, model_input

ort = pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxscript, onnxruntime) is not installed")
pytest.importorskip("onnxscript", reason="the export extra (onnx, onnxscript, onnxruntime) is not installed")

# int8 and fp32 must name the same top class on at least this share of the images. Quantization moves
# probabilities by a few hundredths; only images whose two best classes are that close may change.
AGREEMENT = 0.9
# Random-init networks (the families below) often have their two best classes within a few hundredths: int8
# moves those. Measured here: 84-100% agreement over the families on the tiny folder.
FAMILY_AGREEMENT = 0.8


def session_probabilities(graph: Path, pixels: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"]).run(None, {"images": pixels})[0]


def all_images(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.png"))


def digest(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def int8_export(trained_run, tiny_folder, tmp_path_factory):
    """`alexnet export RUN --out DIR --quantize int8 --check DATA` as a user runs it: (folder, stdout)."""
    out = tmp_path_factory.mktemp("int8") / "model"
    result = run_cli("export", trained_run, "--out", out, "--quantize", "int8", "--check", tiny_folder,
                     env={"ALEXNET_DATA": str(tmp_path_factory.mktemp("cache"))})
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def test_export_writes_int8_graphs_and_prints_the_check(int8_export, tiny_folder):
    out, stdout = int8_export
    config = json.loads((out / "config.json").read_text())
    int8 = config["int8"]
    passes = config["views"]["passes"]
    fp32_files = ["model.onnx"] + [f"model.views-{k}.onnx" for k in (1, 2) if k < passes]
    for name in fp32_files:
        assert (out / name).is_file() and (out / name.replace("model.", "model.int8.", 1)).is_file()
    assert {g["file"] for g in config["graphs"]} == {*fp32_files, *(n.replace("model.", "model.int8.", 1)
                                                                     for n in fp32_files)}
    # The calibration came from the training split, the check from the held-out validation split.
    assert int8["calibration"]["split"] == "train" and int8["check"]["split"] == "val"
    assert (int8["method"], int8["per_channel"]) == ("minmax", True)
    assert int8["reduce_range"] == (int8_class() not in ("vnni", "amx"))
    assert int8["cpu"]["int8_class"] == int8_class()
    check = int8["check"]
    # The printed figures are the recorded ones.
    assert f"top-1 agreement {check['top1_agree'] / check['images'] * 100:.2f}%" in stdout
    assert f"accuracy fp32 {check['accuracy_fp32'] * 100:.2f}%, int8 {check['accuracy_int8'] * 100:.2f}%" in stdout
    assert f"model.int8.onnx {(out / 'model.int8.onnx').stat().st_size / 1e6:.2f} MB" in stdout
    assert "images/s int8" in stdout and f"precision on this CPU: {int8['recommendation']['precision']}" in stdout
    # int8 weights take about a quarter of the fp32 file.
    assert (out / "model.int8.onnx").stat().st_size < 0.5 * (out / "model.onnx").stat().st_size
    assert "## int8" in (out / "README.md").read_text()
    # Independently: both graphs on every image of the folder agree on the top class.
    pixels = np.stack([prepare_image(f, alexnet.load_model(out, "cpu").spec) for f in all_images(tiny_folder)])
    p32, p8 = session_probabilities(out / "model.onnx", pixels), session_probabilities(out / "model.int8.onnx", pixels)
    assert (p32.argmax(1) == p8.argmax(1)).mean() >= AGREEMENT
    assert 0 < np.abs(p32 - p8).max() < 0.25  # int8 arithmetic, not a copy of the fp32 graph


def test_calibration_images_are_training_images_never_the_checked_ones(trained_run, tiny_folder, tmp_path,
                                                                       monkeypatch):
    seen: dict[str, list[np.ndarray]] = {}
    real_quantize, real_check = export_build.quantize_graph, export_build.check_int8

    def quantize(fp32, out, images, *args, **kwargs):
        seen.setdefault("calibration", []).append(images.copy())
        return real_quantize(fp32, out, images, *args, **kwargs)

    def check(fp32, int8, images, *args, **kwargs):
        seen["check"] = [images.copy()]
        return real_check(fp32, int8, images, *args, **kwargs)

    monkeypatch.setattr(export_build, "quantize_graph", quantize)
    monkeypatch.setattr(export_build, "check_int8", check)
    export_model(trained_run, tmp_path / "model", quantize="int8", check=tiny_folder, calibration_images=1000)
    spec = alexnet.load_model(trained_run, "cpu").spec
    train_files = {digest(prepare_image(f, spec)) for f in sorted((tiny_folder / "train").rglob("*.png"))}
    calibration = {digest(im) for im in seen["calibration"][0]}
    checked = {digest(im) for im in seen["check"][0]}
    assert calibration and checked
    assert calibration <= train_files and checked <= train_files  # the validation split is part of train/
    assert not calibration & checked
    # All the training split (1000 asked for, fewer there) and nothing else: the train/ images less the checked.
    assert len(calibration) + len(checked) == len(train_files)


@pytest.mark.parametrize("family", ["paper-lrn-two-towers", "preset-finetune"])  # CIFAR: int8_export
def test_int8_agrees_with_fp32_for_each_network_family(family, tiny_folder, tmp_path):
    cfg, spec = FAMILIES[family]
    ckpt = make_checkpoint(tmp_path / "best.pt", tiny_folder, cfg, spec)
    out = export_model(ckpt, tmp_path / "model", formats="onnx", quantize="int8").out
    config = json.loads((out / "config.json").read_text())
    assert config["int8"]["check"] is None  # not checked: fp32 stays the default
    assert config["int8"]["recommendation"]["precision"] == "fp32"
    assert load_classifier(out).precision == "fp32"
    pixels = np.stack([prepare_image(f, spec) for f in all_images(tiny_folder)])
    p32, p8 = session_probabilities(out / "model.onnx", pixels), session_probabilities(out / "model.int8.onnx", pixels)
    assert (p32.argmax(1) == p8.argmax(1)).mean() >= FAMILY_AGREEMENT
    assert np.allclose(p8.sum(1), 1, atol=1e-4)


def reversed_graph(fp32: Path, out: Path, images, *args, **kwargs) -> dict:
    """A wrong "int8" graph: the fp32 graph with its probabilities turned upside down (softmax of -p), so the top
    class becomes the least likely one."""
    import onnx
    from onnx import helper

    model = onnx.load(str(fp32))
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["p_fp32" if o == "probabilities" else o for o in node.output]
    graph.node.extend([helper.make_node("Neg", ["p_fp32"], ["p_neg"]),
                       helper.make_node("Softmax", ["p_neg"], ["probabilities"], axis=1)])
    onnx.save(model, str(out))
    return {"method": "minmax", "per_channel": True, "reduce_range": False, "format": "QDQ", "weights": "-",
            "activations": "-", "operators": [], "calibration_images": len(images)}


def test_an_int8_graph_that_loses_accuracy_fails_the_check_and_leaves_the_previous_export(
        trained_run, tiny_folder, tmp_path, monkeypatch, capsys):
    out = tmp_path / "model"
    assert cli.main(["export", str(trained_run), "--out", str(out), "--format", "safetensors"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(export_build, "quantize_graph", reversed_graph)
    capsys.readouterr()
    assert cli.main(["export", str(trained_run), "--out", str(out), "--quantize", "int8", "--check",
                     str(tiny_folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "int8 check failed, nothing written" in err and "--max-accuracy-drop" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("argv, message", [
    (["--quantize", "int8", "--format", "safetensors"], "add onnx to --format"),
    (["--calibrate", "x"], "are for --quantize int8"),
    (["--quantize", "int8", "--max-accuracy-drop", "-1"], "--max-accuracy-drop must be between 0 and 100"),
])
def test_bad_int8_flags_are_one_line(argv, message, trained_run, tmp_path, capsys):
    assert cli.main(["export", str(trained_run), "--out", str(tmp_path / "m"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "m").exists()


def cli_probabilities(model: Path, files: list[Path], *flags: str) -> np.ndarray:
    result = run_cli("predict", model, *files, "--json", "--top-k", str(len(CLASSES)), *flags)
    assert result.returncode == 0, result.stderr
    return np.array([[next(p["probability"] for p in r["predictions"] if p["class"] == c) for c in CLASSES]
                     for r in json.loads(result.stdout)])


def test_predict_runs_the_graph_of_the_precision_and_views_asked_for(int8_export, trained_run, tiny_folder):
    out, _ = int8_export
    files = all_images(tiny_folder)[::5]
    loaded = alexnet.load_model(trained_run, "cpu")
    pixels = np.stack([prepare_image(f, loaded.spec) for f in files])
    for flags, graph in ((["--precision", "int8"], "model.int8.onnx"),
                         (["--precision", "int8", "--views", "1"], "model.int8.views-1.onnx"),
                         (["--precision", "fp32", "--views", "1"], "model.views-1.onnx")):
        expected = session_probabilities(out / graph, pixels)
        assert np.abs(cli_probabilities(out, files, *flags) - expected).max() < 1e-6, flags
    # One view in torch is one plain forward pass of the network, computed here without the package's views.
    with torch.no_grad():
        plain = torch.softmax(loaded.model(model_input(pixels, loaded.spec)), 1).numpy()
    assert np.abs(cli_probabilities(trained_run, files, "--views", "1") - plain).max() < 1e-4
    # ... and the exported one-view graph is the same computation.
    assert np.abs(session_probabilities(out / "model.views-1.onnx", pixels) - plain).max() < 1e-4
    all_views = cli_probabilities(trained_run, files)
    # The run's own views are more than one pass (compared in log space: the tiny run is very sure of itself).
    assert np.abs(np.log(all_views + 1e-45) - np.log(plain + 1e-45)).max() > 1e-2


def test_precision_auto_follows_the_exports_advice_for_this_kind_of_cpu(int8_export, tmp_path):
    out, _ = int8_export
    copy = tmp_path / "model"
    shutil.copytree(out, copy)
    config = json.loads((copy / "config.json").read_text())
    for advised, measured_on, expected in (("int8", int8_class(), "int8"), ("fp32", int8_class(), "fp32"),
                                           ("int8", "some-other-cpu", "fp32")):
        config["int8"]["recommendation"] = {"precision": advised, "int8_class": measured_on, "why": "test"}
        (copy / "config.json").write_text(json.dumps(config))
        assert load_classifier(copy).precision == expected
    assert load_classifier(copy, precision="int8").precision == "int8"
    assert load_classifier(copy, backend="torch").precision == "fp32"


def test_precision_and_views_refusals_are_one_line(int8_export, trained_run, tmp_path, tiny_folder):
    out, _ = int8_export
    image = all_images(tiny_folder)[0]
    plain = tmp_path / "plain"
    with pytest.raises(AlexnetError):
        load_classifier(trained_run, precision="int8")
    shutil.copytree(out, plain, ignore=shutil.ignore_patterns("model.int8*"))
    for model, flags, message in ((trained_run, ["--precision", "int8"], "--quantize int8"),
                                  (plain, ["--precision", "int8"], "has no model.int8.onnx"),
                                  (out, ["--views", "3"], "invalid choice")):
        result = run_cli("predict", model, image, *flags)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, flags


def test_serve_answers_with_the_chosen_precision_and_views(int8_export, tiny_folder, tmp_path):
    out, _ = int8_export
    files = all_images(tiny_folder)[::6]
    spec = alexnet.load_model(out, "cpu").spec
    expected = session_probabilities(out / "model.int8.views-1.onnx", np.stack([prepare_image(f, spec)
                                                                                for f in files]))
    with serving(out, "--precision", "int8", "--views", "1", tmp_path=tmp_path) as service:
        card = httpx.get(service.url + "/model", timeout=10).json()
        assert (card["precision"], card["views"]["passes"], card["backend"]) == ("int8", 1, "onnx")
        for f, row in zip(files, expected):
            answer = httpx.post(service.url + "/predict", content=f.read_bytes(), timeout=30,
                                headers={"Content-Type": "image/png"}, params={"top_k": len(CLASSES)}).json()
            got = {p["class"]: p["probability"] for p in answer["predictions"]}
            assert answer["predictions"][0]["class"] == CLASSES[int(row.argmax())]
            assert max(abs(got[c] - row[i]) for i, c in enumerate(CLASSES)) < 1e-5


def test_minmax_calibration_folds_its_batches_without_emptying_the_calibrator_at_the_end():
    from alexnet.export.quantize import fold_every

    for batches in range(1, 3000):
        k = fold_every(batches, "minmax")
        # onnxruntime raises "No data is collected" when the last batch empties its buffer of k batches.
        assert k is None and batches <= 8 or 8 <= k < batches and batches % k, batches
    assert fold_every(100, "entropy") is None and fold_every(100, "percentile") is None


def test_evaluate_measures_the_graph_of_the_precision_and_views_asked_for(int8_export, tiny_folder, capsys):
    out, _ = int8_export
    spec = alexnet.load_model(out, "cpu").spec
    files = sorted((tiny_folder / "test").rglob("*.png"))  # a held-out folder's test split: its test/ images
    labels = np.array([CLASSES.index(f.parent.name) for f in files])
    pixels = np.stack([prepare_image(f, spec) for f in files])
    for precision, views, graph in (("int8", "all", "model.int8.onnx"), ("int8", "1", "model.int8.views-1.onnx"),
                                    ("fp32", "2", "model.views-2.onnx")):
        expected = (session_probabilities(out / graph, pixels).argmax(1) == labels).mean()
        metrics = alexnet.evaluate(out, data=str(tiny_folder), split="test", backend="onnx", precision=precision,
                                   views=views)
        assert metrics["num_samples"] == len(files) and metrics["accuracy"] == pytest.approx(expected)
        assert (metrics["precision"], metrics["views"]["passes"]) == (precision, 1 if views == "1" else
                                                                      2 if views == "2" else metrics["views"]["passes"])
    assert cli.main(["evaluate", str(out), "--data", str(tiny_folder), "--precision", "int8", "--views", "1"]) == 0
    assert "(onnx int8, 1 view)" in capsys.readouterr().out
