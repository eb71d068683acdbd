"""Dynamic batching with a bounded wait, on an asyncio loop (what Ray Serve's ``@serve.batch`` does).

Callers ``await batcher.submit(item)``; one loop takes the first waiting item, then keeps taking
items until ``max_batch_size`` are in or ``batch_wait_s`` has passed since the first, runs
``run_batch(items) -> results`` (one result per item, in order) on a worker thread so the loop keeps
accepting items meanwhile, and hands each caller its own result. While a batch computes, the next
one fills: under load batches grow by themselves, when idle a lone item waits at most
``batch_wait_s``. At most ``max_queued`` items wait; one more is refused at once
(:class:`ServiceBusyError`) instead of growing the queue without bound.

Plain asyncio, no Ray: the service's replica actor (``pipeline/live/service.py``) holds one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from exitflow.pipeline.errors import ExitflowError

T = TypeVar("T")
R = TypeVar("R")


class ServiceBusyError(ExitflowError):
    """More items wait than the batcher holds (``service.max_queued``): the caller should back off."""


class MicroBatcher(Generic[T, R]):
    """Collects items from concurrent callers into batches for ``run_batch``.

    Args:
        run_batch: ``items -> results`` (same length, same order); it must not raise for one bad
            item (return that item's error as its result). If it raises anyway, every caller of
            the batch gets that exception.
        max_batch_size: Largest batch (>= 1).
        batch_wait_s: Longest wait after a batch's first item for more to come (>= 0).
        max_queued: Most items waiting (>= 1).

    Raises:
        ValueError: for a bound out of range.
    """

    def __init__(self, run_batch: Callable[[list[T]], Sequence[R]], max_batch_size: int = 32,
                 batch_wait_s: float = 0.005, max_queued: int = 256):
        if max_batch_size < 1 or batch_wait_s < 0 or max_queued < 1:
            raise ValueError(
                f"need max_batch_size >= 1, batch_wait_s >= 0, max_queued >= 1; got {max_batch_size}, "
                f"{batch_wait_s}, {max_queued}"
            )
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.max_queued = max_queued
        self.batches = 0
        self.items = 0
        self.largest_batch = 0
        self.rejected = 0
        self._queue: asyncio.Queue[tuple[T, asyncio.Future[R]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch")

    async def submit(self, item: T) -> R:
        """``item``'s result, computed in a batch with whatever else arrives meanwhile.

        Raises:
            ServiceBusyError: when ``max_queued`` items already wait.
        """
        if self._queue is None:
            self._queue = asyncio.Queue(maxsize=self.max_queued)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop(self._queue))
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((item, future))
        except asyncio.QueueFull:
            self.rejected += 1
            raise ServiceBusyError(
                f"{self.max_queued} samples already wait for this replica; add replicas "
                "(service.num_replicas) or raise service.max_queued"
            ) from None
        return await future

    async def _loop(self, queue: asyncio.Queue[tuple[T, asyncio.Future[R]]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.batch_wait_s
            while len(batch) < self.max_batch_size:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), left))
                except asyncio.TimeoutError:
                    break
            items = [item for item, _ in batch]
            try:
                results: Sequence[Any] = await loop.run_in_executor(self._executor, self.run_batch, items)
                if len(results) != len(items):
                    raise ExitflowError(f"run_batch returned {len(results)} results for {len(items)} items")
            except Exception as e:  # noqa: BLE001 - every caller of this batch hears of it; the loop goes on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.batches += 1
            self.items += len(items)
            self.largest_batch = max(self.largest_batch, len(items))
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():  # a caller that gave up (cancelled) is skipped
                    future.set_result(result)

    def stats(self) -> dict[str, Any]:
        """Batches run, items, mean and largest batch size, items waiting and refused."""
        return {
            "batches": self.batches,
            "items": self.items,
            "batch_size_mean": self.items / self.batches if self.batches else 0.0,
            "batch_size_max": self.largest_batch,
            "queued": self._queue.qsize() if self._queue is not None else 0,
            "rejected": self.rejected,
        }

    def shutdown(self) -> None:
        """Stop the loop and the worker thread (waiting callers are cancelled)."""
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
