"""`alexnet tune` under torchrun: rank 0 alone talks to the study; every rank trains each trial together.

Rank 0 asks the study for a trial, builds its run (config, folder, or the folder it continues) and sends it to
the other ranks with one `torch.distributed.broadcast_object_list`; they train it with it (DDP, as `alexnet
train` under torchrun). The pruner's verdict reaches them through the training loop's own agreement
(`Run.agree`, in the pruning callback). When the study has its trials, rank 0 sends DONE and every rank leaves.
The process group is kept between trials (`distributed.held`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.distributed as dist

from ..engine.distributed import Dist
from ..errors import AlexnetError, TrainingStopped

DONE = None  # the message that ends the followers' loop


def share(message: Any, info: Dist) -> Any:
    """Rank 0's `message` (any picklable object), on every rank; alone, `message` itself."""
    if not info.enabled:
        return message
    box = [message if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def follow(info: Dist, train_trial: Callable[[dict[str, Any]], Any]) -> int:
    """The ranks other than 0: train each run rank 0 sends (`train_trial(message)`) until it sends DONE; the
    number of runs trained. A run's own failure (AlexnetError) is rank 0's to record in the study: the next one
    follows. A stop signal (TrainingStopped, on every rank at the same step) ends the trial here too: rank 0
    records it and sends DONE."""
    count = 0
    while True:
        message = share(DONE, info)
        if message is DONE:
            return count
        try:
            train_trial(message)
        except (AlexnetError, TrainingStopped):
            pass
        count += 1
