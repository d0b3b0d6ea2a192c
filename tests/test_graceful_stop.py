"""SIGTERM / SIGINT stop training after the step in progress with its position saved; --resume continues it and
the finished run is bit-identical to one never stopped (in-memory and streamed data, one process and torchrun)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import alexnet
from alexnet.config import preset_config
from alexnet.data.memory import BatchLoader, Normalizer
from alexnet.data.streaming import StreamingLoader
from alexnet.engine.budget import TimeBudget
from alexnet.engine.callbacks import Callback
from alexnet.engine.checkpoint import load_checkpoint
from alexnet.engine.trainer import resolve_config
from alexnet.errors import AlexnetError, TrainingStopped

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
# 108 training images (12 held out) in batches of 16: 6 steps an epoch, 12 in the run.
FLAGS = ["--epochs", "2", "--batch-size", "16", "--lr", "0.05", "--widths", "8,8,8,8,8", "--no-whiten", "--no-report",
         "--quiet", "--device", "cpu", "--seed", "1", "--val-every", "1"]
LOADERS = {"memory": ["--loader", "memory"], "stream": ["--loader", "stream", "--workers", "1", "--resize", "32"]}


@pytest.fixture(scope="module")
def faults():
    """benchmarks/train_with_fault.py: runs the CLI with a fault (here: a pause at a step, a slow write)."""
    spec = importlib.util.spec_from_file_location("train_with_fault", ROOT / "benchmarks" / "train_with_fault.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def references(tiny_folder, tmp_path_factory):
    """Runs never stopped, one per loader, in their own processes as the stopped ones."""
    base = tmp_path_factory.mktemp("straight")
    runs = {}
    for loader, flags in LOADERS.items():
        done = run_cli("train", "--data", tiny_folder / "train", "--out", base / loader, *FLAGS, *flags,
                       env={"ALEXNET_DATA": str(base / "cache")})
        assert done.returncode == 0, done.stderr
        runs[loader] = base / loader
    return runs


def assert_same_final_state(run: Path, reference: Path) -> None:
    a, b = load_checkpoint(run / "last.pt"), load_checkpoint(reference / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"] == 12
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for index, state in b["optimizer"]["state"].items():
        assert torch.equal(a["optimizer"]["state"][index]["momentum_buffer"], state["momentum_buffer"])
    # the epoch that was cut in two sums its loss exactly as the one that was not
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]


@pytest.mark.parametrize("loader, sig", [("memory", signal.SIGTERM), ("stream", signal.SIGINT)])
def test_a_signal_mid_epoch_saves_the_position_and_resume_is_bit_exact(faults, references, tiny_folder, tmp_path,
                                                                      loader, sig):
    run = tmp_path / "run"
    env = {**os.environ, "ALEXNET_DATA": str(tmp_path / "cache")}
    proc = faults.Process(faults.driver_command(["--pause-at-step", "8"], ["train", "--data", tiny_folder / "train",
                                                                           "--out", run, *FLAGS, *LOADERS[loader]]),
                          env)
    assert proc.wait_for("FAULTS paused 8"), proc.finish()
    if sig == signal.SIGINT:
        proc.signal_group(sig)  # Ctrl-C reaches the whole terminal job, the decoding worker too
    else:
        proc.proc.send_signal(sig)
    code, _, err = proc.finish()
    assert code == 75, err
    assert err.strip().count("\n") == 0 and f"stopped by {sig.name}" in err
    assert f"alexnet train --resume {run}" in err
    # The signal came during step 8's end; step 9 finished, then the position was saved: epoch 2, step 3.
    saved = load_checkpoint(run / "last.pt")
    assert (saved["epoch"], saved["step"], saved["global_step"]) == (1, 3, 9)
    assert len(saved["history"]) == 1 and saved["partial"]["sums"][2].item() == 3 * 16
    resumed = run_cli("train", "--resume", run, "--quiet", env={"ALEXNET_DATA": str(tmp_path / "cache")})
    assert resumed.returncode == 0, resumed.stderr
    assert_same_final_state(run, references[loader])


def test_a_second_signal_stops_at_once_and_what_was_saved_stays_whole(faults, references, tiny_folder, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "ALEXNET_DATA": str(tmp_path / "cache")}
    # Writes 1 and 2 are epoch 1's best.pt and last.pt; the 3rd, the position saved on the signal, is slowed down.
    proc = faults.Process(faults.driver_command(["--pause-at-step", "7", "--slow-write", "60", "--slow-from", "3"],
                                                ["train", "--data", tiny_folder / "train", "--out", run, *FLAGS]),
                          env)
    assert proc.wait_for("FAULTS paused 7"), proc.finish()
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.wait_for("FAULTS writing"), proc.finish()
    proc.proc.send_signal(signal.SIGTERM)
    code, _, _ = proc.finish()
    assert code == -signal.SIGTERM  # ended by the signal itself, not after finishing the write
    assert len(list(run.glob(".last.pt.*.tmp"))) == 1  # the write it cut short never replaced last.pt
    before = load_checkpoint(run / "last.pt")
    assert (before["epoch"], before["step"]) == (1, 0) and load_checkpoint(run / "best.pt")["epoch"] == 1
    resumed = run_cli("train", "--resume", run, "--quiet", env={"ALEXNET_DATA": str(tmp_path / "cache")})
    assert resumed.returncode == 0, resumed.stderr
    assert not list(run.glob(".*.tmp"))  # the temp file of the killed write is cleared at the next start
    assert_same_final_state(run, references["memory"])


class RaiseAtStep(Callback):
    """Sends this process a signal, or crashes it, after a global step."""

    def __init__(self, step: int, action):
        self.step, self.action = step, action

    def on_step_end(self, run, step, logs):
        if logs["global_step"] == self.step:
            self.action()


OPTIONS = dict(epochs=2, batch_size=16, lr=0.05, widths=(8, 8, 8, 8, 8), whiten=False, report=False, device="cpu",
               seed=1, val_every=1, progress=False)


def test_a_crash_resumes_from_the_last_checkpoint_inside_the_epoch_exactly(tiny_folder, tmp_path):
    data = str(tiny_folder / "train")
    straight = alexnet.train(data=data, out=tmp_path / "straight", save_every_steps=4, **OPTIONS)

    def crash():
        raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        alexnet.train(data=data, out=tmp_path / "crashed", save_every_steps=4, callbacks=[RaiseAtStep(11, crash)],
                      **OPTIONS)
    saved = load_checkpoint(tmp_path / "crashed" / "last.pt")
    assert (saved["epoch"], saved["step"], saved["global_step"]) == (1, 2, 8)  # saved after steps 4, 6 (epoch), 8
    alexnet.train(resume=tmp_path / "crashed", progress=False)
    a, b = load_checkpoint(straight / "last.pt"), load_checkpoint(tmp_path / "crashed" / "last.pt")
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]


def test_a_signal_in_a_python_program_raises_training_stopped(tiny_folder, tmp_path):
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingStopped, match=r"after step 2/6 of epoch 1.*--resume"):
        alexnet.train(data=str(tiny_folder / "train"), out=tmp_path / "r", loader="stream", workers=1, resize=32,
                      callbacks=[RaiseAtStep(1, lambda: os.kill(os.getpid(), signal.SIGTERM))], **OPTIONS)
    assert signal.getsignal(signal.SIGTERM) is handler  # the program's own handling is back
    assert load_checkpoint(tmp_path / "r" / "last.pt")["global_step"] == 2


def test_a_time_limited_run_stopped_with_time_left_resumes_on_its_own_clock():
    budget = TimeBudget(limit=100, started=1000.0)
    budget.train_started, budget.decay_started = 1004.0, 1010.0
    clock = budget.clock(spent=False, now=1050.0)  # stopped 50 s into its 100
    again = TimeBudget(limit=100, started=0.0)
    again.wind(clock, started=5000.0)  # the resuming command started at 5000: the time between does not count
    assert (again.started, again.train_started, again.decay_started) == (4950.0, 4954.0, 4960.0)
    assert again.fraction(again.decay_started, now=5000.0) == budget.fraction(budget.decay_started, now=1050.0)
    base = preset_config(None)
    ckpt = {"config": replace(base, train=replace(base.train, time_limit=100.0)).to_dict(), "clock": clock}
    assert resolve_config(None, ckpt, "RUN", None, None, None).train.time_limit == 100.0  # on its clock
    assert resolve_config(None, ckpt, "RUN", None, None, 0).train.time_limit == 0.0  # by steps, when asked
    with pytest.raises(AlexnetError, match="--time-limit 0"):  # its time was up: by steps only
        resolve_config(None, {**ckpt, "clock": {**clock, "spent": True}}, "RUN", None, None, None)


def assert_starts_mid_epoch(loader, epoch: int, start: int, batches: int) -> None:
    """An epoch begun at batch `start` yields exactly the batches the whole epoch yields from there on."""
    loader.set_epoch(epoch)
    full = list(loader)
    loader.set_epoch(epoch, start=start)
    tail = list(loader)
    assert len(full) == batches and len(tail) == batches - start
    for (x, y), (xt, yt) in zip(full[start:], tail):
        assert torch.equal(x, xt) and torch.equal(y, yt)


def test_batches_from_a_position_are_the_rest_of_the_epoch_unchanged():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 12, 12), dtype=torch.uint8, generator=gen)
    norm = Normalizer([0.5] * 3, [0.25] * 3, 12, torch.device("cpu"))
    loader = BatchLoader(images, torch.arange(40), 8, norm, train=True, crop_padding=2, flip=True, cutout=4, seed=3)
    assert_starts_mid_epoch(loader, epoch=1, start=3, batches=5)
    loader.set_epoch(2)  # a new epoch starts at its beginning again
    assert len(list(loader)) == 5


def test_streamed_batches_from_a_position_are_the_rest_of_the_epoch_unchanged(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(paths[-1])
    loader = StreamingLoader(paths, list(range(12)), 4, train=True, image_size=16, mean=[0.5] * 3, std=[0.25] * 3,
                             device="cpu", workers=0, seed=5)
    assert_starts_mid_epoch(loader, epoch=2, start=1, batches=3)


@pytest.mark.slow
def test_sigterm_to_torchrun_mid_epoch_then_resume_equals_the_uninterrupted_run(faults, tiny_folder, tmp_path):
    flags = ["--batch-size", "32", "--norm", "none", "--optimizer", "sgd", "--dropout", "0",
             *[f for f in FLAGS if f not in ("--batch-size", "16")]]
    env = {**os.environ, "ALEXNET_DATA": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}

    def torchrun(*args: str | Path) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *map(str, args)]

    script = ROOT / "benchmarks" / "train_with_fault.py"
    data = ["--data", tiny_folder / "train"]
    straight = subprocess.run(torchrun(script, "train", *data, "--out", tmp_path / "straight", *flags),
                              capture_output=True, text=True, env=env, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    # 108 images, global batches of 32: 3 steps an epoch. Rank 0 pauses after step 4, the launcher gets SIGTERM.
    run = tmp_path / "run"
    proc = faults.Process(torchrun(script, "--pause-at-step", "4", "--", "train", *data, "--out", run, *flags),
                          env)
    assert proc.wait_for("FAULTS paused 4"), proc.finish()
    proc.proc.send_signal(signal.SIGTERM)
    code, _, err = proc.finish()
    assert code != 0
    saved = load_checkpoint(run / "last.pt")
    assert (saved["epoch"], saved["step"]) == (1, 2), err[-3000:]  # steps 4 and 5 done: epoch 2, step 2
    resumed = subprocess.run(torchrun("-m", "alexnet", "train", "--resume", run, "--quiet"), capture_output=True,
                             text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = load_checkpoint(run / "last.pt"), load_checkpoint(tmp_path / "straight" / "last.pt")
    assert a["global_step"] == b["global_step"] == 6
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
