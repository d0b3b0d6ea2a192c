"""The divergence guard: a training loss that climbs far above where it started ends the attempt.

A learning rate too high for the data (the default 0.4 on a few hundred photos, one step an epoch) sends the
loss from 0.75 to 46 within two epochs; the network then sits at chance, and without a guard the run still
ends with a "best" epoch. The guard compares the mean loss of the last few steps with the first step's loss (the
weights before any update), floored at ln(classes), the loss of a uniform guess (a pretrained network that starts
near zero must not make the threshold meaningless). Ten times that is far outside what a run
that learns shows, however spiky its first epochs.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from ..config import TrainConfig
from ..errors import AlexnetError

# Diverged: the recent loss above FACTOR x the starting loss. Runs that learn can spike to 3-5x for a few steps
# and recover (the CIFAR presets on a 1,000-image sample, the test suite's tiny runs, photos without clipping);
# the runaway this guards against went 0.75 -> 46.9 (60x) in one step and never learnt again.
FACTOR = 10.0
WINDOW = 5  # steps averaged at each check: one unlucky batch is not a divergence
RESTARTS = 2  # fresh restarts at a lower rate before the run stops
LR_DIVISOR = 4.0  # each restart divides the learning rates by this


class Diverged(AlexnetError):
    """The training loss rose above FACTOR x its start: the run may restart at a lower rate."""

    def __init__(self, message: str, loss: float, start: float, epoch: int, step: int):
        super().__init__(message)
        self.loss, self.start, self.epoch, self.step = loss, start, epoch, step


@dataclass
class DivergenceGuard:
    """Sees every step's loss; `observe` says when the run has diverged. `start` is kept in checkpoints."""

    num_classes: int
    window: int = WINDOW
    start: float | None = None

    def __post_init__(self) -> None:
        self.window = max(1, self.window)
        self.recent: deque[float] = deque(maxlen=self.window)

    @property
    def threshold(self) -> float | None:
        return None if self.start is None else FACTOR * self.start

    def observe(self, loss: float) -> bool:
        """Record one step's (finite) loss; True once the mean of the last few is above the threshold."""
        self.recent.append(loss)
        if self.start is None:  # the first step's loss: the weights as initialised (or loaded), before any update
            self.start = max(loss, math.log(max(self.num_classes, 2)))
            return False
        return sum(self.recent) / len(self.recent) > FACTOR * self.start

    def recent_loss(self) -> float:
        return sum(self.recent) / max(len(self.recent), 1)


def lowered_rates(train: TrainConfig) -> dict[str, float]:
    """The learning-rate fields of a TrainConfig divided by LR_DIVISOR (the ones that are set)."""
    rates = {"lr": train.lr, "muon_lr": train.muon_lr, "lr_backbone": train.lr_backbone}
    return {k: v / LR_DIVISOR for k, v in rates.items() if v is not None}
