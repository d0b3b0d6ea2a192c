"""A wall-clock budget for a whole training command: the schedule follows the clock, not the step count.

`alexnet train --time-limit 60` promises a run that ends within 60 s of the command starting, on any
machine: the learning rate decays linearly to zero over the time left after warm-up (budgeted training,
Li, Yumer & Ramanan, ICLR 2020: a linear decay to zero over the budget beats cutting a longer schedule
short), progressive resizing grows with the time spent, and training stops when the time that the final
validation, checkpoints and report still need is all that is left. A faster machine gets more epochs
(`epochs` is then an upper bound); a slower one fewer, with the same schedule shape.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

# An evaluated view costs this share of a training step per image: forward only, no augmentation.
# Measured on a 2-core AVX2-only CPU: `cifar10`'s network trains at ~590 img/s and evaluates 5,000
# images x 6 views in 13.9 s, i.e. 0.27 of a training step per view. The report reuses the validation's
# logits (one more pass only over a training split, when none is held out), then adds its imports, the
# split loaded again from the cache and the figures: 7 s there. The estimate is
# taken RESERVE_MARGIN times, plus the fixed seconds for checkpoints and exit.
EVAL_COST = 0.3
RESERVE_MARGIN = 1.15
RESERVE_FIXED_S = 1.5  # checkpoints, JSON files, process exit
REPORT_FIXED_S = 7.0


@dataclass
class TimeBudget:
    limit: float  # seconds for the whole command; 0 = no limit
    started: float  # time.time() when the command started (the process's creation for the CLI)
    train_started: float = 0.0  # time.time() when the first training step began
    decay_started: float | None = None  # time.time() when the warm-up ended
    reserve: float = RESERVE_FIXED_S  # seconds kept for what follows training
    # What follows training, for the reserve: images in the final validation, views per image, a report?
    val_images: int = 0
    views: int = 1
    report: bool = False
    report_images: int = 0  # the images the report evaluates again (the training split when none is held out)
    seconds_per_image: float | None = None  # a training step's cost per image at the full side, smoothed
    step_seconds: float = 0.0  # the last step's duration: stop before a step that would cross the end
    _scale: float | None = None  # the cost scale of the last observed step (changes with the side)

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def train_end(self) -> float:
        return self.started + self.limit - self.reserve

    def fraction(self, since: float | None, now: float | None = None) -> float:
        """Share of the training time from `since` to the end already spent (0..1); 0 without a limit."""
        if not self.enabled or since is None:
            return 0.0
        now = time.time() if now is None else now
        span = self.train_end() - since
        return 1.0 if span <= 0 else min(max(now - since, 0.0) / span, 1.0)

    def decay_fraction(self) -> float:
        """How far the post-warm-up decay is, by the clock."""
        return self.fraction(self.decay_started)

    def run_fraction(self) -> float:
        """How far training is, by the clock (progressive resizing follows it)."""
        return self.fraction(self.train_started or None)

    def would_cross(self, seconds: float) -> bool:
        """True when work of `seconds` started now would end past the training time (never without a limit)."""
        return self.enabled and time.time() + seconds >= self.train_end()

    def spent(self) -> bool:
        """True when the next step would end past the training time (the last step says how long it takes)."""
        return self.would_cross(self.step_seconds)

    def _evaluation_seconds(self, images: int) -> float:
        """Forward passes over `images` with all their views: EVAL_COST of a training step per image and view."""
        return images * self.views * (self.seconds_per_image or 0.0) * EVAL_COST

    def eval_seconds(self) -> float:
        """The estimated seconds of one validation pass, with margin (0 before any step is timed)."""
        return RESERVE_MARGIN * self._evaluation_seconds(self.val_images)

    def clock(self, spent: bool, now: float | None = None) -> dict[str, Any]:
        """The clock for a checkpoint, as offsets from the command's start: a run stopped before its time
        was `spent` resumes with the time it had left (see `wind`)."""
        now = time.time() if now is None else now
        since = {name: (t - self.started if t else None)
                 for name, t in (("train_started", self.train_started), ("decay_started", self.decay_started))}
        return {"elapsed": now - self.started, "spent": spent, **since, "reserve": self.reserve,
                "seconds_per_image": self.seconds_per_image, "step_seconds": self.step_seconds, "scale": self._scale}

    def wind(self, clock: dict[str, Any], started: float) -> None:
        """Carry on a saved clock in a command that started at `started` (time.time()): the time between the
        two commands is not counted, the new command's own start-up is."""
        self.started = started - clock["elapsed"]
        self.train_started = self.started + clock["train_started"] if clock["train_started"] is not None else 0.0
        self.decay_started = self.started + clock["decay_started"] if clock["decay_started"] is not None else None
        self.reserve, self.seconds_per_image = clock["reserve"], clock["seconds_per_image"]
        self.step_seconds, self._scale = clock["step_seconds"], clock["scale"]

    def observe_step(self, seconds: float, images: int, cost_scale: float = 1.0) -> None:
        """Learn the training cost from each step (scaled to the full side when training smaller) and keep
        time for the final validation (forward only: EVAL_COST of a training step per image and view) and, when
        one is written, the report (its figures, and a pass over `report_images`).

        The first step, and the first at a new side, are left out of the estimate: they carry one-off costs
        (buffers allocated for the new shapes, torch.compile's compilation) that the next steps do not."""
        if not self.enabled or images <= 0:
            return
        now = time.time()
        if not self.train_started:
            self.train_started = now - seconds
        first_at_side, self._scale = cost_scale != self._scale, cost_scale
        if first_at_side:
            return
        self.step_seconds = seconds
        per_image = seconds / images * cost_scale
        self.seconds_per_image = per_image if self.seconds_per_image is None else \
            0.9 * self.seconds_per_image + 0.1 * per_image
        evaluation = self._evaluation_seconds(self.val_images + (self.report_images if self.report else 0))
        self.reserve = RESERVE_MARGIN * (evaluation + (REPORT_FIXED_S if self.report else 0.0)) + RESERVE_FIXED_S
