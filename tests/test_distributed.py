"""torchrun with gloo on the CPU: replicas stay identical and match a one-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from alexnet.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

# Same global batch in both runs, no dropout and no batch norm (SyncBatchNorm has no CPU kernel), so the
# only difference between 1 and 2 processes is the order of floating-point sums.
FLAGS = ["--epochs", "2", "--batch-size", "32", "--lr", "0.05", "--dropout", "0", "--norm", "none", "--device", "cpu",
         "--quiet", "--no-report", "--seed", "3"]
TOLERANCE = 1e-3  # largest absolute weight difference allowed after 2 epochs


def torchrun(nproc: int, *args, cache) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "alexnet", "train", *map(str, args)]
    env = {**os.environ, "ALEXNET_DATA": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def max_weight_difference(a, b) -> float:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return max((wa[k].double() - wb[k].double()).abs().max().item() for k in wa if wa[k].is_floating_point())


@pytest.fixture(scope="module")
def runs(tiny_folder, tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    two = torchrun(2, "--data", tiny_folder, "--out", base / "two", *FLAGS, cache=base / "cache")
    assert two.returncode == 0, two.stderr[-3000:]
    one = torchrun(1, "--data", tiny_folder, "--out", base / "one", *FLAGS, cache=base / "cache")
    assert one.returncode == 0, one.stderr[-3000:]
    return base


def test_two_process_replicas_end_with_identical_weights(runs):
    report = json.loads((runs / "two" / "distributed.json").read_text())
    assert report["world_size"] == 2 and report["replicas_identical"]


def test_two_processes_match_one_process_with_the_same_global_batch(runs):
    diff = max_weight_difference(runs / "one" / "last.pt", runs / "two" / "last.pt")
    assert diff < TOLERANCE, diff
    h1 = load_checkpoint(runs / "one" / "last.pt")["history"]
    h2 = load_checkpoint(runs / "two" / "last.pt")["history"]
    assert abs(h1[-1]["val_acc"] - h2[-1]["val_acc"]) <= 1 / 12 + 1e-9  # at most one of 12 val images
    assert abs(h1[-1]["train_loss"] - h2[-1]["train_loss"]) < 1e-3


def test_resume_with_another_world_size(runs, tiny_folder, tmp_path):
    """Stopped under 2 processes, continued under 1: lands where 2 processes all the way would."""
    cache = runs / "cache"
    first = torchrun(2, "--data", tiny_folder, "--out", tmp_path / "r", *FLAGS,
                     "--stop-after-epoch", "1", cache=cache)
    assert first.returncode == 0, first.stderr[-3000:]
    second = torchrun(1, "--resume", tmp_path / "r", "--quiet", cache=cache)
    assert second.returncode == 0, second.stderr[-3000:]
    assert load_checkpoint(tmp_path / "r" / "last.pt")["epoch"] == 2
    assert max_weight_difference(tmp_path / "r" / "last.pt", runs / "two" / "last.pt") < TOLERANCE
