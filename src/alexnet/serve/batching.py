"""The dynamic batcher: images from concurrent requests share one forward pass.

A request puts its images in a queue and awaits their rows of probabilities. One worker task takes the
oldest image and waits until `max_batch` images are queued or `max_wait_ms` has passed since that image
arrived, whichever comes first, then runs one forward pass on all of them in a thread (the event loop
keeps accepting and decoding meanwhile) and hands each request back its own rows, in order. While a pass
runs, new requests queue up; when it ends, an image that has already waited `max_wait_ms` goes at once, with
everything queued behind it. `max_batch=1` turns batching off: one forward pass per image.

A pass over 32 small images costs much less than 32 passes over one (the fixed costs of a pass and of each
layer are shared), so under load batching multiplies the predictions per second a CPU can give.
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

__all__ = ["DynamicBatcher", "BatcherStopped"]


class BatcherStopped(RuntimeError):
    """The service is shutting down: queued images get no answer."""


@dataclass
class _Item:
    image: np.ndarray
    future: asyncio.Future
    arrived: float  # loop.time() when queued


@dataclass
class BatchCounters:
    """What the batcher has done since it started; /health shows them."""

    requests: int = 0
    images: int = 0
    forward_passes: int = 0
    largest_batch: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        passes = self.forward_passes
        return {"requests": self.requests, "images": self.images, "forward_passes": passes,
                "largest_batch": self.largest_batch,
                "mean_batch": round(sum(n * c for n, c in self.batch_sizes.items()) / passes, 2) if passes else 0.0}


class DynamicBatcher:
    """Queue images, run `forward(uint8 (N, S, S, 3)) -> (N, C)` on up to `max_batch` of them at a time."""

    def __init__(self, forward: Callable[[np.ndarray], np.ndarray], max_batch: int = 32,
                 max_wait_ms: float = 5.0):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"max_batch must be >= 1 and max_wait_ms >= 0, got {max_batch} and {max_wait_ms}")
        self.forward, self.max_batch, self.max_wait = forward, max_batch, max_wait_ms / 1000
        self.counters = BatchCounters()
        self._pending: deque[_Item] = deque()
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
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(BatcherStopped("the service is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def predict(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """The probability rows of `images` (one request's), in their order."""
        if self._task is None:
            raise BatcherStopped("the batcher is not running")
        loop = asyncio.get_running_loop()
        now = loop.time()
        items = [_Item(image, loop.create_future(), now) for image in images]
        self._pending.extend(items)
        self.counters.requests += 1
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

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                await self._sleep(None)
            deadline = self._pending[0].arrived + self.max_wait
            while len(self._pending) < self.max_batch and loop.time() < deadline:
                await self._sleep(deadline)
            batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
            await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Item]) -> None:
        live = [item for item in batch if not item.future.done()]  # a cancelled request needs no answer
        if not live:
            return
        try:
            probs = await asyncio.get_running_loop().run_in_executor(self._executor, self._forward, live)
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
        c.largest_batch = max(c.largest_batch, len(live))
        c.batch_sizes[len(live)] = c.batch_sizes.get(len(live), 0) + 1
        for item, row in zip(live, probs):
            if not item.future.done():
                item.future.set_result(row)

    def _forward(self, items: list[_Item]) -> np.ndarray:
        return self.forward(np.stack([item.image for item in items]))
