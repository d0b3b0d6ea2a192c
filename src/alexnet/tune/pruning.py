"""The callback that ties a training run to its optuna trial: the validation accuracy of every epoch goes to the
trial (trial.report, step = the epoch), and the run stops when the pruner says so (trial.should_prune), the way
early stopping stops it: `run.request_stop` ends training after the epoch, which is validated and saved as
usual, and RUN/pruned.json records the epoch and its accuracy.

A run whose loss diverges is not restarted at a lower rate here (as `alexnet train` restarts it): the trial
stands for its own learning rate, so the restarted attempt is stopped before its first step (TrialDiverged) and
the trial counts as pruned, with the epochs it reported."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..atomic import write_json
from ..engine.callbacks import Callback
from ..engine.divergence import Diverged
from ..engine.run import Run

PRUNED_FILE = "pruned.json"


class TrialDiverged(Exception):
    """The trial's loss ran away; `info`: where (epoch, step, loss, lr)."""

    def __init__(self, info: dict[str, Any]):
        super().__init__(f"the loss diverged at epoch {info['epoch']}, step {info['step']} (loss {info['loss']:.3g} "
                         f"at lr {info['lr']:g})")
        self.info = info


class Pruning(Callback):
    """`trial`: the optuna trial (rank 0), or None (the other ranks under torchrun: rank 0's verdict reaches
    them through `run.agree`). `pending_signal()`: a stop signal that came before training began (between
    trials), which then stops the run before its first step, as the loop's own handler would have."""

    def __init__(self, trial: Any, pruner: str = "the", pending_signal: Callable[[], str | None] = lambda: None):
        self.trial, self.pruner, self.pending_signal = trial, pruner, pending_signal
        self.started = False  # training began (a failure after this is the trial's, not its set-up's)
        self.pruned: dict[str, Any] | None = None
        self.epochs, self.best, self.seconds = 0, float("nan"), 0.0
        self.stop_signal: str | None = None
        self.diverged: dict[str, Any] | None = None

    def on_train_begin(self, run: Run) -> None:
        if self.diverged is not None:  # the trainer's restart at a lower rate: not this trial's
            raise TrialDiverged(self.diverged)
        self.started = True
        if self.trial is not None:  # a run continued from a stopped trial: its epochs so far, as the trial saw them
            for row in run.state.history:
                if isinstance(row.get("val_acc"), float) and math.isfinite(row["val_acc"]):
                    self.trial.report(row["val_acc"], step=int(row["epoch"]))
        pending = self.pending_signal()
        if pending and run.stop_signal is None:
            run.stop_signal = pending

    def on_epoch_end(self, run: Run, epoch: int, logs: dict[str, Any]) -> None:
        if not logs["validated"]:
            return
        value = float(logs["val_acc"])
        prune = False
        if self.trial is not None:
            self.trial.report(value, step=epoch + 1)
            prune = self.trial.should_prune()
        if run.agree(prune)[0]:
            self.pruned = {"epoch": epoch + 1, "value": value, "pruner": self.pruner}
            if run.info.is_main:
                write_json(run.out / PRUNED_FILE, {**({"trial": self.trial.number} if self.trial else {}),
                                                   **self.pruned})
            run.request_stop(f"pruned by the {self.pruner} pruner after epoch {epoch + 1} (validation accuracy "
                             f"{value * 100:.2f}%)")

    def on_train_end(self, run: Run) -> None:
        if isinstance(run.error, TrialDiverged):
            return  # the stopped restart: the diverged attempt's figures stand
        s = run.state
        self.epochs, self.best, self.seconds = s.epoch, s.best_val_acc, s.train_seconds
        self.stop_signal = run.stop_signal
        if isinstance(run.error, Diverged):
            e = run.error
            self.diverged = {"epoch": e.epoch, "step": e.step, "loss": e.loss, "lr": run.cfg.train.lr}
