"""What the training loop and its callbacks share: the built run (`Run`) and its changing state (`TrainState`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import RunConfig
from . import distributed
from .budget import TimeBudget
from .checkpoint import rng_state
from .divergence import DivergenceGuard
from .ema import EMA
from .progress import EpochProgress
from .resolution import epoch_side


@dataclass
class TrainState:
    """What changes as training goes: restored exactly on --resume."""

    epoch: int = 0  # epochs finished
    step: int = 0  # steps finished in the epoch in progress (0 between epochs)
    global_step: int = 0  # steps finished in the whole run
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_acc: float = -1.0
    train_seconds: float = 0.0
    # A run stopped inside an epoch: that epoch's side and its sums so far over all ranks (loss x images,
    # correct, images as one float32 tensor, the same arithmetic as the loop's), and its seconds.
    partial: dict[str, Any] | None = None


@dataclass
class Run:
    """A run set up to train: its parts, its state, and what callbacks may ask of the loop."""

    cfg: RunConfig
    out: Path
    info: distributed.Dist
    device: torch.device
    data: Any  # data.pipeline.TrainData
    model: nn.Module  # the network itself: its weights are what checkpoints hold
    run_model: nn.Module  # what the loop calls: the model, or it wrapped by DDP / torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    ema: EMA | None
    budget: TimeBudget
    meta: dict[str, Any]  # classes, input spec...: written into every checkpoint
    ui: EpochProgress
    image_size: int
    reused: bool  # best.pt keeps the outputs of its validation (an in-memory split), for the report
    val_digest: str | None
    callbacks: list[Any] = field(default_factory=list)
    guard: DivergenceGuard | None = None
    started_at: float = 0.0  # time.time() when the command began
    state: TrainState = field(default_factory=TrainState)
    side: int = 0  # this epoch's training side (progressive resizing)
    stop_reason: str | None = None  # a callback ended training: finish this epoch, then stop
    stop_signal: str | None = None  # "SIGTERM"/"SIGINT" once received: save the position after this step, stop
    ending_epoch: bool = False  # end the epoch in progress after this step (the time limit)
    out_of_time: bool = False
    saved: tuple[int, int] | None = None  # the (epoch, step) position RUN/last.pt holds
    last_save: float = field(default_factory=time.monotonic)
    error: BaseException | None = None  # what ended training, for on_train_end
    sums: list[Any] = field(default_factory=list)  # this rank's loss x images, correct (tensors), images (int)
    epoch_clock: float = 0.0
    seconds_before: float = 0.0  # the epoch in progress's seconds before a stop inside it
    row: dict[str, Any] | None = None  # the history row being ended, while on_epoch_end runs

    @property
    def train_loader(self) -> Any:
        return self.data.train

    @property
    def val_loader(self) -> Any:
        return self.data.val.loader if self.data.val else None

    @property
    def cost_scale(self) -> float:
        """A step's cost at this epoch's side relative to the full side (for the time limit's estimates)."""
        return (self.image_size / self.side) ** 2

    # ------------------------------------------------------------------ what callbacks may ask
    def request_stop(self, reason: str) -> None:
        """End training once the epoch in progress is finished; `reason` goes into its history row."""
        if self.stop_reason is None:
            self.stop_reason = reason
            if self.row is not None:
                self.row["stopped"] = reason

    def stop_epoch(self) -> None:
        """End the epoch in progress after the current step (with `request_stop`, or out of time, the run's last
        epoch: it is validated)."""
        self.ending_epoch = True

    # ------------------------------------------------------------------ the loop's helpers
    def emit(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def emit_epoch_end(self, epoch: int, logs: dict[str, Any], row: dict[str, Any]) -> None:
        self.row = row
        if self.stop_reason is not None:  # asked for inside the epoch
            row["stopped"] = self.stop_reason
        try:
            self.emit("on_epoch_end", epoch, logs)
        finally:
            self.row = None

    def agree(self, *flags: bool) -> list[bool]:
        """Under torchrun every rank acts on a flag any rank raised (one all-reduce); alone, as they are."""
        if not self.info.enabled:
            return list(flags)
        votes = distributed.all_reduce_sum(torch.tensor([float(f) for f in flags], device=self.device))
        return [v > 0 for v in votes.tolist()]

    def save_due(self) -> bool:
        """A checkpoint of the position after the step in progress is due (--save-every-steps, --save-every)."""
        t = self.cfg.train
        by_steps = t.save_every_steps > 0 and (self.state.global_step + 1) % t.save_every_steps == 0
        return by_steps or (t.save_every > 0 and time.monotonic() - self.last_save >= t.save_every)

    def mark_saved(self) -> None:
        self.saved, self.last_save = (self.state.epoch, self.state.step), time.monotonic()

    def saved_description(self) -> str:
        if self.saved is None:
            return "nothing was saved yet"
        epoch, step = self.saved
        where = f"step {step} of epoch {epoch + 1}" if step else f"epoch {epoch}"
        return f"{self.out / 'last.pt'} still holds {where} and loads"

    def begin_epoch(self) -> None:
        """The epoch's side, sums and loader position: from the start, or from where a stop left it."""
        s, t = self.state, self.cfg.train
        zero = torch.zeros((), device=self.device)
        if s.partial is None:
            done = max(s.epoch / t.epochs, self.budget.run_fraction())  # by epochs or by the clock
            self.side = epoch_side(done, self.image_size, t.res_start, t.res_ramp)
            self.sums, self.seconds_before = [zero.clone(), zero.clone(), 0], 0.0
        else:
            p, s.partial = s.partial, None
            self.side, self.seconds_before = int(p["side"]), float(p["seconds"])
            sums = p["sums"].to(self.device)
            # The totals are rank 0's to carry: the epoch's all-reduce adds the other ranks' new sums to them.
            self.sums = [sums[0].clone(), sums[1].clone(), int(sums[2].item())] if self.info.is_main else \
                [zero.clone(), zero.clone(), 0]
        if t.res_start:
            self.train_loader.set_size(self.side)
        self.train_loader.set_epoch(s.epoch, start=s.step)
        self.epoch_clock, self.ending_epoch = time.perf_counter(), False

    def add_to_sums(self, loss: torch.Tensor, correct: torch.Tensor, images: int) -> None:
        self.sums[0] += loss * images
        self.sums[1] += correct
        self.sums[2] += images

    def epoch_totals(self) -> torch.Tensor:
        """(loss x images, correct, images) of the epoch so far, added up over the ranks."""
        loss_sum, correct, seen = self.sums
        return distributed.all_reduce_sum(torch.stack([loss_sum, correct, torch.tensor(float(seen), device=self.device)]))

    def epoch_means(self) -> tuple[float, float, int]:
        totals = self.epoch_totals()
        n = max(totals[2].item(), 1)
        return totals[0].item() / n, totals[1].item() / n, int(totals[2].item())

    def epoch_seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.epoch_clock

    def checkpoint(self, full: bool) -> dict[str, Any]:
        """The run's state as a checkpoint: weights and position; `full` adds what resuming needs (optimiser,
        schedule, RNG, loss scale, the epoch's sums inside an epoch, the time limit's clock). Inside an epoch
        under torchrun every rank must call it (the sums are added up over them)."""
        raw = getattr(self.model, "_orig_mod", self.model)  # unwrap torch.compile
        s = self.state
        ckpt = {
            # With EMA the averaged weights are the ones evaluated and served; the raw ones resume training.
            **({"ema": {k: v.detach().cpu() for k, v in self.ema.state_dict().items()}} if self.ema else {}),
            "model": {k: v.detach().cpu() for k, v in raw.state_dict().items()},
            "epoch": s.epoch, "step": s.step, "global_step": s.global_step,
            "history": s.history,
            "best_val_acc": s.best_val_acc,
            "train_seconds": s.train_seconds,
            "loss_start": self.guard.start if self.guard else None,
            "config": self.cfg.to_dict(),
            **self.meta,
        }
        if not full:
            return ckpt
        ckpt.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(), rng=rng_state())
        if self.scaler.is_enabled():
            ckpt["scaler"] = self.scaler.state_dict()
        if s.step:
            ckpt["partial"] = {"side": self.side, "seconds": self.epoch_seconds(),
                               "sums": self.epoch_totals().cpu()}
        if self.budget.enabled:
            ckpt["clock"] = self.budget.clock(spent=self.out_of_time)
        return ckpt
