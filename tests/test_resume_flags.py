"""Flags on --resume: those that leave the run's results as they are take effect and are recorded in
config.json; one that would change them is refused in one line, before anything in the run folder is touched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import alexnet
from alexnet import api
from alexnet.cli import main
from alexnet.config import preset_config
from alexnet.engine import callbacks
from alexnet.engine.checkpoint import load_checkpoint
from alexnet.engine.trainer import resolve_config
from alexnet.errors import AlexnetError

from conftest import run_cli

# A small network, validated every epoch (so --early-stop can act on resume); the report on, as by default.
OPTIONS = dict(epochs=2, batch_size=16, lr=0.05, widths=(8, 8, 8, 8, 8), whiten=False, device="cpu", val_every=1)


@pytest.fixture(scope="module")
def stopped(tiny_folder, tmp_path_factory) -> Path:
    """A 2-epoch run stopped after its first epoch (report on, though none was drawn: it is not what is tested)."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALEXNET_DATA", str(tmp_path_factory.mktemp("cache")))
        mp.setattr(api, "report", lambda *a, **k: None)
        alexnet.train(data=str(tiny_folder / "train"), out=run, stop_after_epoch=1, progress=False, **OPTIONS)
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    return run


@pytest.fixture
def run(stopped, tmp_path) -> Path:
    """A copy of `stopped` for one test to resume."""
    return Path(shutil.copytree(stopped, tmp_path / "run"))


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_safe_flags_take_effect_on_resume_and_are_recorded(run, monkeypatch):
    saves = []
    real = callbacks.save_checkpoint

    def recording(path, state):
        saves.append((Path(path).name, state["epoch"], state["step"]))
        real(path, state)

    monkeypatch.setattr(callbacks, "save_checkpoint", recording)
    steps = load_checkpoint(run / "last.pt")["global_step"]  # one epoch's steps
    assert main(["train", "--resume", str(run), "--save-every-steps", "2", "--no-report", "--early-stop", "5",
                 "--workers", "1", "--quiet"]) == 0
    # last.pt inside epoch 2 every 2nd step (the run's global steps), then at its end
    inside = [step for name, epoch, step in saves if name == "last.pt" and step]
    assert inside == [s for s in range(1, steps) if (steps + s) % 2 == 0] and inside
    assert ("last.pt", 2, 0) in saves
    assert not (run / "report").exists()  # --no-report: no report after training
    written = json.loads((run / "config.json").read_text())
    train = written["config"]["train"]
    assert (train["save_every_steps"], train["report"], train["early_stop"]) == (2, False, 5)
    assert written["config"]["data"]["workers"] == 1
    assert load_checkpoint(run / "last.pt")["config"]["train"]["save_every_steps"] == 2  # the next resume's too
    [entry] = written["resumed"]
    assert (entry["epoch"], entry["step"]) == (1, 0) and entry["at"]
    assert {c["option"]: (c["from"], c["to"]) for c in entry["changed"]} == {
        "--save-every-steps": (0, 2), "--report": (True, False), "--early-stop": (0, 5), "--workers": (0, 1)}
    # A later resume keeps the record and adds its own
    assert main(["train", "--resume", str(run), "--epochs", "3", "--quiet"]) == 0
    entries = json.loads((run / "config.json").read_text())["resumed"]
    assert entries[0] == entry and entries[1]["changed"] == [
        {"option": "--epochs", "field": "train.epochs", "from": 2, "to": 3}]


def test_a_flag_that_would_change_the_results_is_refused_and_nothing_is_touched(run, tmp_path):
    before = folder_bytes(run)
    result = run_cli("train", "--resume", run, "--lr", "0.1", "--save-every-steps", "2", "--quiet",
                     env={"ALEXNET_DATA": str(tmp_path / "cache")})
    assert result.returncode == 2
    err = result.stderr.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert "--lr cannot change on --resume" in err and f"{run} was trained with --lr 0.05" in err
    assert f"--init-from {run}" in err
    assert folder_bytes(run) == before


REFUSED = [
    ({"seed": 1}, "--seed cannot change on --resume: .* was trained with --seed 0; start a new run"),
    ({"batch_size": 32}, "--batch-size cannot change.*--batch-size 16"),
    ({"widths": (8, 8, 8, 8, 16)}, "--widths cannot change.*--widths 8,8,8,8,8; start a new run"),
    ({"whiten": True}, "--whiten cannot change.*trained with --no-whiten"),
    ({"ema": 0.9}, "--ema cannot change"),
    ({"amp": "fp16"}, "--amp cannot change"),
    ({"val_every": 2}, "--val-every cannot change"),
    ({"tta_shift": 1}, "--tta-shift cannot change.*--tta-shift 2"),
    ({"compile": True}, "--compile cannot change.*trained without --compile"),
    ({"flush_denormal": False}, "--flush-denormal cannot change.*trained with --flush-denormal"),
    ({"channels_last": False}, "--channels-last cannot change.*trained with --channels-last"),
    ({"init_from": "weights.pth"}, "--init-from cannot change.*trained without --init-from"),
    ({"val_split": 0.2}, "--val-split cannot change"),
    ({"preset": "cifar10-fast"}, "--preset cannot change.*trained with --preset cifar10;"),
    ({"out": "elsewhere"}, "--out cannot change on --resume: the run continues in its own folder"),
]


@pytest.mark.parametrize("options, message", REFUSED, ids=[next(iter(o)) for o, _ in REFUSED])
def test_the_api_refuses_the_same_options_before_any_work(run, options, message):
    before = folder_bytes(run)
    with pytest.raises(AlexnetError, match=message):
        alexnet.train(resume=run, progress=False, **options)
    assert folder_bytes(run) == before


def test_a_flag_with_the_runs_own_value_is_accepted(run, tiny_folder, monkeypatch):
    monkeypatch.chdir(tiny_folder)  # --data as a relative path: the run saved it absolute
    assert main(["train", "--resume", str(run), "--data", "train", "--lr", "0.05", "--batch-size", "16",
                 "--widths", "8,8,8,8,8", "--no-whiten", "--epochs", "2", "--device", "cpu", "--quiet"]) == 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    assert "resumed" not in json.loads((run / "config.json").read_text())  # nothing changed


def test_resuming_with_safe_flags_is_bit_exact(run, tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(api, "report", lambda *a, **k: None)
    straight = alexnet.train(data=str(tiny_folder / "train"), out=tmp_path / "straight", progress=False, **OPTIONS)
    alexnet.train(resume=run, save_every_steps=2, workers=1, tensorboard=False, early_stop=3, min_delta=0.5,
                  report=False, progress=False)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(run / "last.pt")
    assert a["global_step"] == b["global_step"]
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]


def test_early_stopping_cannot_be_added_to_a_run_that_does_not_validate():
    ckpt = {"config": preset_config(None).to_dict()}  # the default recipe validates after its last epoch only
    with pytest.raises(AlexnetError, match=r"--early-stop cannot act on --resume: RUN validates only after its "
                                           r"last epoch \(--val-every 0\)"):
        resolve_config(None, ckpt, "RUN", options={"train": {"early_stop": 3}})
    cfg = resolve_config(None, ckpt, "RUN", options={"train": {"save_every": 60.0, "lr": 0.4}})  # 0.4: its own
    assert (cfg.train.save_every, cfg.train.lr) == (60.0, 0.4)
