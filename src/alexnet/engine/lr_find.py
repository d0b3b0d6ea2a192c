"""`alexnet lr-find`: the learning-rate range test (Smith 2017, "Cyclical Learning Rates"; as fastai runs it).

From a fresh model (the run's own data, model, --init-from and optimiser, built by the trainer's builders)
the rate grows exponentially from `start_lr` to `end_lr` over `steps` optimiser steps; the loss is smoothed
with an exponential moving average (bias-corrected, so the first steps are not pulled towards 0) and the test
stops once the smoothed loss passes 4x the best one (divergence). The suggestion is the rate where the smoothed
loss falls fastest against log(rate), searched before its minimum; the minimum's rate / 10 is given beside it.

Nothing is written but the plot and its numbers: no checkpoint, no run folder.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..config import RunConfig, validate
from ..data.memory import BatchLoader
from ..data.pipeline import build_training
from ..errors import AlexnetError
from ..models import default_image_size
from .checkpoint import write_json
from .device import autocast, grad_scaler, resolve_device, tune_cpu_allocator
from .finetune import prepare_finetune
from .optim import build_optimizer
from .progress import EpochProgress
from .trainer import build_model
from .whitening import whiten_first_conv

SMOOTHING = 0.98  # fastai's beta: the average spans ~50 steps
DIVERGENCE = 4.0  # stop once the smoothed loss exceeds this multiple of the best smoothed loss
METHOD = "steepest descent of the smoothed loss before its minimum"


def rate_schedule(start_lr: float, end_lr: float, steps: int) -> np.ndarray:
    """`steps` rates growing geometrically from start_lr to end_lr, both included."""
    return start_lr * (end_lr / start_lr) ** (np.arange(steps) / max(steps - 1, 1))


def smooth(losses: list[float], beta: float = SMOOTHING) -> list[float]:
    """Exponential moving average with bias correction (Adam's): avg_t / (1 - beta^t)."""
    out, avg = [], 0.0
    for t, loss in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** t))
    return out


def suggest(lrs: list[float], smoothed: list[float]) -> dict[str, float]:
    """{"steepest": the rate of the steepest fall of the smoothed loss against log(rate), between the first
    tenth of the steps (an average of a few noisy losses yet) and the minimum; "minimum": the rate of the
    minimum; "minimum/10": a tenth of it}. Without a descent to measure, steepest is minimum/10."""
    if len(lrs) < 2:
        raise AlexnetError("the range test stopped after one step: lower --start-lr or check the data")
    lo = int(np.argmin(smoothed))
    out = {"minimum": float(lrs[lo]), "minimum/10": float(lrs[lo]) / 10}
    skip = len(lrs) // 10
    if lo - skip < 2:  # the loss only rose, or fell within the first steps
        out["steepest"] = out["minimum/10"]
        return out
    part = slice(skip, lo + 1)
    slopes = np.gradient(np.asarray(smoothed[part]), np.log10(np.asarray(lrs[part])))
    out["steepest"] = float(lrs[skip + int(np.argmin(slopes))])
    return out


@dataclass
class RangeTest:
    lrs: list[float] = field(default_factory=list)  # the rate of each step taken (the --lr value)
    losses: list[float] = field(default_factory=list)  # each step's training loss
    smoothed: list[float] = field(default_factory=list)
    stopped: str = "steps"  # steps | diverged (smoothed loss past DIVERGENCE x its best) | non-finite (loss inf/NaN)
    suggestion: dict[str, float] = field(default_factory=dict)
    plot: Path | None = None
    numbers: Path | None = None
    seconds: float = 0.0

    def summary(self) -> list[str]:
        s = self.suggestion
        why = {"diverged": f"the smoothed loss passed {DIVERGENCE:g}x its minimum",
               "non-finite": "the loss became infinite"}.get(self.stopped, "the last step was reached")
        return [f"range test: {len(self.lrs)} steps from {self.lrs[0]:.3g} to {self.lrs[-1]:.3g} ({why}; "
                f"{self.seconds:.1f}s)",
                f"suggested --lr {s['steepest']:.3g} ({METHOD}); the minimum is at {s['minimum']:.3g}, "
                f"a tenth of it {s['minimum/10']:.3g}",
                f"plot: {self.plot}  numbers: {self.numbers}"]


def output_paths(out: str | Path) -> tuple[Path, Path]:
    """(plot, numbers) from --out: a .png file (the .json goes beside it) or a folder holding lr-find.png."""
    path = Path(out)
    if path.is_dir():
        path = path / "lr-find.png"
    elif path.suffix.lower() != ".png":
        raise AlexnetError(f"--out {out}: give a .png file or an existing folder")
    if path.exists() and not path.is_file():
        raise AlexnetError(f"--out {out} is not a file")
    return path, path.with_suffix(".json")


def batches(loader: Any):
    """Training batches for as long as needed: epoch after epoch, each shuffled as training would."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        empty = True
        for x, y in loader:
            empty = False
            yield x, y
        if empty:
            raise AlexnetError("the training split holds fewer images than one batch; lower --batch-size")
        epoch += 1


def lr_find(cfg: RunConfig, out: str | Path = "lr-find.png", *, start_lr: float = 1e-6, end_lr: float = 10.0,
            steps: int = 200, progress: bool = True) -> RangeTest:
    """Run the range test for `cfg` and write the plot (PNG) and its numbers (JSON) where `out` says."""
    if not 0 < start_lr < end_lr:
        raise AlexnetError(f"--start-lr must be > 0 and below --end-lr (got {start_lr:g} and {end_lr:g})")
    if steps < 5:
        raise AlexnetError(f"--steps must be at least 5 (got {steps})")
    plot, numbers = output_paths(out)
    validate(cfg)
    dev = resolve_device(cfg.train.device)
    if dev.type == "cpu":
        tune_cpu_allocator()
    ui = EpochProgress(progress)
    torch.manual_seed(cfg.train.seed)
    started = time.perf_counter()
    image_size = cfg.data.image_size or default_image_size(cfg.model.name)
    data = build_training(cfg.data, image_size, cfg.train.batch_size, cfg.train.seed, dev,
                          channels_last=cfg.train.channels_last)
    ui.print(f"data: {data.description}: {data.num_train:,} train images, {len(data.classes)} classes")
    model = build_model(cfg, len(data.classes), image_size, dev)
    tuned = prepare_finetune(model, cfg, data.classes, None, {}, ui.print)
    if cfg.train.whiten and isinstance(data.train, BatchLoader):  # as the trainer starts a run
        loader = data.train
        whiten_first_conv(model, loader.normalize(loader.images[torch.randperm(len(loader.labels))[:5000].to(dev)]))
    optimizer = build_optimizer(model, cfg.train, tuned.lr_scales)
    # Each group keeps its ratio to --lr (Muon's own rate, --lr-backbone, batch-norm bias multipliers).
    ratios = [group["lr"] / cfg.train.lr for group in optimizer.param_groups]
    scaler = grad_scaler(dev, cfg.train.amp)
    result = RangeTest()
    model.train()
    ui.start("range test", steps)
    try:
        for lr, (x, y) in zip(rate_schedule(start_lr, end_lr, steps), batches(data.train)):
            for group, ratio in zip(optimizer.param_groups, ratios):
                group["lr"] = float(lr) * ratio
            with autocast(dev, cfg.train.amp):
                logits = model(x)
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.train.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            result.lrs.append(float(lr))
            result.losses.append(loss.item())
            if not math.isfinite(result.losses[-1]):
                result.losses.pop()
                result.lrs.pop()
                result.stopped = "non-finite"
                break
            result.smoothed = smooth(result.losses)
            accuracy = (logits.argmax(1) == y).float().mean().item()
            ui.update(len(result.lrs), result.smoothed[-1], accuracy, len(result.lrs) * len(y) /
                      (time.perf_counter() - started))
            if result.smoothed[-1] > DIVERGENCE * min(result.smoothed):
                result.stopped = "diverged"
                break
    finally:
        ui.stop()
    result.suggestion = suggest(result.lrs, result.smoothed)
    result.seconds = time.perf_counter() - started
    result.plot, result.numbers = plot, numbers
    write_json(numbers, {"lrs": result.lrs, "losses": result.losses, "smoothed": result.smoothed,
                         "stopped": result.stopped, "suggested_lr": result.suggestion["steepest"], "method": METHOD,
                         "suggestion": result.suggestion, "start_lr": start_lr, "end_lr": end_lr, "steps": steps,
                         "smoothing": SMOOTHING, "divergence": DIVERGENCE, "config": cfg.to_dict()})
    draw(result, plot)
    return result


def draw(result: RangeTest, path: Path) -> None:
    """Loss against rate on a log axis: each step faint, the smoothed curve bold, the suggestion marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(result.lrs, result.losses, color="#9bb8d3", linewidth=0.8, label="loss per step")
    ax.plot(result.lrs, result.smoothed, color="#1f4e79", linewidth=2, label="smoothed")
    best = result.suggestion["steepest"]
    ax.axvline(best, color="#c0392b", linestyle="--", linewidth=1.2, label=f"suggested --lr {best:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (--lr)")
    ax.set_ylabel("training loss")
    # Up to a little above the starting loss: the divergence at the end would squash the interesting part.
    bottom, top = min(min(result.losses), min(result.smoothed)) * 0.95, min(result.smoothed[0] * 1.6,
                                                                            max(result.losses))
    if top > bottom:
        ax.set_ylim(bottom, top)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(loc="upper left")
    ax.set_title("learning-rate range test")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
