"""The streamed ImageNet-style path end to end: paper preset, top-5, ten-crop, exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.engine.checkpoint import load_checkpoint
from conftest import run_cli

pytestmark = pytest.mark.slow
CLASSES = ["c0", "c1", "c2", "c3", "c4", "c5"]  # six, so top-5 accuracy is defined
# A small stand-in for ImageNet: photos of varied sizes, 67 px crops (the smallest AlexNet input).
FLAGS = ["--preset", "imagenet-paper", "--image-size", "67", "--resize", "80", "--batch-size", "8",
         "--val-split", "0.25", "--quiet", "--no-report", "--seed", "1"]


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for split, n in [("train", 8), ("val", 3)]:
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(70, 130, 2)
                img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
                img[..., c % 3] += 40 * (1 + c // 3)
                Image.fromarray(img).save(root / split / name / f"{i}.{'jpg' if i % 2 else 'png'}")
    return root


def test_paper_preset_streams_trains_evaluates_with_top5_and_ten_crop(photo_folder, tmp_path):
    run = tmp_path / "run"
    result = run_cli("train", "--data", photo_folder, "--epochs", "1", "--out", run, *FLAGS)
    assert result.returncode == 0, result.stderr[-2000:]
    config = json.loads((run / "config.json").read_text())
    assert config["input"]["kind"] == "stream" and config["lighting"] is not None
    assert config["config"]["train"]["schedule"] == "plateau" and config["config"]["model"]["norm"] == "lrn"
    for extra in ([], ["--ten-crop"]):
        out = tmp_path / f"m{len(extra)}.json"
        ev = run_cli("evaluate", run / "best.pt", "--data", photo_folder, "--json", out, *extra)
        assert ev.returncode == 0, ev.stderr[-2000:]
        metrics = json.loads(out.read_text())
        assert metrics["num_samples"] == 18 and metrics["top5"] is not None
        assert "top-5" in ev.stdout
    pred = run_cli("predict", run / "best.pt", next((photo_folder / "val" / "c0").iterdir()), "--json")
    assert pred.returncode == 0 and len(json.loads(pred.stdout)[0]["predictions"]) == 5


def test_streamed_resume_is_bit_exact(photo_folder, tmp_path):
    straight = run_cli("train", "--data", photo_folder, "--epochs", "2", "--out", tmp_path / "a", *FLAGS)
    assert straight.returncode == 0, straight.stderr[-2000:]
    first = run_cli("train", "--data", photo_folder, "--epochs", "2", "--out", tmp_path / "b",
                    "--stop-after-epoch", "1", *FLAGS)
    assert first.returncode == 0, first.stderr[-2000:]
    assert run_cli("train", "--resume", tmp_path / "b", "--quiet").returncode == 0
    a, b = load_checkpoint(tmp_path / "a" / "last.pt")["model"], load_checkpoint(tmp_path / "b" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
