"""Progressive resizing: train the early epochs on smaller images, the last ones at the input side.

A convolution's cost grows with the pixel count, so an epoch at 16 px costs about a quarter of one at
32 px (3.4x the images/s for cifar10-fast's network on the 2-core box, benchmarks/NOTES.md). Early
epochs learn coarse features that survive the change of scale; the epochs at full size then settle
the fine ones and batch norm's statistics. As in fastai's progressive resizing and FFCV's linear
resolution ramp, the side grows linearly, in steps that keep every pooled map whole.
"""

from __future__ import annotations

SIDE_STEP = 8  # sides are multiples of 8, so three 2x2 max-pools halve them exactly


def epoch_side(done: float, full: int, start: int, ramp: float) -> int:
    """Training side in px for an epoch that begins when a fraction `done` of training is behind (by
    epochs, or by the clock under --time-limit): `start` at 0, growing linearly to `full` when `done`
    reaches `ramp`, rounded down to whole steps. start=0 turns progressive resizing off."""
    if start <= 0 or start >= full or done >= ramp:
        return full
    side = start + (full - start) * done / ramp
    return max(start, min(full, int(side) // SIDE_STEP * SIDE_STEP))
