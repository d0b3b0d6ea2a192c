"""--time-limit (a schedule that follows the clock) and progressive resizing (--res-start)."""

from __future__ import annotations

import json
import time

import pytest
import torch

import alexnet
from alexnet.config import TrainConfig
from alexnet.data.memory import BatchLoader, Normalizer
from alexnet.engine.budget import RESERVE_FIXED_S, TimeBudget
from alexnet.engine.checkpoint import load_checkpoint
from alexnet.engine.optim import build_optimizer, build_scheduler, lr_factor
from alexnet.engine.resolution import epoch_side
from alexnet.errors import AlexnetError

OPTIONS = dict(batch_size=16, lr=0.05, device="cpu", report=False, progress=False)


def test_decay_follows_whichever_of_steps_and_clock_is_further_along():
    assert lr_factor(50, 100, 10, "linear") == pytest.approx(1 - 40 / 90)
    assert lr_factor(50, 100, 10, "linear", time_fraction=0.75) == pytest.approx(0.25)
    assert lr_factor(50, 100, 10, "linear", time_fraction=0.1) == pytest.approx(1 - 40 / 90)
    assert lr_factor(50, 100, 10, "linear", time_fraction=1.0) == 0.0
    assert lr_factor(5, 100, 10, "linear", time_fraction=0.9) == pytest.approx(0.6)  # warm-up is by steps


def test_budget_fraction_and_reserve():
    now = time.time()
    budget = TimeBudget(limit=100, started=now - 50)
    assert budget.enabled and not budget.spent()
    assert budget.fraction(now - 50, now=now) == pytest.approx(50 / (100 - RESERVE_FIXED_S))
    budget.val_images, budget.views = 3000, 2
    budget.observe_step(seconds=30.0, images=100)  # the first step (allocation, compilation) is not the rate
    assert budget.reserve == RESERVE_FIXED_S and budget.eval_seconds() == 0.0
    budget.observe_step(seconds=1.0, images=100)  # 10 ms an image: 6,000 evaluated views ~18 s, with margins ~22
    assert 15 < budget.reserve < 30 and 15 < budget.eval_seconds() < budget.reserve
    assert budget.spent() is False and TimeBudget(limit=10, started=now - 20).spent()
    budget.step_seconds = budget.train_end() - time.time() + 1  # the next step would end past the training time
    assert budget.spent()
    # a report evaluates its split once more: with no validation split, the training split
    report = TimeBudget(limit=100, started=now, val_images=0, views=2, report=True, report_images=45000)
    report.observe_step(1.0, 100)
    report.observe_step(1.0, 100)
    assert report.reserve > 45000 * 2 * 0.01 * 0.25
    assert not TimeBudget(limit=0, started=now - 1e6).spent() and TimeBudget(0, now).fraction(now - 5) == 0.0


def test_scheduler_under_a_spent_budget_drops_the_rate_to_zero_after_warm_up():
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(lr=0.1, epochs=100, warmup_epochs=1.0)
    opt = build_optimizer(model, cfg)
    budget = TimeBudget(limit=10, started=time.time())
    sched = build_scheduler(opt, cfg, steps_per_epoch=4, budget=budget)
    for _ in range(4):  # the warm-up's 4 steps, then the first decay step starts the clock
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1, rel=1e-3) and budget.decay_started is not None
    budget.started -= 100  # the clock has run out
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.0


def test_the_clock_cuts_a_long_warm_up_short_and_decays_from_the_rate_reached():
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(lr=0.1, epochs=10, warmup_epochs=5.0)  # 50 warm-up steps
    opt = build_optimizer(model, cfg)
    budget = TimeBudget(limit=100, started=time.time())
    sched = build_scheduler(opt, cfg, steps_per_epoch=10, budget=budget)
    for _ in range(10):
        opt.step()
        sched.step()
    reached = opt.param_groups[0]["lr"]
    assert reached == pytest.approx(0.1 * 11 / 50) and budget.decay_started is None
    budget.train_started = time.time() - 200  # two thirds of the training time are gone
    opt.step()
    sched.step()
    assert budget.decay_started is not None and sched.warmup == 11
    assert opt.param_groups[0]["lr"] == pytest.approx(reached, rel=1e-3)  # no jump to the peak
    again = build_scheduler(opt, cfg, steps_per_epoch=10)  # a resumed run keeps the cut warm-up
    again.load_state_dict(sched.state_dict())
    assert (again.warmup, again.peak) == (11, pytest.approx(11 / 50))
    budget.started -= 1000  # the clock has run out
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.0


def test_progressive_side_grows_in_whole_steps_to_the_input_side():
    sides = [epoch_side(e / 5, 32, 16, 0.6) for e in range(5)]
    assert sides == [16, 16, 24, 32, 32]
    assert epoch_side(0.0, 32, 0, 0.75) == 32  # off
    assert all(s % 8 == 0 and 16 <= s <= 32 for s in (epoch_side(d / 100, 32, 16, 0.75) for d in range(101)))


def test_a_smaller_side_shrinks_training_batches_only():
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    norm = Normalizer([0.5] * 3, [0.25] * 3, 32, torch.device("cpu"))
    train = BatchLoader(images, torch.arange(8), 4, norm, train=True, crop_padding=2, flip=True)
    train.set_size(16)
    x, _ = next(iter(train))
    assert x.shape == (4, 3, 16, 16)
    val = BatchLoader(images, torch.arange(8), 4, norm, train=False)
    val.set_size(16)
    assert next(iter(val))[0].shape == (4, 3, 32, 32)
    # the shrink averages 2x2 blocks: a flat image stays flat at its normalised value
    flat = torch.full((2, 3, 32, 32), 200, dtype=torch.uint8)
    assert torch.allclose(norm(flat, 16), torch.full((2, 3, 16, 16), (200 / 255 - 0.5) / 0.25), atol=1e-5)


def test_time_limit_ends_a_run_early_with_a_validated_best_checkpoint(tiny_folder, tmp_path):
    run = alexnet.train(data=str(tiny_folder / "train"), out=tmp_path / "r", epochs=1000, time_limit=12,
                        **OPTIONS)
    history = json.loads((run / "history.json").read_text())
    assert 1 <= len(history) < 1000
    # decayed by the clock: by steps, a few of 1,000 epochs would still be at ~0.05 (> 0.0499). How close to 0
    # the last step gets depends on how long that step took (it stops before a step that would cross the end),
    # so the bound leaves room for a loaded machine: a CPU shared with a training run ended at 0.025.
    assert history[-1]["val_acc"] is not None and history[-1]["lr"] < 0.05 * 0.8
    best = load_checkpoint(run / "best.pt")
    assert best["best_val_acc"] == max(h["val_acc"] for h in history if h["val_acc"] is not None)
    assert history[best["epoch"] - 1]["val_acc"] == best["best_val_acc"] and "val_logits" in best
    with pytest.raises(AlexnetError, match="--time-limit 0"):
        alexnet.train(resume=run, progress=False)
    with pytest.raises(AlexnetError, match="--time-limit 0"):
        alexnet.train(resume=run, time_limit=30, progress=False)
    # continued by steps: one more epoch, and the saved config no longer carries the limit
    alexnet.train(resume=run, time_limit=0, epochs=len(history) + 1, progress=False)
    assert len(json.loads((run / "history.json").read_text())) == len(history) + 1
    assert load_checkpoint(run / "last.pt")["config"]["train"]["time_limit"] == 0


def test_time_limit_counts_from_main_when_called_inside_a_program(tiny_folder, tmp_path):
    # pytest's process may be older than the limit: the clock starts at main(argv), not at process start
    from alexnet.cli import main

    time.sleep(0.1)
    assert main(["train", "--data", str(tiny_folder / "train"), "--out", str(tmp_path / "r"), "--epochs", "2",
                 "--time-limit", "300", "--batch-size", "16", "--device", "cpu", "--no-report", "--quiet"]) == 0
    history = json.loads((tmp_path / "r" / "history.json").read_text())
    assert len(history) == 2 and history[0]["images_per_s"] > 0


def test_progressive_resizing_trains_small_then_validates_at_full_size(tiny_folder, tmp_path, monkeypatch):
    sides = []
    set_size = BatchLoader.set_size
    monkeypatch.setattr(BatchLoader, "set_size", lambda self, side: (sides.append(side), set_size(self, side))[1])
    run = alexnet.train(data=str(tiny_folder / "train"), out=tmp_path / "r", epochs=4, res_start=16, res_ramp=0.5,
                        global_pool=True, **OPTIONS)
    history = json.loads((run / "history.json").read_text())
    assert len(history) == 4 and history[-1]["val_acc"] is not None
    assert sides == [16, 24, 32, 32]  # the training side grows over the first half, by epochs
    cfg = json.loads((run / "config.json").read_text())["config"]["train"]
    assert cfg["res_start"] == 16 and cfg["res_ramp"] == 0.5


def test_the_reserve_counts_the_views_that_evaluation_makes():
    from alexnet.classifier import view_passes as tta_views
    from alexnet.engine.evaluation import collect_logits

    passes = []

    class Counting(torch.nn.Module):
        def forward(self, x):
            passes.append(len(x))
            return x.flatten(1)[:, :3]

    batches = [(torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))]
    for tta, shift in [(False, 0), (True, 0), (True, 2)]:
        passes.clear()
        collect_logits(Counting(), batches, torch.device("cpu"), "off", tta, shift)
        # The views go through the model as one batch: 4 images x 1, 2 or 6 views.
        assert passes == [4 * {(False, 0): 1, (True, 0): 2, (True, 2): 6}[tta, shift]]
        assert sum(passes) == 4 * tta_views(tta, shift)


def test_a_slow_first_step_such_as_compilation_does_not_end_the_warm_up():
    # A 40 s budget whose first step took 20 s (torch.compile compiling on a small CPU): by the clock, half of
    # the training time is gone. The schedule's clock starts after that step, so the warm-up goes on.
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(lr=0.1, epochs=10, warmup_epochs=1.0)  # 10 warm-up steps
    opt = build_optimizer(model, cfg)
    budget = TimeBudget(limit=40, started=time.time() - 21)
    sched = build_scheduler(opt, cfg, steps_per_epoch=10, budget=budget)
    budget.observe_step(20.0, images=256)
    assert budget.run_fraction() < 0.01
    opt.step()
    sched.step()
    # Step 1 of 10: the rate is a tenth of the way up, and the warm-up still has its 10 steps.
    assert budget.decay_started is None and sched.warmup == 10
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 2 / 10)
