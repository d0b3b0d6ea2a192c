"""The loop's hooks: user callbacks, early stopping, TensorBoard."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import replace

import pytest

import alexnet
from alexnet.cli import main
from alexnet.config import RunConfig, TrainConfig, apply_overrides, preset_config, validate
from alexnet.engine.callbacks import Callback, validations_without_improvement
from alexnet.engine.checkpoint import load_checkpoint
from alexnet.engine.trainer import build_callbacks
from alexnet.errors import AlexnetError

OPTIONS = dict(epochs=2, batch_size=16, lr=0.05, widths=(8, 8, 8, 8, 8), whiten=False, report=False, device="cpu",
               seed=1, val_every=1, progress=False)


class Recorder(Callback):
    def __init__(self):
        self.events, self.steps, self.epochs = [], [], []

    def on_train_begin(self, run):
        self.events.append("train_begin")

    def on_epoch_begin(self, run, epoch):
        self.events.append(f"epoch_begin {epoch}")

    def on_step_end(self, run, step, logs):
        self.events.append("step")
        self.steps.append((step, dict(logs)))

    def on_epoch_end(self, run, epoch, logs):
        self.events.append(f"epoch_end {epoch}")
        self.epochs.append(dict(logs))

    def on_train_end(self, run):
        self.events.append(f"train_end {run.error is None}")


def test_user_callbacks_see_every_hook_in_order(tiny_folder, tmp_path):
    recorder = Recorder()
    run = alexnet.train(data=str(tiny_folder / "train"), out=tmp_path / "r", callbacks=[recorder], **OPTIONS)
    # 108 training images in batches of 16: 6 steps an epoch
    assert recorder.events == ["train_begin", "epoch_begin 0", *["step"] * 6, "epoch_end 0",
                               "epoch_begin 1", *["step"] * 6, "epoch_end 1", "train_end True"]
    assert [s for s, _ in recorder.steps] == [0, 1, 2, 3, 4, 5] * 2
    assert [logs["global_step"] for _, logs in recorder.steps] == list(range(1, 13))
    assert [logs["last"] for _, logs in recorder.steps] == ([False] * 5 + [True]) * 2
    first = recorder.steps[0][1]
    assert first["images"] == 16 and 0 <= first["accuracy"] <= 1 and first["lr"] > 0 and first["loss"] > 0
    # what on_epoch_end saw is what history.json holds
    history = json.loads((run / "history.json").read_text())
    for logs, row in zip(recorder.epochs, history):
        assert {k: logs[k] for k in row} == pytest.approx(row)
    assert [logs["improved"] for logs in recorder.epochs][0] is True


def test_a_callback_can_stop_training_with_a_reason_kept_in_the_history(tiny_folder, tmp_path):
    class StopAfterFirstEpoch(Callback):
        def on_epoch_end(self, run, epoch, logs):
            run.request_stop("enough for today")

    run = alexnet.train(data=str(tiny_folder / "train"), out=tmp_path / "r", callbacks=[StopAfterFirstEpoch()],
                        **{**OPTIONS, "epochs": 3})
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1] and history[0]["stopped"] == "enough for today"
    assert load_checkpoint(run / "last.pt")["history"][0]["stopped"] == "enough for today"


def test_validations_without_improvement_counts_from_the_last_real_gain():
    rows = [{"epoch": i + 1, "val_acc": acc} for i, acc in enumerate([0.5, 0.6, float("nan"), 0.6, 0.605, 0.59])]
    assert validations_without_improvement(rows[:2], 0.0) == (0, rows[1])
    assert validations_without_improvement(rows, 0.0) == (1, rows[4])  # 0.605 beat 0.6; 0.59 did not
    assert validations_without_improvement(rows, 0.01) == (3, rows[1])  # +0.005 is not more than 0.01
    assert validations_without_improvement([{"epoch": 1, "val_acc": float("nan")}], 0.0) == (0, None)


def test_early_stopping_stops_and_best_pt_is_the_best_epoch(tiny_folder, tmp_path, capsys):
    run = tmp_path / "r"
    # No gain can exceed 1.0 (accuracy is a fraction), so the second validation already breaks a patience of 1.
    assert main(["train", "--data", str(tiny_folder / "train"), "--out", str(run), "--epochs", "6",
                 "--early-stop", "1", "--min-delta", "1", "--batch-size", "16", "--lr", "0.05", "--widths",
                 "8,8,8,8,8", "--no-whiten", "--no-report", "--device", "cpu", "--seed", "1"]) == 0
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]  # validated every epoch although the recipe says at the end
    assert "early stopping" in history[-1]["stopped"] and "stopped" not in history[0]
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert rows[-1]["stopped"] == history[-1]["stopped"] and rows[0]["stopped"] == ""
    best_epoch = max(history, key=lambda h: h["val_acc"])["epoch"]  # the first of the best
    assert load_checkpoint(run / "best.pt")["epoch"] == best_epoch
    assert load_checkpoint(run / "best.pt")["best_val_acc"] == max(h["val_acc"] for h in history)
    assert "early stopping" in capsys.readouterr().err
    # resumed with more epochs, it stops again at once: the rule is read from the history
    alexnet.train(resume=run, epochs=8, progress=False)
    assert len(json.loads((run / "history.json").read_text())) == 2


def test_early_stopping_needs_validations_to_count():
    with pytest.raises(AlexnetError, match="--early-stop.*--val-split"):
        validate(apply_overrides(preset_config(None), {"train": {"early_stop": 2}, "data": {"val_split": 0.0}}))
    with pytest.raises(AlexnetError, match="--early-stop counts validations"):
        validate(apply_overrides(preset_config(None), {"train": {"early_stop": 2, "val_every": 0}}))
    cfg = apply_overrides(preset_config(None), {"train": {"early_stop": 2}})  # the recipe validates at the end only
    assert cfg.train.val_every == 1


def test_tensorboard_event_files_hold_the_scalars_and_pictures(tiny_folder, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = alexnet.train(data=str(tiny_folder / "train"), out=tmp_path / "r", tensorboard=True, **OPTIONS)
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    history = json.loads((run / "history.json").read_text())
    for key in ("loss", "accuracy", "lr", "images_per_s"):
        assert [e.step for e in events.Scalars(f"step/{key}")] == list(range(1, 13))
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        values = [e.value for e in events.Scalars(f"epoch/{key}")]
        assert values == pytest.approx([h[key] for h in history], rel=1e-6, abs=1e-7)  # stored as float32
    assert [e.value for e in events.Scalars("step/lr")][5] == pytest.approx(history[0]["lr"])
    assert {"confusion_matrix", "examples"} <= set(tags["images"])
    picture = events.Images("confusion_matrix")[-1]
    assert picture.width > 100 and picture.height > 100 and picture.encoded_image_string[:4] == b"\x89PNG"


def test_tensorboard_without_its_package_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    cfg = replace(RunConfig(), train=TrainConfig(tensorboard=True))
    with pytest.raises(AlexnetError, match=r"pip install 'alexnet\[tensorboard\]'"):
        build_callbacks(cfg)
