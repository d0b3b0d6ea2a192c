"""The dynamic batcher: images from concurrent requests share one forward pass.

A request puts its images in a queue and awaits their rows of probabilities. One worker task takes the
oldest image and waits until `max_batch` images are queued or `max_wait_ms` has passed since that image
arrived, whichever comes first, then runs one forward pass on all of them in a thread (the event loop
keeps accepting and decoding meanwhile) and hands each request back its own rows, in order. While a pass
runs, new requests queue up; when it ends, an image that has already waited `max_wait_ms` goes at once, with
everything queued behind it. `max_batch=1` turns batching off: one forward pass per image.

A pass over 32 small images costs much less than 32 passes over one (the fixed costs of a pass and of each
layer are shared), so under load batching multiplies the predictions per second a CPU can give.

Explanations (POST /explain) queue here too, under the same limits: occlusion's occluded copies are ordinary
images for the probabilities pass (they batch with predictions and with other requests' copies), and Grad-CAM's
images queue for their method's gradient pass (`maps`), batched across requests the same way. Each kind of pass
has its own queue; of the queues that are due (a full batch, or an image that has waited `max_wait_ms`), the one
holding the oldest image runs next, and every pass runs on the one forward thread.
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = ["DynamicBatcher", "BatcherStopped", "MapPass", "PROBABILITIES"]

PROBABILITIES = "probabilities"  # the kind of pass /predict and occlusion use
# A gradient pass: uint8 images (N, S, S, 3) and the class to explain for each (N,) -> maps (N, S, S).
MapPass = Callable[[np.ndarray, np.ndarray], np.ndarray]


class BatcherStopped(RuntimeError):
    """The service is shutting down: queued images get no answer."""


@dataclass
class _Item:
    image: np.ndarray
    future: asyncio.Future
    arrived: float  # loop.time() when queued
    target: int = 0  # the class a gradient pass explains; the probabilities pass ignores it


@dataclass
class BatchCounters:
    """What the batcher has done since it started; /health shows them."""

    requests: int = 0
    images: int = 0
    forward_passes: int = 0
    gradient_passes: int = 0  # of the forward passes, Grad-CAM's (forward and backward, for /explain)
    largest_batch: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        passes = self.forward_passes
        return {"requests": self.requests, "images": self.images, "forward_passes": passes,
                "gradient_passes": self.gradient_passes, "largest_batch": self.largest_batch,
                "mean_batch": round(sum(n * c for n, c in self.batch_sizes.items()) / passes, 2) if passes else 0.0}


class DynamicBatcher:
    """Queue images, run `forward(uint8 (N, S, S, 3)) -> (N, C)` on up to `max_batch` of them at a time; and
    the gradient passes `maps[method](images, targets) -> (N, S, S)` the same way, each method a queue of its own."""

    def __init__(self, forward: Callable[[np.ndarray], np.ndarray], max_batch: int = 32,
                 max_wait_ms: float = 5.0, maps: dict[str, MapPass] | None = None):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_ms >= 0, got {max_batch} and {max_wait_ms}")
        self.forward, self.max_batch, self.max_wait = forward, max_batch, max_wait_ms / 1000
        self.maps = dict(maps or {})
        self.counters = BatchCounters()
        self._pending: dict[str, deque[_Item]] = {kind: deque() for kind in (PROBABILITIES, *self.maps)}
        self._wake: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        # One thread: forward passes run one after another, each using all cores (torch / onnxruntime threads).
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="alexnet-forward")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="alexnet-batcher")

    async def stop(self) -> None:
        """Stop the worker; images still queued are answered with BatcherStopped."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for queue in self._pending.values():
            while queue:
                item = queue.popleft()
                if not item.future.done():
                    item.future.set_exception(BatcherStopped("the service is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def predict(self, images: list[np.ndarray], request: bool = True) -> list[np.ndarray]:
        """The probability rows of `images` (one request's), in their order. `request=False`: more images of a
        request already counted (an explanation's occluded copies)."""
        return await self._queue(PROBABILITIES, images, None, request)

    async def explain(self, method: str, images: list[np.ndarray], targets: list[int]) -> list[np.ndarray]:
        """The (S, S) maps of `method` for `images` and their `targets` classes, from its gradient pass."""
        if method not in self.maps:
            raise ValueError(f"this batcher has no gradient pass {method!r}, only {', '.join(self.maps) or 'none'}")
        return await self._queue(method, images, targets, False)

    async def _queue(self, kind: str, images: list[np.ndarray], targets: list[int] | None,
                     request: bool) -> list[np.ndarray]:
        if self._task is None:
            raise BatcherStopped("the batcher is not running")
        loop = asyncio.get_running_loop()
        now = loop.time()
        targets = targets if targets is not None else [0] * len(images)
        items = [_Item(image, loop.create_future(), now, int(t)) for image, t in zip(images, targets)]
        self._pending[kind].extend(items)
        self.counters.requests += request
        self._notify()
        return list(await asyncio.gather(*(item.future for item in items)))

    def _notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _sleep(self, deadline: float | None) -> None:
        """Until an image arrives, or until `deadline` (loop time)."""
        loop = asyncio.get_running_loop()
        self._wake = loop.create_future()
        timer = loop.call_at(deadline, self._notify) if deadline is not None else None
        try:
            await self._wake
        finally:
            self._wake = None
            if timer is not None:
                timer.cancel()

    def _due(self, now: float) -> tuple[str | None, float | None]:
        """The kind of pass to run now: of the queues with a full batch or whose oldest image has waited
        `max_wait`, the one with the oldest image. Else None, and when the next queue falls due (None: empty)."""
        due, wake = None, None
        for kind, queue in self._pending.items():
            if not queue:
                continue
            deadline = queue[0].arrived + self.max_wait
            if len(queue) >= self.max_batch or now >= deadline:
                if due is None or queue[0].arrived < self._pending[due][0].arrived:
                    due = kind
            elif wake is None or deadline < wake:
                wake = deadline
        return due, wake

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            kind, wake = self._due(loop.time())
            if kind is None:
                await self._sleep(wake)
                continue
            queue = self._pending[kind]
            batch = [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]
            await self._run_batch(kind, batch)

    async def _run_batch(self, kind: str, batch: list[_Item]) -> None:
        live = [item for item in batch if not item.future.done()]  # a cancelled request needs no answer
        if not live:
            return
        try:
            rows = await asyncio.get_running_loop().run_in_executor(self._executor, self._forward, kind, live)
        except asyncio.CancelledError:
            for item in live:
                if not item.future.done():
                    item.future.set_exception(BatcherStopped("the service is shutting down"))
            raise
        except Exception as exc:  # noqa: BLE001 - every waiting request hears of it, the batcher lives on
            for item in live:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        c = self.counters
        c.images += len(live)
        c.forward_passes += 1
        c.gradient_passes += kind != PROBABILITIES
        c.largest_batch = max(c.largest_batch, len(live))
        c.batch_sizes[len(live)] = c.batch_sizes.get(len(live), 0) + 1
        for item, row in zip(live, rows):
            if not item.future.done():
                item.future.set_result(row)

    def _forward(self, kind: str, items: list[_Item]) -> np.ndarray:
        images = np.stack([item.image for item in items])
        if kind == PROBABILITIES:
            return self.forward(images)
        return self.maps[kind](images, np.array([item.target for item in items], dtype=np.int64))
