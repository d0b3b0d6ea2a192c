"""Fixtures that build small real-format data: class folders of PNG/JPEG images."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ["cat", "dog", "ship"]


def write_class_folder(root: Path, per_class: int, size: int = 32, seed: int = 0,
                       classes: list[str] = CLASSES) -> Path:
    """Images whose class is visible (a bright colour channel), so a tiny net can learn it."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 100, (size, size, 3), dtype=np.uint8)
            img[..., c % 3] += 120
            Image.fromarray(img).save(root / name / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """DIR/train/<class>/ and DIR/test/<class>/ with 3 classes."""
    root = tmp_path_factory.mktemp("tiny")
    write_class_folder(root / "train", 40, seed=0)
    write_class_folder(root / "test", 10, seed=1)
    return root


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own decoded-data cache, never the user's ~/.cache."""
    monkeypatch.setenv("ALEXNET_DATA", str(tmp_path / "cache"))


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m alexnet ARGS` the way a user would, capturing its output."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "alexnet", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=600)


# The default recipe but unwhitened: the fixture's 108 flat-coloured training images make a near-singular patch
# covariance, and with the default network's conv4/conv5 on 4x4 maps, seed 0 then stays at chance for 2-3 epochs
# (seeds 1 and 2 learn; unwhitened, all do). What these runs feed is evaluate/predict/report, not the recipe.
TRAIN_FLAGS = ["--epochs", "2", "--batch-size", "16", "--lr", "0.05", "--no-whiten", "--quiet"]


@pytest.fixture(scope="session")
def trained_run(tiny_folder, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "tiny"
    cache = tmp_path_factory.mktemp("cache")
    result = run_cli("train", "--data", tiny_folder, "--out", run, *TRAIN_FLAGS, env={"ALEXNET_DATA": str(cache)})
    assert result.returncode == 0, result.stderr
    return run
