"""--tensorboard: a callback writing TensorBoard event files under RUN/tensorboard (`tensorboard --logdir RUN`).

Scalars after every step (step/loss, step/accuracy, step/lr, step/images_per_s, by global step) and every epoch
(epoch/train_loss, epoch/train_acc, epoch/val_loss, epoch/val_acc, epoch/lr, epoch/images_per_s, by epoch); at the
end, the best validation's confusion matrix and example predictions as images, drawn by the report's own
functions, when that validation's outputs are at hand (an in-memory validation split, as best.pt keeps them).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import AlexnetError
from ..metrics import confusion_matrix
from .callbacks import Callback
from .run import Run

STEP_SCALARS = ("loss", "accuracy", "lr", "images_per_s")
EPOCH_SCALARS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_s")


class TensorBoard(Callback):
    def __init__(self) -> None:
        try:
            # lazy: the tensorboard package is an optional extra (alexnet[tensorboard]), needed with --tensorboard only
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise AlexnetError("--tensorboard needs the tensorboard package: pip install 'alexnet[tensorboard]'") \
                from None
        self.writer_class = SummaryWriter
        self.writer: Any = None
        self.best: dict[str, Any] | None = None  # the outputs of the best validation so far

    def on_train_begin(self, run: Run) -> None:
        if run.info.is_main:
            self.writer = self.writer_class(log_dir=str(run.out / "tensorboard"))

    def on_step_end(self, run: Run, step: int, logs: dict[str, Any]) -> None:
        if self.writer is not None:
            for key in STEP_SCALARS:
                self.writer.add_scalar(f"step/{key}", logs[key], logs["global_step"])

    def on_epoch_end(self, run: Run, epoch: int, logs: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key in EPOCH_SCALARS:
            if logs[key] == logs[key]:  # val_* are NaN in an epoch without validation
                self.writer.add_scalar(f"epoch/{key}", logs[key], epoch + 1)
        if logs["improved"] and "val_logits" in logs["outputs"]:
            self.best = logs["outputs"]
        self.writer.flush()

    def on_train_end(self, run: Run) -> None:
        if self.writer is None:
            return
        try:
            if self.best is not None and run.error is None:
                self.add_pictures(run)
        finally:
            self.writer.close()
            self.writer = None

    def add_pictures(self, run: Run) -> None:
        """The confusion matrix and example predictions of the best validation, as the report draws them."""
        # lazy: the report's drawing imports matplotlib, which a run pays for only when it has pictures to add
        from ..reports.gallery import plot_examples, select_examples
        from ..reports.plots import plot_confusion

        logits, labels = self.best["val_logits"], self.best["val_labels"].numpy()
        probs = torch.softmax(logits.float(), dim=1).numpy()
        classes = run.data.classes
        cm = confusion_matrix(probs.argmax(1), labels, len(classes))
        chosen = select_examples(probs, labels, n=16, seed=run.cfg.train.seed)
        images = run.val_loader.images[torch.from_numpy(chosen).to(run.val_loader.images.device)]
        images = images.permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, 3) uint8, as stored
        with tempfile.TemporaryDirectory() as tmp:
            pictures = {"confusion_matrix": plot_confusion(cm, classes, Path(tmp) / "confusion.png"),
                        "examples": plot_examples(images, labels[chosen], probs[chosen], classes,
                                                  Path(tmp) / "examples.png")}
            for tag, png in pictures.items():
                self.writer.add_image(tag, read_png(png), run.state.epoch, dataformats="HWC")


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
