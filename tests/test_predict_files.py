"""`alexnet predict` over folders and globs: every image found, in batches, to a table, JSON or a CSV file."""

from __future__ import annotations

import csv
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet.errors import AlexnetError
from alexnet.predictions import expand_images, predict_stream

from conftest import BLOCK_TORCH, run_cli


def touch_images(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(root / name)


def test_folders_are_searched_recursively_in_a_stable_order_and_globs_expand(tmp_path):
    touch_images(tmp_path, ["b/2.png", "b/1.jpg", "a/z.webp", "a/.hidden.png", ".cache/x.png", "a/deep/y.gif"])
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    found = [p.relative_to(tmp_path).as_posix() for p in expand_images([str(tmp_path)])]
    assert found == ["a/z.webp", "a/deep/y.gif", "b/1.jpg", "b/2.png"]
    globbed = [p.relative_to(tmp_path).as_posix() for p in expand_images([f"{tmp_path}/**/*.png", str(tmp_path / "b/1.jpg")])]
    assert globbed == ["b/2.png", "b/1.jpg"]  # hidden entries are not matched by a glob's * either


@pytest.mark.parametrize("arg, message", [("missing.jpg", "does not exist"), ("*.nope", "no image file matches"),
                                          ("empty", "holds no image files")])
def test_an_argument_that_names_no_image_is_one_error(tmp_path, arg, message):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AlexnetError, match=message):
        list(expand_images([str(tmp_path / arg)]))


def test_images_are_predicted_in_batches_as_they_are_found(tmp_path):
    touch_images(tmp_path, [f"{i:03d}.png" for i in range(10)])
    calls = []

    def predict(paths, top_k):
        calls.append(len(paths))
        return [{"image": str(p), "predictions": []} for p in paths]

    stream = predict_stream(predict, [str(tmp_path)], 1, batch_size=4)
    first = list(itertools.islice(stream, 3))
    assert calls == [4] and [Path(r["image"]).name for r in first] == ["000.png", "001.png", "002.png"]
    assert len(list(stream)) == 7 and calls == [4, 4, 2]


def reference_probabilities(model_dir: Path, files: list[Path]) -> np.ndarray:
    """onnxruntime on the exported graph, images read with PIL: independent of predict's own code."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])  # 32 px, the model's side
    return session.run(None, {"images": images})[0]


def test_a_folder_to_csv_holds_every_image_with_the_graphs_probabilities(exported_model, tiny_folder, tmp_path):
    out = tmp_path / "predictions.csv"
    result = run_cli("predict", exported_model, tiny_folder / "test", "--csv", out, "--top-k", "2",
                     "--batch-size", "7")
    assert result.returncode == 0, result.stderr
    files = sorted((tiny_folder / "test").rglob("*.png"))
    assert result.stdout.strip() == f"{len(files)} predictions written to {out}"
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["image", "class_1", "probability_1", "class_2", "probability_2"]
    assert [Path(r[0]) for r in rows[1:]] == files
    probs = reference_probabilities(exported_model, files)
    classes = json.loads((exported_model / "config.json").read_text())["classes"]
    for row, p in zip(rows[1:], probs):
        best = np.argsort(-p)[:2]
        assert row[1::2] == [classes[i] for i in best]
        assert np.allclose([float(v) for v in row[2::2]], p[best], atol=1e-5)


def test_a_bad_image_leaves_an_existing_csv_untouched(exported_model, tiny_folder, tmp_path):
    images = tmp_path / "images"
    touch_images(images, ["a.png"])
    (images / "b.jpg").write_bytes(b"this is not a jpeg")
    out = tmp_path / "predictions.csv"
    out.write_text("yesterday's predictions\n")
    result = run_cli("predict", exported_model, images, "--csv", out)
    assert result.returncode == 2 and "b.jpg" in result.stderr and "Traceback" not in result.stderr
    assert out.read_text() == "yesterday's predictions\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "predictions.csv"]  # no temp file left


def test_folder_prediction_on_an_exported_model_never_imports_torch(exported_model, tiny_folder):
    import subprocess

    result = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "predict", str(exported_model),
                             f"{tiny_folder}/test/*/000[0-2].png", "--json", "--top-k", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert len(records) == 9 and all(len(r["predictions"]) == 1 for r in records)


def test_files_written_atomically_get_the_usual_permissions(tmp_path):
    # mkstemp makes its temp file private (0600); a CSV or JSON meant to be shared must not stay so.
    import os

    from alexnet.atomic import atomic_write

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "out.csv", lambda tmp: Path(tmp).write_text("image\n"))
    finally:
        os.umask(old)
    assert (tmp_path / "out.csv").stat().st_mode & 0o777 == 0o644
