"""--replay-clock: a time-limited run trained again from its recorded clock readings takes the same steps, rates
and stop, so it ends with the same weights whatever the clock does the second time."""

from __future__ import annotations

import json
import time
import types
from pathlib import Path

import pytest
import torch

import alexnet
from alexnet.engine import budget as budget_module
from alexnet.engine.checkpoint import load_checkpoint

from conftest import run_cli

# A small network with more epochs than 4 s allow on any machine: the clock ends it, mid-schedule.
OPTIONS = dict(epochs=200, batch_size=16, lr=0.05, widths=(8, 8, 8, 8, 8), whiten=False, device="cpu",
               report=False, progress=False, time_limit=4)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "last.pt")["model"]


@pytest.fixture(scope="module")
def recorded(tiny_folder, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("recorded") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALEXNET_DATA", str(tmp_path_factory.mktemp("cache")))
        alexnet.train(data=str(tiny_folder / "train"), out=run, **OPTIONS)
    return run


def fast_clock(monkeypatch, factor: float) -> None:
    """The budget's clock runs `factor` times as fast as the real one from now on."""
    start = time.time()
    monkeypatch.setattr(budget_module, "time", types.SimpleNamespace(time=lambda: start + factor * (time.time() - start)))


def test_a_replayed_run_ends_with_the_recorded_runs_weights_under_a_clock_three_times_as_fast(
        recorded, tiny_folder, tmp_path, monkeypatch):
    clock = json.loads((recorded / "clock.json").read_text())
    assert clock["time_limit"] == 4 and clock["resumed"] is False and len(clock["readings"]) > 10
    history = json.loads((recorded / "history.json").read_text())
    assert 1 < len(history) < 200, "the clock, not the epoch bound, must end the recorded run"

    fast_clock(monkeypatch, 3.0)
    alexnet.train(data=str(tiny_folder / "train"), out=tmp_path / "replay", replay_clock=str(recorded), **OPTIONS)
    ours, theirs = weights(tmp_path / "replay"), weights(recorded)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    again = json.loads((tmp_path / "replay" / "history.json").read_text())
    assert [(r["epoch"], r["lr"], r["val_acc"]) for r in again] == [(r["epoch"], r["lr"], r["val_acc"]) for r in history]
    # The control: the same fast clock without the replay ends the run far sooner.
    alexnet.train(data=str(tiny_folder / "train"), out=tmp_path / "clocked", **OPTIONS)
    assert len(json.loads((tmp_path / "clocked" / "history.json").read_text())) < len(history)


@pytest.mark.parametrize("case", ["missing", "other-limit", "no-limit", "resumed", "not-json"])
def test_a_clock_that_cannot_be_replayed_is_one_line_and_nothing_is_written(case, recorded, tiny_folder, tmp_path):
    source, limit = str(recorded), "4"
    if case == "missing":
        source = str(tmp_path / "nowhere")
    elif case == "other-limit":
        limit = "5"
    elif case == "no-limit":
        limit = "0"
    elif case in ("resumed", "not-json"):
        source = str(tmp_path / "clock.json")
        clock = json.loads((recorded / "clock.json").read_text())
        Path(source).write_text(json.dumps({**clock, "resumed": True}) if case == "resumed" else "{not json")
    out = tmp_path / "out"
    result = run_cli("train", "--data", tiny_folder / "train", "--widths", "8,8,8,8,8", "--batch-size", "16",
                     "--no-whiten", "--time-limit", limit, "--replay-clock", source, "--out", out, "--quiet")
    err = result.stderr.strip()
    assert result.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    expected = {"missing": f"--replay-clock {source}: no {source}/clock.json",
                "other-limit": "that run had --time-limit 4, this one 5; give the same --time-limit",
                "no-limit": "--replay-clock replays a time-limited run's clock: give its --time-limit too",
                "resumed": "that run was stopped and resumed",
                "not-json": f"--replay-clock {source}: {source} is not a run's clock"}[case]
    assert expected in err, err
    assert not (out / "last.pt").exists()
