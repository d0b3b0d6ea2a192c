"""Bad input: one line naming the file or flag, a non-zero exit, never a traceback."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from conftest import run_cli, write_class_folder

FAST = ["--epochs", "1", "--batch-size", "16", "--quiet", "--no-report"]


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_data_path(tmp_path):
    assert_one_line_error(run_cli("train", "--data", tmp_path / "nope", *FAST), str(tmp_path / "nope"))


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run_cli("train", "--data", tmp_path / "empty", *FAST), "no images")


def test_single_class_folder(tmp_path):
    write_class_folder(tmp_path / "one", 5, classes=["cat"])
    assert_one_line_error(run_cli("train", "--data", tmp_path / "one", *FAST), "1 class")


def test_corrupt_and_truncated_images_are_named_and_counted(tmp_path):
    root = write_class_folder(tmp_path / "data", 10)
    good = (root / "cat" / "0000.png").read_bytes()
    (root / "cat" / "0001.png").write_bytes(good[: len(good) // 2])
    (root / "dog" / "0002.png").write_bytes(b"not an image at all")
    result = run_cli("train", "--data", root, *FAST)
    assert_one_line_error(result, "2 unreadable images")
    assert "0001.png" in result.stderr or "0002.png" in result.stderr


@pytest.mark.parametrize("flags, name", [
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "-3"], "--batch-size"),
    (["--lr", "-1"], "--lr"),
    (["--val-split", "1.5"], "--val-split"),
    (["--image-size", "4"], "--image-size"),
    (["--label-smoothing", "2"], "--label-smoothing"),
    (["--model", "resnet"], "resnet"),
    (["--device", "tpu"], "--device"),
    (["--preset", "nope"], "--preset"),
    (["--cutout", "-2"], "--cutout"),
    (["--cutout", "8", "--loader", "stream"], "--cutout"),
    (["--pools", "1,7"], "--pools"),
    (["--bn-bias-lr", "0"], "--bn-bias-lr"),
    (["--time-limit", "-5"], "--time-limit"),
    (["--time-limit", "30", "--schedule", "plateau"], "--time-limit"),
    (["--res-start", "16", "--no-global-pool"], "--global-pool"),
    (["--res-start", "4", "--global-pool"], "--res-start"),
    (["--res-start", "40", "--global-pool"], "--res-start 40"),
    (["--res-start", "16", "--global-pool", "--res-ramp", "0"], "--res-ramp"),
    (["--res-start", "16", "--global-pool", "--loader", "stream"], "--res-start"),
])
def test_flags_out_of_range(tiny_folder, tmp_path, flags, name):
    assert_one_line_error(run_cli("train", "--data", tiny_folder, "--out", tmp_path / "r", *FAST, *flags), name)
    assert not (tmp_path / "r" / "last.pt").exists()


def test_file_that_is_not_a_checkpoint(tmp_path):
    bogus = tmp_path / "model.pt"
    bogus.write_text("hello")
    assert_one_line_error(run_cli("evaluate", bogus, "--data", tmp_path), "model.pt")


def test_missing_checkpoint(tmp_path):
    assert_one_line_error(run_cli("predict", tmp_path / "none.pt", tmp_path / "x.png"), "none.pt")


class Payload:
    def __reduce__(self):
        import os
        return (os.system, (f"touch {Payload.marker}",))


def test_checkpoint_with_pickle_payload_is_refused_without_running_it(tmp_path):
    Payload.marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "alexnet-checkpoint", "version": 1, "model": Payload()}, evil)
    result = run_cli("evaluate", evil, "--data", tmp_path)
    assert_one_line_error(result, "evil.pt")
    assert not Payload.marker.exists(), "loading a checkpoint must never execute code"


def test_checkpoint_of_another_class_count(tiny_folder, tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", "--data", tiny_folder, "--out", run, *FAST).returncode == 0
    other = write_class_folder(tmp_path / "other", 5, classes=["a", "b"])
    assert_one_line_error(run_cli("evaluate", run / "best.pt", "--data", other, "--split", "val"), "classes")


def test_checkpoint_of_another_model(tiny_folder, tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", "--data", tiny_folder, "--out", run, *FAST).returncode == 0
    state = torch.load(run / "best.pt", weights_only=True)
    state["config"]["model"]["widths"] = [8, 8, 8, 8, 8]  # claims another architecture than its weights
    torch.save(state, tmp_path / "mixed.pt")
    assert_one_line_error(run_cli("evaluate", tmp_path / "mixed.pt", "--data", tiny_folder), "do not fit")


def test_unreadable_image_for_predict(tiny_folder, tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", "--data", tiny_folder, "--out", run, *FAST).returncode == 0
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    assert_one_line_error(run_cli("predict", run / "best.pt", tmp_path / "broken.jpg"), "broken.jpg")
