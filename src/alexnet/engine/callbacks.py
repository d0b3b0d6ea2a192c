"""Callbacks: each feature that needs the training loop's moments lives in a small object of its own.

The loop (`alexnet.engine.trainer`) calls these hooks on every callback, in list order, on every rank
(under torchrun, only `run.info.is_main` should write files):

    on_train_begin(run)              after set-up (and the restore of a resumed run), before the first step
    on_epoch_begin(run, epoch)       epoch: the 0-based index of the epoch about to train (or to go on with)
    on_step_end(run, step, logs)     after each optimiser step; step: its 0-based index in the epoch; logs:
                                     epoch, global_step (steps done in the whole run), loss and accuracy (of
                                     this batch), lr, images, seconds (this step's), images_per_s, last (the
                                     epoch's steps end here), save (the position is checkpointed now), stop (a
                                     signal stops training after this step)
    on_epoch_end(run, epoch, logs)   after validation; logs: the history row (epoch (1-based), train_loss,
                                     train_acc, val_loss, val_acc (NaN when not validated), lr, images_per_s,
                                     seconds) and validated, improved (best.pt is written), out_of_time, side,
                                     outputs (the validation logits kept in best.pt, when it keeps them)
    on_train_end(run)                always, also when training ends on an error or a signal (run.error)

`run` (`alexnet.engine.run.Run`: callbacks see the run through that module, never the trainer) holds the config
(`run.cfg`), the model, optimiser and scheduler, the run folder (`run.out`), `run.info` (rank, world size) and
`run.state` (epoch, step, history, best_val_acc). A callback ends training with `run.request_stop(reason)`: the
epoch in progress is finished (validated, saved) and the reason is printed and recorded in its history row
("stopped"); `run.stop_epoch()` ends the epoch in progress after this step.

User callbacks (`alexnet.train(..., callbacks=[...])`) run after the built-in stop rules (signals, the time limit,
early stopping) and before the checkpoints, history files, progress and loggers (`trainer.build_callbacks` puts
them in that order). An example:

    class PrintLoss(Callback):
        def on_step_end(self, run, step, logs):
            if logs["global_step"] % 100 == 0:
                print(logs["global_step"], logs["loss"])

    alexnet.train(data="cifar10", epochs=3, callbacks=[PrintLoss()])
"""

from __future__ import annotations

import csv
import io
import signal
import threading
import time
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write, reported_write, save_checkpoint, write_json
from .run import Run

HISTORY_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s", "seconds",
                  "stopped"]
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Callback:
    """Override the hooks you need; each does nothing by default."""

    def on_train_begin(self, run: Run) -> None:
        pass

    def on_epoch_begin(self, run: Run, epoch: int) -> None:
        pass

    def on_step_end(self, run: Run, step: int, logs: dict[str, Any]) -> None:
        pass

    def on_epoch_end(self, run: Run, epoch: int, logs: dict[str, Any]) -> None:
        pass

    def on_train_end(self, run: Run) -> None:
        pass


class GracefulStop(Callback):
    """SIGTERM or SIGINT: finish the step in progress, save the position in last.pt, stop (the CLI exits with 75).

    A second signal ends the process at once (the signal's default action): every file on disk is whole either
    way, since each is written to a temp file and renamed."""

    def __init__(self) -> None:
        self.previous: dict[int, Any] = {}

    def on_train_begin(self, run: Run) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only; a caller in a thread keeps its own handling

        def handle(signum: int, frame: Any) -> None:
            run.stop_signal = signal.Signals(signum).name
            for sig in STOP_SIGNALS:  # the next one is not caught: it ends the process without delay
                signal.signal(sig, signal.SIG_DFL)

        for sig in STOP_SIGNALS:
            self.previous[sig] = signal.signal(sig, handle)

    def on_train_end(self, run: Run) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


class TimeLimit(Callback):
    """--time-limit: learn each step's cost and end the epoch when the time left is what the run's end needs."""

    def on_step_end(self, run: Run, step: int, logs: dict[str, Any]) -> None:
        budget = run.budget
        if budget.enabled:
            budget.observe_step(logs["seconds"], logs["images"], run.cost_scale)
            if budget.spent():
                run.stop_epoch()

    def on_epoch_end(self, run: Run, epoch: int, logs: dict[str, Any]) -> None:
        if logs["out_of_time"]:
            run.request_stop(f"--time-limit {run.cfg.train.time_limit:g}s reached")


def validations_without_improvement(history: list[dict[str, Any]], min_delta: float
                                    ) -> tuple[int, dict[str, Any] | None]:
    """(validations since the validation accuracy last rose by more than `min_delta`, the row that rose)."""
    wait, mark = 0, None
    for row in history:
        acc = row.get("val_acc")
        if acc is None or acc != acc:  # not validated that epoch
            continue
        if mark is None or acc > mark["val_acc"] + min_delta:
            mark, wait = row, 0
        else:
            wait += 1
    return wait, mark


class EarlyStopping(Callback):
    """--early-stop PATIENCE [--min-delta D]: stop once PATIENCE validations in a row did not raise the validation
    accuracy by more than D. best.pt keeps the best epoch. Counted from the history, so it survives a resume."""

    def __init__(self, patience: int, min_delta: float = 0.0):
        self.patience, self.min_delta = patience, min_delta

    def check(self, run: Run) -> None:
        wait, mark = validations_without_improvement(run.state.history, self.min_delta)
        if mark is not None and wait >= self.patience:
            above = f" by more than {self.min_delta:g}" if self.min_delta else ""
            run.request_stop(f"early stopping: validation accuracy has not improved{above} for {wait} validation"
                             f"{'s' if wait > 1 else ''} (best {run.state.best_val_acc * 100:.2f}%; the patience is "
                             f"{self.patience})")

    def on_train_begin(self, run: Run) -> None:
        self.check(run)  # a resumed run that already met the rule trains no further

    def on_epoch_end(self, run: Run, epoch: int, logs: dict[str, Any]) -> None:
        if logs["validated"]:
            self.check(run)


class Checkpointing(Callback):
    """best.pt when validation improved, then last.pt, at every epoch's end: in that order, a crash between the
    two writes never leaves best.pt older than the best score last.pt records. last.pt also inside an epoch,
    when a save is due (--save-every, --save-every-steps) or a signal stops training."""

    def on_step_end(self, run: Run, step: int, logs: dict[str, Any]) -> None:
        if logs["save"] or logs["stop"]:
            ckpt = run.checkpoint(full=True)  # every rank: the epoch's sums so far are added up over them
            if run.info.is_main:
                self.write(run, "last.pt", ckpt)
            run.mark_saved()

    def on_epoch_end(self, run: Run, epoch: int, logs: dict[str, Any]) -> None:
        if run.info.is_main:
            if logs["improved"]:
                self.write(run, "best.pt", run.checkpoint(full=False) | logs["outputs"])
            self.write(run, "last.pt", run.checkpoint(full=True))
        run.mark_saved()

    def write(self, run: Run, name: str, ckpt: dict[str, Any]) -> None:
        with reported_write(run.out / name, run.saved_description(), run.out if run.saved else None):
            save_checkpoint(run.out / name, ckpt)


def write_history(out: Path, history: list[dict[str, Any]]) -> None:
    """history.csv and history.json, like Keras' History, rewritten atomically each epoch."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    writer.writerows(history)

    def write_csv(tmp: str) -> None:
        Path(tmp).write_text(buf.getvalue())

    atomic_write(out / "history.csv", write_csv)
    write_json(out / "history.json", history)


class History(Callback):
    """history.csv and history.json after every epoch."""

    def on_epoch_end(self, run: Run, epoch: int, logs: dict[str, Any]) -> None:
        if run.info.is_main:
            with reported_write(run.out / "history.json", run.saved_description(), run.out):
                write_history(run.out, run.state.history)


class Progress(Callback):
    """A live bar per epoch (loss, accuracy, images/s so far) and one line per finished epoch."""

    def on_epoch_begin(self, run: Run, epoch: int) -> None:
        self.loss = self.correct = 0.0
        self.images, self.started = 0, time.perf_counter()
        run.ui.start(f"epoch {epoch + 1}/{run.cfg.train.epochs}", len(run.train_loader))

    def on_step_end(self, run: Run, step: int, logs: dict[str, Any]) -> None:
        self.loss += logs["loss"] * logs["images"]
        self.correct += logs["accuracy"] * logs["images"]
        self.images += logs["images"]
        last = logs["last"] or run.ending_epoch
        if step % 5 == 0 or last:
            rate = self.images * run.info.world_size / max(time.perf_counter() - self.started, 1e-9)
            run.ui.update(step + 1, self.loss / self.images, self.correct / self.images, rate)
        if last:
            run.ui.stop()

    def on_epoch_end(self, run: Run, epoch: int, logs: dict[str, Any]) -> None:
        run.ui.stop()
        t = run.cfg.train
        val = f"val loss {logs['val_loss']:.3f} acc {logs['val_acc'] * 100:.2f}%" if logs["validated"] else "no val"
        side = logs["side"]
        run.ui.print(f"epoch {epoch + 1:>3}/{t.epochs}  train loss {logs['train_loss']:.3f} "
                     f"acc {logs['train_acc'] * 100:.2f}%  {val}  lr {logs['lr']:.4g}  "
                     f"{logs['images_per_s']:,.0f} img/s  {logs['seconds']:.1f}s"
                     f"{f'  at {side}px' if side != run.image_size else ''}"
                     f"{'  *best' if logs['improved'] and logs['validated'] else ''}"
                     f"{f'  (--time-limit {t.time_limit:g}s reached)' if logs['out_of_time'] else ''}")
        if run.stop_reason and not logs["out_of_time"]:
            run.ui.print(f"{run.stop_reason}; best.pt holds epoch {best_epoch(run)}")

    def on_train_end(self, run: Run) -> None:
        run.ui.stop()


def best_epoch(run: Run) -> int | str:
    """The epoch best.pt holds: the first with the best score (as the loop keeps it), or the last one."""
    scored = [row for row in run.state.history if row["val_acc"] == row["val_acc"]]
    if not scored or run.val_loader is None:
        return run.state.epoch
    return max(scored, key=lambda row: row["val_acc"])["epoch"]
