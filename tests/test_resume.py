"""Checkpoints: exact resume, atomic writes, the last good checkpoint survives a failed run."""

from __future__ import annotations

import json

import pytest
import torch

import alexnet
from alexnet.engine import trainer
from alexnet.engine.checkpoint import load_checkpoint, save_checkpoint
from alexnet.errors import AlexnetError

OPTIONS = dict(epochs=4, batch_size=16, lr=0.05, device="cpu", report=False, progress=False)


def weights(run):
    return load_checkpoint(run / "last.pt")["model"]


@pytest.mark.parametrize("extra", [{}, {"ema": 0.9, "whiten": True}, {"amp": "fp16"}],
                         ids=["plain", "ema-whiten", "fp16-loss-scaling"])
def test_resume_is_bit_exact(tiny_folder, tmp_path, extra):
    straight = alexnet.train(data=str(tiny_folder / "train"), out=tmp_path / "straight", **OPTIONS, **extra)
    split = alexnet.train(data=str(tiny_folder / "train"), out=tmp_path / "split", stop_after_epoch=2, **OPTIONS,
                          **extra)
    assert load_checkpoint(split / "last.pt")["epoch"] == 2
    alexnet.train(resume=split, progress=False)
    a, b = weights(straight), weights(split)
    if "ema" in extra:
        a, b = load_checkpoint(straight / "last.pt")["ema"], load_checkpoint(split / "last.pt")["ema"]
    if "amp" in extra:  # the loss scale travels with the run, so a resumed run scales as the straight one
        assert load_checkpoint(split / "last.pt")["scaler"] == load_checkpoint(straight / "last.pt")["scaler"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert load_checkpoint(split / "last.pt")["epoch"] == 4
    history = load_checkpoint(split / "last.pt")["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]


def test_training_over_an_existing_run_is_refused(tiny_folder, tmp_path):
    run = alexnet.train(data=str(tiny_folder / "train"), out=tmp_path / "r", **{**OPTIONS, "epochs": 1})
    before = (run / "last.pt").read_bytes()
    with pytest.raises(AlexnetError, match="already holds a run"):
        alexnet.train(data=str(tiny_folder / "train"), out=run, **{**OPTIONS, "epochs": 1})
    assert (run / "last.pt").read_bytes() == before


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_folder, tmp_path, monkeypatch):
    run = alexnet.train(data=str(tiny_folder / "train"), out=tmp_path / "r", stop_after_epoch=1, **OPTIONS)
    before = (run / "last.pt").read_bytes()
    real = trainer.F.cross_entropy
    monkeypatch.setattr(trainer.F, "cross_entropy", lambda *a, **k: real(*a, **k) * float("nan"))
    with pytest.raises(AlexnetError, match="loss became nan.*last good checkpoint is kept"):
        alexnet.train(resume=run, progress=False)
    assert (run / "last.pt").read_bytes() == before
    assert load_checkpoint(run / "last.pt")["epoch"] == 1


def test_a_failed_write_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})

    def broken_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_val_every_validates_on_schedule_and_always_leaves_best_pt(tiny_folder, tmp_path):
    run = alexnet.train(data=str(tiny_folder / "train"), out=tmp_path / "r", val_split=0.25, val_every=2,
                        **{**OPTIONS, "epochs": 3})
    history = load_checkpoint(run / "last.pt")["history"]
    validated = [h["epoch"] for h in history if h["val_acc"] == h["val_acc"]]
    assert validated == [2, 3]  # every 2nd epoch, and the last one
    # history.json stays strict JSON (no NaN literal, which browsers and jq reject): null when not validated.
    on_disk = json.loads((run / "history.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert [h["val_acc"] is None for h in on_disk] == [True, False, False]
    best = load_checkpoint(run / "best.pt")
    assert best["epoch"] in (2, 3) and best["best_val_acc"] == max(history[1]["val_acc"], history[2]["val_acc"])
    # Interrupted before any validation: best.pt still holds the latest weights.
    early = alexnet.train(data=str(tiny_folder / "train"), out=tmp_path / "e", val_split=0.25, val_every=0,
                          stop_after_epoch=1, **{**OPTIONS, "epochs": 3})
    assert load_checkpoint(early / "best.pt")["epoch"] == 1
