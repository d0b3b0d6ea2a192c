"""alexnet.runtime: torch and onnxruntime behind one interface; the onnx path never imports torch."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from alexnet.data.prepare import InputSpec, centre_view, prepare_bytes, prepare_image
from alexnet.errors import AlexnetError
from alexnet.runtime import load_classifier, top_predictions
from conftest import BLOCK_TORCH, CLASSES, run_cli, serving


def odd_images(root: Path) -> list[Path]:
    """Files of other sizes, modes and formats than the training images, as users send them."""
    rng = np.random.default_rng(3)
    root.mkdir(parents=True, exist_ok=True)
    specs = [("wide.jpg", "RGB", (61, 40)), ("alpha.png", "RGBA", (32, 32)), ("grey.png", "L", (20, 50)),
             ("palette.gif", "P", (90, 90)), ("tall.webp", "RGB", (33, 70))]
    paths = []
    for name, mode, (w, h) in specs:
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pixels[..., len(paths) % 3] |= 0x80
        Image.fromarray(pixels).convert(mode).save(root / name)
        paths.append(root / name)
    return paths


@pytest.fixture(scope="module")
def images(tiny_folder, tmp_path_factory) -> list[Path]:
    test = sorted((tiny_folder / "test").glob("*/*.png"))
    return test[::4] + odd_images(tmp_path_factory.mktemp("odd"))


def test_torch_and_onnx_backends_agree(exported_model, trained_run, images):
    onnx = load_classifier(exported_model, "onnx")
    torch_export = load_classifier(exported_model, "torch")
    torch_run = load_classifier(trained_run / "best.pt", "torch")
    assert onnx.classes == torch_export.classes == torch_run.classes == CLASSES
    batch = np.stack([onnx.prepare(p.read_bytes(), p.name) for p in images])
    p_onnx = onnx.probabilities(batch)
    assert p_onnx.shape == (len(images), 3) and p_onnx.dtype == np.float32
    np.testing.assert_allclose(p_onnx.sum(1), 1, atol=1e-5)
    for other in (torch_export, torch_run):
        probs = other.probabilities(batch)
        assert np.abs(probs - p_onnx).max() < 1e-4
        assert (probs.argmax(1) == p_onnx.argmax(1)).all()


def test_a_batch_gives_each_image_what_it_gets_alone(exported_model, images):
    onnx = load_classifier(exported_model, "onnx")
    batch = np.stack([onnx.prepare_file(p) for p in images])
    together = onnx.probabilities(batch)
    alone = np.concatenate([onnx.probabilities(batch[i:i + 1]) for i in range(len(batch))])
    np.testing.assert_allclose(together, alone, atol=1e-6)
    assert onnx.probabilities(batch[:0]).shape == (0, 3)


def test_prepare_from_bytes_is_prepare_from_the_file(exported_model, images):
    onnx = load_classifier(exported_model, "onnx")
    assert onnx.input_side == 32
    for path in images:
        from_bytes = onnx.prepare(path.read_bytes(), path.name)
        assert from_bytes.shape == (32, 32, 3) and from_bytes.dtype == np.uint8
        assert np.array_equal(from_bytes, prepare_image(path, onnx.spec)), path.name


def test_a_32px_image_reaches_the_model_with_its_own_pixels(tiny_folder, exported_model):
    path = sorted((tiny_folder / "test" / "dog").glob("*.png"))[0]
    onnx = load_classifier(exported_model, "onnx")
    assert np.array_equal(onnx.prepare(path.read_bytes(), "dog.png"), np.asarray(Image.open(path).convert("RGB")))


def test_stream_kind_takes_the_centre_square_after_resizing_the_shorter_side():
    pixels = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)  # shorter side already 10: no resize
    spec = InputSpec("stream", 8, resize=10)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    expected = pixels[1:9, 2:10]  # (10 - 8) / 2 rows and (12 - 8) / 2 columns cut away
    assert np.array_equal(prepare_bytes(buf.getvalue(), "x.png", spec), expected)
    assert np.array_equal(centre_view(Image.fromarray(pixels), 8, 10), expected)


def test_bf16_serving_stays_close_to_fp32(exported_model, trained_run, images):
    fp32 = load_classifier(trained_run, "torch")
    bf16 = load_classifier(trained_run, "torch", amp="bf16")
    assert (fp32.card["precision"], bf16.card["precision"]) == ("fp32", "bf16")
    batch = np.stack([fp32.prepare_file(p) for p in images])
    assert np.abs(bf16.probabilities(batch) - fp32.probabilities(batch)).max() < 0.05  # bf16 keeps 8 bits
    assert load_classifier(exported_model, amp="bf16").backend == "torch"  # the graph is fp32 only
    with pytest.raises(AlexnetError, match="bf16"):
        load_classifier(exported_model, "onnx", amp="bf16")


def test_auto_picks_onnx_for_an_export_and_torch_otherwise(exported_model, trained_run):
    assert load_classifier(exported_model).backend == "onnx"
    assert load_classifier(exported_model / "model.onnx").backend == "onnx"  # a file in the folder names it
    assert load_classifier(trained_run).backend == "torch"
    assert load_classifier(trained_run / "best.pt").backend == "torch"


def test_onnx_backend_needs_an_exported_folder(trained_run, tmp_path):
    with pytest.raises(AlexnetError, match="exported model folder"):
        load_classifier(trained_run, "onnx")
    with pytest.raises(AlexnetError, match="does not exist"):
        load_classifier(tmp_path / "missing")
    with pytest.raises(AlexnetError, match="--backend"):
        load_classifier(trained_run, "tensorflow")


def test_a_broken_onnx_file_is_one_clear_error(exported_model, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(exported_model, broken)
    (broken / "model.onnx").write_bytes(b"not a graph")
    with pytest.raises(AlexnetError, match="model.onnx cannot be loaded"):
        load_classifier(broken, "onnx")


def test_model_card_names_classes_side_accuracy_and_report(exported_model, trained_run):
    history = json.loads((trained_run / "history.json").read_text())
    exported = json.loads((exported_model / "config.json").read_text())
    for clf in (load_classifier(exported_model), load_classifier(trained_run)):
        card = clf.card
        assert card["classes"] == CLASSES and card["num_classes"] == 3 and card["input_side"] == 32
        assert card["name"] == "alexnet-cifar" and card["backend"] == clf.backend
        assert card["metrics"]["split"] == "val"
        assert card["metrics"]["accuracy"] == pytest.approx(exported["metrics"]["accuracy"])
        assert card["views"] == {"tta": exported["views"]["tta"], "tta_shift": exported["views"]["tta_shift"],
                                 "passes": exported["views"]["passes"]}
    # The run validated once per epoch; best.pt is the epoch with the best validation accuracy.
    best_epoch = load_classifier(trained_run).card["metrics"]["epoch"]
    assert load_classifier(trained_run).card["metrics"]["accuracy"] == pytest.approx(
        history[best_epoch - 1]["val_acc"], abs=1e-6)
    run_card = load_classifier(trained_run).card
    assert run_card["report"] == str(trained_run / "report" / "report.html") and Path(run_card["report"]).is_file()
    assert load_classifier(exported_model).card["report"] is None


def test_top_predictions_are_sorted_and_capped_at_the_class_count():
    probs = np.array([[0.1, 0.7, 0.2]], dtype=np.float32)
    out = top_predictions(probs, CLASSES, ["a.png"], 5)
    assert out == [{"image": "a.png", "predictions": [
        {"class": "dog", "probability": pytest.approx(0.7)}, {"class": "ship", "probability": pytest.approx(0.2)},
        {"class": "cat", "probability": pytest.approx(0.1)}]}]
    with pytest.raises(AlexnetError):
        top_predictions(probs, CLASSES, ["a.png"], 0)


def predict_json(*args) -> list[dict]:
    result = run_cli("predict", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def assert_same_predictions(a: list[dict], b: list[dict], atol: float = 1e-5) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert [p["class"] for p in x["predictions"]] == [p["class"] for p in y["predictions"]]
        np.testing.assert_allclose([p["probability"] for p in x["predictions"]],
                                   [p["probability"] for p in y["predictions"]], atol=atol)


def test_predict_on_an_export_runs_without_torch(exported_model, trained_run, images):
    paths = [str(p) for p in images[:3]]
    blocked = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "predict", str(exported_model), *paths, "--json",
                              "--top-k", "3"], capture_output=True, text=True, timeout=120)
    assert blocked.returncode == 0, blocked.stderr
    out = json.loads(blocked.stdout)
    assert [r["image"] for r in out] == paths
    assert_same_predictions(out, predict_json(trained_run / "best.pt", *paths, "--top-k", "3"))
    assert_same_predictions(out, predict_json(exported_model, *paths, "--top-k", "3", "--backend", "torch"))


def test_predict_table_on_an_export(exported_model, images):
    result = run_cli("predict", exported_model, images[0], "--top-k", "2")
    assert result.returncode == 0, result.stderr
    top = predict_json(exported_model, images[0], "--top-k", "2")[0]["predictions"]
    name, _, rest = result.stdout.strip().partition(": ")
    shown = [(cls, float(pct)) for cls, pct in re.findall(r"(\w+) (\d+\.\d)%", rest)]
    assert name == str(images[0]) and [cls for cls, _ in shown] == [p["class"] for p in top]
    assert all(abs(pct - 100 * p["probability"]) <= 0.05 for (_, pct), p in zip(shown, top))


def test_predict_backend_onnx_on_a_run_is_one_line(trained_run, images):
    result = run_cli("predict", trained_run, images[0], "--backend", "onnx")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "alexnet export" in result.stderr


def test_serve_on_an_export_answers_without_torch(exported_model, images, tmp_path):
    path = images[0]
    with serving(exported_model, tmp_path=tmp_path, block_torch=True) as service:
        answer = httpx.post(service.url + "/predict?name=" + path.name, content=path.read_bytes(),
                            headers={"Content-Type": "image/png"}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert httpx.get(service.url + "/health").json()["backend"] == "onnx"
    assert service.proc.returncode == 0, service.stderr  # 3 if torch had been imported
    expected = predict_json(exported_model, path)[0]
    assert answer.json()["image"] == path.name
    assert_same_predictions([answer.json()], [expected])
