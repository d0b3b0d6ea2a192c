"""A wall-clock budget for a whole training command: the schedule follows the clock, not the step count.

`alexnet train --time-limit 60` promises a run that ends within 60 s of the command starting, on any
machine: the learning rate decays linearly to zero over the time left after warm-up (budgeted training,
Li, Yumer & Ramanan, ICLR 2020: a linear decay to zero over the budget beats cutting a longer schedule
short), progressive resizing grows with the time spent, and training stops when the time that the final
validation, checkpoints and report still need is all that is left. A faster machine gets more epochs
(`epochs` is then an upper bound); a slower one fewer, with the same schedule shape.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AlexnetError

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
    # Every clock reading and step duration that steered the run, in order (readings as seconds since
    # `started`): RUN/clock.json. With `replay` (a recorded tape), those values are read from it instead of the
    # clock, so the run makes the same decisions at the same steps: the same schedule, stop and validations.
    tape: list[float] = field(default_factory=list)
    replay: list[float] | None = None
    replayed: int = 0  # readings taken from `replay` so far
    resumed: bool = False  # the clock was wound on from a checkpoint: its tape spans two starts

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def now(self) -> float:
        """time.time() for a decision of the run, recorded on the tape (or read from the replayed one)."""
        return self.started + self._read(time.time() - self.started)

    def measured(self, seconds: float) -> float:
        """A measured duration that steers the run (a step's), recorded (or replayed) as `now` is."""
        return self._read(seconds)

    def _read(self, value: float) -> float:
        if self.replay is not None:
            if self.replayed >= len(self.replay):
                raise AlexnetError(f"--replay-clock: the recorded clock ran out after its {len(self.replay):,} "
                                   "readings: this run is not making the recorded run's decisions (other data, "
                                   "options, code or thread count); remove --replay-clock to let the clock decide")
            value = self.replay[self.replayed]
            self.replayed += 1
        self.tape.append(value)
        return value

    def train_end(self) -> float:
        return self.started + self.limit - self.reserve

    def fraction(self, since: float | None, now: float | None = None) -> float:
        """Share of the training time from `since` to the end already spent (0..1); 0 without a limit."""
        if not self.enabled or since is None:
            return 0.0
        now = self.now() if now is None else now
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
        return self.enabled and self.now() + seconds >= self.train_end()

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
                "seconds_per_image": self.seconds_per_image, "step_seconds": self.step_seconds, "scale": self._scale,
                "tape": list(self.tape), "replayed": self.replayed}

    def wind(self, clock: dict[str, Any], started: float) -> None:
        """Carry on a saved clock in a command that started at `started` (time.time()): the time between the
        two commands is not counted, the new command's own start-up is."""
        if self.replay is None:  # a replay keeps the recorded start its readings count from
            self.started = started - clock["elapsed"]
        self.train_started = self.started + clock["train_started"] if clock["train_started"] is not None else 0.0
        self.decay_started = self.started + clock["decay_started"] if clock["decay_started"] is not None else None
        self.reserve, self.seconds_per_image = clock["reserve"], clock["seconds_per_image"]
        self.step_seconds, self._scale = clock["step_seconds"], clock["scale"]
        self.tape, self.replayed = list(clock.get("tape", [])), int(clock.get("replayed", 0))
        self.resumed = True

    def observe_step(self, seconds: float, images: int, cost_scale: float = 1.0) -> None:
        """Learn the training cost from each step (scaled to the full side when training smaller) and keep
        time for the final validation (forward only: EVAL_COST of a training step per image and view) and, when
        one is written, the report (its figures, and a pass over `report_images`).

        The first step, and the first at a new side, are left out of the estimate: they carry one-off costs
        (buffers allocated for the new shapes, torch.compile's compilation) that the next steps do not."""
        if not self.enabled or images <= 0:
            return
        seconds, now = self.measured(seconds), self.now()
        if not self.train_started:
            # The schedule's clock starts after the first step: its one-off costs (torch.compile's compilation
            # can take half a short budget) are not training, and must not end the warm-up or spend the decay.
            self.train_started = now
        first_at_side, self._scale = cost_scale != self._scale, cost_scale
        if first_at_side:
            return
        self.step_seconds = seconds
        per_image = seconds / images * cost_scale
        self.seconds_per_image = per_image if self.seconds_per_image is None else \
            0.9 * self.seconds_per_image + 0.1 * per_image
        evaluation = self._evaluation_seconds(self.val_images + (self.report_images if self.report else 0))
        self.reserve = RESERVE_MARGIN * (evaluation + (REPORT_FIXED_S if self.report else 0.0)) + RESERVE_FIXED_S


def clock_file(budget: TimeBudget) -> dict[str, Any]:
    """RUN/clock.json: the time limit, the start the readings count from (a replay reads them against the
    same start, so that its arithmetic is the recorded run's to the last bit) and the tape."""
    return {"time_limit": budget.limit, "started": budget.started, "resumed": budget.resumed,
            "readings": list(budget.tape)}


def load_replay(source: str, time_limit: float) -> tuple[list[float], float]:
    """(readings, start) from --replay-clock: a run folder or its clock.json. One line for what does not fit."""
    path = Path(source)
    path = path if path.suffix == ".json" else path / "clock.json"
    try:
        data = json.loads(path.read_text())
        readings, started, recorded = list(map(float, data["readings"])), float(data["started"]), data["time_limit"]
    except FileNotFoundError:
        raise AlexnetError(f"--replay-clock {source}: no {path}; give a time-limited run's folder or its clock.json"
                           ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AlexnetError(f"--replay-clock {source}: {path} is not a run's clock ({type(e).__name__}: {e})") from None
    if data.get("resumed"):
        raise AlexnetError(f"--replay-clock {source}: that run was stopped and resumed, so its readings count from two "
                           "starts and cannot be replayed; remove --replay-clock")
    if recorded != time_limit:
        raise AlexnetError(f"--replay-clock {source}: that run had --time-limit {recorded:g}, this one "
                           f"{time_limit:g}; give the same --time-limit")
    return readings, started
