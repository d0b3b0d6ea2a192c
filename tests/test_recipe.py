"""A first run on one's own photos: the recipe chosen from the data, validation every epoch, the divergence guard,
and a plain word when the model is no better than chance."""

from __future__ import annotations

import json
import math
import statistics
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet.config import preset_config
from alexnet.config_files import resolve_config
from alexnet.engine.divergence import DivergenceGuard
from alexnet.metrics import chance_p_value, classification_metrics
from alexnet.runs import closing_lines

from conftest import run_cli

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR_ARCHIVE = SHARED / "cifar10-jpeg-train.tar.gz"

# (width, height, mode, format): sizes, aspect ratios, colour modes and formats a folder of phone photos mixes.
PHOTO_KINDS = [(320, 240, "RGB", "JPEG"), (240, 320, "RGB", "JPEG"), (500, 375, "RGB", "JPEG"),
               (200, 200, "L", "PNG"), (400, 300, "RGBA", "PNG"), (150, 120, "P", "PNG"), (640, 360, "RGB", "JPEG"),
               (180, 240, "CMYK", "JPEG")]


def write_photo_folder(root: Path, per_class: int, seed: int = 0, classes: tuple[str, ...] = ("ants", "bees")
                       ) -> list[tuple[int, int]]:
    """Photos of varied sizes and modes whose class shows as a warm or cool tint; returns each file's size."""
    rng = np.random.default_rng(seed)
    sizes = []
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h, mode, fmt = PHOTO_KINDS[(i + c) % len(PHOTO_KINDS)]
            pixels = rng.integers(0, 140, (h, w, 3), dtype=np.uint8)
            pixels[..., 0 if c == 0 else 2] += 100
            img = Image.fromarray(pixels).convert(mode)
            img.save(root / name / f"{i:03d}.{'jpg' if fmt == 'JPEG' else 'png'}", fmt)
            sizes.append((w, h))
    return sizes


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, list[tuple[int, int]]]:
    root = tmp_path_factory.mktemp("photos") / "my_photos"
    return root, write_photo_folder(root, 20)


def resolved(source: Path | str, **flags) -> object:
    return resolve_config(None, {"data": {"source": str(source)}, "model": {}, "train": dict(flags)}, None)


# ----------------------------------------------------------------------------- the recipe


def test_a_photo_folder_gets_the_photo_recipe_and_a_line_that_describes_the_data(photos):
    root, sizes = photos
    cfg = resolved(root)
    width = int(statistics.median(w for w, _ in sizes))  # every file's header, read by the test itself
    height = int(statistics.median(h for _, h in sizes))
    assert cfg.recipe["name"] == "small photo folder"
    assert cfg.recipe["line"].startswith(f"recipe: small photo folder (40 images, 2 classes, median {width}x{height})"
                                         " -> alexnet-cifar at 96 px, batch 32, lr 0.05")
    assert "validation every epoch" in cfg.recipe["line"]
    assert (cfg.data.loader, cfg.data.image_size, cfg.data.store_size) == ("memory", 96, 96)
    assert cfg.data.crop_scale > 0 and cfg.train.val_every == 1 and cfg.preset is None
    # 32 of the 40 photos train (a fifth is held out): 25,000 / 32 = 781 passes, held to the 100 at most.
    assert cfg.train.epochs == 100


def test_the_users_flags_win_over_the_recipe(photos):
    root, _ = photos
    cfg = resolve_config(None, {"data": {"source": str(root), "image_size": 64}, "model": {},
                                "train": {"lr": 0.01, "batch_size": 8, "epochs": 3}}, None)
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.epochs) == (0.01, 8, 3)
    assert (cfg.data.image_size, cfg.data.store_size) == (64, 64)  # the stored side follows the input side
    assert "alexnet-cifar at 64 px, batch 8, lr 0.01, 3 epochs" in cfg.recipe["line"]
    assert resolve_config("cifar10", {"data": {"source": str(root)}, "model": {}, "train": {}}, None).recipe is None


def test_a_folder_of_cifar_sized_images_keeps_todays_default_recipe(tiny_folder):
    cfg = resolved(tiny_folder)
    assert cfg.recipe["name"] == "small images"
    assert replace(cfg, recipe=None) == replace(preset_config(None), data=replace(preset_config(None).data,
                                                                                 source=str(tiny_folder)))


def test_the_cifar_archive_keeps_todays_recipe_after_reading_a_few_headers():
    if not CIFAR_ARCHIVE.is_file():
        pytest.skip("the shared CIFAR-10 JPEG archive is not beside the repository")
    cfg = resolved(CIFAR_ARCHIVE)
    assert cfg.recipe["line"].startswith("recipe: small images (median 32x32) -> alexnet-cifar, batch 256, lr 0.4")
    default = preset_config(None)
    assert (cfg.model, cfg.train) == (default.model, default.train)


def test_a_photo_archive_is_profiled_like_the_folder(photos, tmp_path):
    root, _ = photos
    archive = tmp_path / "photos.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root, arcname="train")
    line = resolved(archive).recipe["line"]
    assert line.split(" -> ")[0] == resolved(root).recipe["line"].split(" -> ")[0]


def test_training_on_photos_prints_the_recipe_validates_every_epoch_and_saves_the_choice(photos, tmp_path):
    root, _ = photos
    out = tmp_path / "run"
    result = run_cli("train", "--data", root, "--out", out, "--epochs", "3", "--no-report")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()  # progress goes to stderr, the closing lines to stdout
    assert lines[0].startswith("recipe: small photo folder (40 images, 2 classes")
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 3 and all("val loss" in line for line in epochs)
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["recipe"]["name"] == "small photo folder"
    assert saved["config"]["recipe"]["profile"]["images"] == 40
    assert saved["config"]["data"]["loader"] == "memory" and saved["val_class_counts"] == [4, 4]
    history = json.loads((out / "history.json").read_text())
    assert [math.isfinite(row["val_acc"]) for row in history] == [True] * 3
    # Evaluation and prediction bring a photo through the same 96 px square.
    evaluated = run_cli("evaluate", out / "best.pt", "--split", "val")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "chance is 50.00% (always answering 'ants', the largest class)" in evaluated.stdout


# ----------------------------------------------------------------------------- the divergence guard


def test_the_guard_fires_when_the_loss_runs_away_from_its_start():
    guard = DivergenceGuard(num_classes=2)
    assert guard.observe(0.75) is False  # the first step sets the start
    assert guard.observe(46.9) is True  # (0.75 + 46.9) / 2 = 23.8 > 10 x 0.75


def test_the_guard_ignores_a_falling_loss_and_one_unlucky_batch():
    guard = DivergenceGuard(num_classes=2)
    # A spike to 4x the start and back, as the presets' first epochs show: the mean of the last five steps
    # peaks at (0.64 + 0.62 + 4.0 + 2.8 + 1.2) / 5 = 1.85, far under 10 x 0.70.
    losses = [0.70, 0.68, 0.66, 0.64, 0.62, 4.0, 2.8, 1.2, 0.6, 0.55]
    assert [guard.observe(x) for x in losses] == [False] * len(losses)
    assert guard.threshold == pytest.approx(10 * 0.70)
    assert guard.observe(30.0) is True  # (2.8 + 1.2 + 0.6 + 0.55 + 30) / 5 = 7.03 > 7.0


def test_a_pretrained_start_near_zero_is_floored_at_a_uniform_guess():
    guard = DivergenceGuard(num_classes=10)
    assert [guard.observe(x) for x in (0.01, 0.05, 0.2, 1.0, 2.0)] == [False] * 5  # 10 x 0.01 would have fired
    assert guard.start == pytest.approx(math.log(10))


def test_a_diverging_rate_restarts_lower_and_stops_with_one_line_after_three_tries(photos, tmp_path):
    root, _ = photos
    out = tmp_path / "run"
    result = run_cli("train", "--data", root, "--out", out, "--epochs", "4", "--lr", "400", "--warmup-epochs", "0",
                     "--no-report")
    assert result.returncode == 2
    assert "restarting from fresh weights at --lr 100" in result.stderr
    assert "restarting from fresh weights at --lr 25" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("alexnet train: error: ") and "stopped after 3 tries (--lr 400, 100, 25)" in last
    assert "Traceback" not in result.stderr
    tries = json.loads((out / "diverged.json").read_text())
    assert [t["lr"] for t in tries] == [400, 100]
    assert all(t["loss"] > 10 * t["start"] for t in tries)


def test_a_rate_that_diverges_only_at_first_ends_in_a_trained_run(photos, tmp_path):
    root, _ = photos
    out = tmp_path / "run"
    # Unclipped, 8 runs away on these photos at batch 32 (the loss near 115 after one step), so does 2 (near 22);
    # a sixteenth of it, 0.5, trains.
    result = run_cli("train", "--data", root, "--out", out, "--epochs", "3", "--lr", "8", "--warmup-epochs", "0",
                     "--clip-grad", "0", "--no-report")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("restarting from fresh weights") == 2
    assert "the loss diverged and training restarted at a lower --lr" in result.stdout
    saved = json.loads((out / "config.json").read_text())["config"]["train"]
    tries = json.loads((out / "diverged.json").read_text())
    assert [t["lr"] for t in tries] == [8, 2] and saved["lr"] == 0.5 and (out / "best.pt").is_file()


@pytest.fixture(scope="module")
def cifar_sample(tmp_path_factory) -> Path:
    """1,000 CIFAR-10 images (100 a class) from the shared JPEG archive, as a class folder."""
    if not CIFAR_ARCHIVE.is_file():
        pytest.skip("the shared CIFAR-10 JPEG archive is not beside the repository")
    root = tmp_path_factory.mktemp("cifar") / "sample"
    taken: dict[str, int] = {}
    with tarfile.open(CIFAR_ARCHIVE) as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 3 and taken.get(parts[1], 0) < 100:
                taken[parts[1]] = taken.get(parts[1], 0) + 1
                (root / parts[1]).mkdir(parents=True, exist_ok=True)
                (root / parts[1] / parts[2]).write_bytes(tar.extractfile(member).read())
            if len(taken) == 10 and min(taken.values()) == 100:
                break
    return root


@pytest.mark.parametrize("preset", ["cifar10-fast", "cifar10", "cifar10-best"])
def test_the_guard_stays_quiet_on_the_presets(cifar_sample, preset, tmp_path):
    out = tmp_path / preset
    result = run_cli("train", "--data", cifar_sample, "--out", out, "--preset", preset, "--epochs", "3",
                     "--batch-size", "64", "--no-report")
    assert result.returncode == 0, result.stderr
    assert "restarting" not in result.stderr and not (out / "diverged.json").exists()
    assert "recipe:" not in result.stderr  # a preset is the recipe


# ----------------------------------------------------------------------------- chance


def test_the_chance_p_value_is_the_binomial_tail():
    exact = sum(math.comb(24, k) for k in range(14, 25)) / 2 ** 24  # integers: no rounding until the division
    assert chance_p_value(14, 24, 0.5) == pytest.approx(exact, rel=1e-9)
    exact = sum(math.comb(30, k) * 0.3 ** k * 0.7 ** (30 - k) for k in range(15, 31))
    assert chance_p_value(15, 30, 0.3) == pytest.approx(exact, rel=1e-9)


def test_metrics_name_the_largest_class_and_whether_the_model_beats_it():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 3)
    always_zero = np.eye(3)[np.zeros(12, dtype=int)]
    m = classification_metrics(always_zero, labels, ["ants", "bees", "wasps"])
    assert m["accuracy"] == 0.5 and m["chance"]["accuracy"] == 0.5 and m["chance"]["class"] == "ants"
    assert m["chance"]["better"] is False
    perfect = np.eye(3)[labels]
    assert classification_metrics(perfect, labels, ["ants", "bees", "wasps"])["chance"]["better"] is True


def write_finished_run(out: Path, val_acc: float, counts: list[int]) -> None:
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"config": {"train": {"epochs": 1}, "data": {}, "model": {}},
                                                 "classes": ["ants", "bees"], "val_class_counts": counts}))
    (out / "history.json").write_text(json.dumps([{"epoch": 1, "val_acc": val_acc, "seconds": 1.0}]))


def test_the_end_of_a_run_says_plainly_when_it_is_no_better_than_chance(tmp_path):
    write_finished_run(tmp_path / "coin", 13 / 24, [12, 12])  # 13 of 24: P(luck does as well) = 0.42
    said = "\n".join(closing_lines(tmp_path / "coin"))
    assert "warning: 54.17% on 24 validation images is not better than chance" in said
    assert "always answering 'ants'" in said and "--preset finetune" in said
    write_finished_run(tmp_path / "good", 22 / 24, [12, 12])
    said = "\n".join(closing_lines(tmp_path / "good"))
    assert "warning" not in said and "chance is 50.00%" in said and "91.67% is above it" in said


def test_the_report_headline_compares_with_chance(trained_run, tmp_path):
    result = run_cli("report", trained_run, "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "report" / "report.html").read_text()
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    counts = [metrics["per_class"][c]["support"] for c in metrics["classes"]]
    assert "Chance (largest class)" in page
    assert f"{max(counts) / sum(counts) * 100:.2f}%" in page
