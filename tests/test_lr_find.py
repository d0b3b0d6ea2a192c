"""`alexnet lr-find`: the learning-rate range test, its smoothing, its suggestion and what it writes."""

from __future__ import annotations

import hashlib
import json
import math
import shutil

import numpy as np
import pytest

from alexnet.engine.lr_find import rate_schedule, smooth, suggest
from conftest import run_cli

# A narrow network without whitening: the test is about the range test, not the recipe.
SMALL = ["--widths", "8,16,16,32,32", "--no-whiten", "--optimizer", "sgd", "--batch-size", "16"]


def test_smoothing_is_a_bias_corrected_moving_average():
    # Bias correction makes a constant loss read as itself from the first step on.
    assert smooth([2.5] * 5) == pytest.approx([2.5] * 5)
    # Step t weighs observation i by beta^(t-i), normalised: a weighted mean of what was seen.
    losses = [3.0, 1.0, 2.0]
    for t in range(1, 4):
        weights = [0.9 ** (t - i) for i in range(1, t + 1)]
        expected = sum(w * x for w, x in zip(weights, losses)) / sum(weights)
        assert smooth(losses, beta=0.9)[t - 1] == pytest.approx(expected)


def test_rates_grow_geometrically_from_start_to_end():
    lrs = rate_schedule(1e-6, 10.0, 8)
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(10.0)
    assert np.allclose(lrs[1:] / lrs[:-1], 10 ** (7 / 7))


def test_the_suggestion_is_the_steepest_fall_before_the_minimum():
    lrs = list(np.logspace(-5, 0, 101))  # 0.05 decades apart
    x = np.log10(lrs)
    # Falls fastest at 10^-2.5, bottoms out near 10^-1, then shoots up.
    losses = 2 - np.tanh(2 * (x + 2.5)) + np.where(x > -1, 30 * (x + 1) ** 2, 0)
    s = suggest(lrs, list(losses))
    assert math.log10(s["steepest"]) == pytest.approx(-2.5, abs=0.051)
    assert s["minimum"] == lrs[int(np.argmin(losses))] and s["minimum/10"] == pytest.approx(s["minimum"] / 10)
    # A loss that only rises has no descent to measure: a tenth of the minimum's rate (the first one).
    assert suggest(lrs[:10], list(range(10)))["steepest"] == pytest.approx(lrs[0] / 10)


def digest(folder):
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_range_test_writes_a_plot_and_numbers_and_leaves_a_run_beside_them_untouched(tiny_folder, trained_run,
                                                                                      tmp_path):
    runs = tmp_path / "runs"
    run = shutil.copytree(trained_run, runs / "tiny")
    before = digest(run)
    result = run_cli("lr-find", "--data", tiny_folder, *SMALL, "--steps", "60", "--out", runs / "lr.png")
    assert result.returncode == 0, result.stderr
    assert digest(run) == before, "lr-find must not touch a run folder"
    assert sorted(p.name for p in runs.iterdir()) == ["lr.json", "lr.png", "tiny"]
    assert (runs / "lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    numbers = json.loads((runs / "lr.json").read_text())
    lrs, smoothed = np.array(numbers["lrs"]), np.array(numbers["smoothed"])
    assert lrs[0] == pytest.approx(1e-6) and np.allclose(lrs[1:] / lrs[:-1], 1e7 ** (1 / 59))
    assert len(numbers["losses"]) == len(lrs) == len(smoothed)
    # The expected shape: the smoothed loss falls below where it started, and the test stops once it has
    # diverged (a rate of 10 is far beyond what this network trains at), before the last step.
    assert smoothed.min() < smoothed[0]
    assert numbers["stopped"] == "diverged"
    assert len(lrs) < 60 and smoothed[-1] > 4 * smoothed.min()
    suggested = numbers["suggested_lr"]
    assert lrs[0] <= suggested <= lrs[int(smoothed.argmin())]
    assert f"suggested --lr {suggested:.3g}" in result.stdout


def test_a_bad_out_is_one_line(tiny_folder, tmp_path):
    result = run_cli("lr-find", "--data", tiny_folder, *SMALL, "--out", tmp_path / "lr.txt")
    assert result.returncode == 2 and "--out" in result.stderr and result.stderr.count("\n") == 1
