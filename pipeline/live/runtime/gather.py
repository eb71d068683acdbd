"""Samples of several robots in one call: the client side of a shared service's micro-batches.

A driver process that serves several robots (``benchmarks/fleet.py``: one pipeline per robot, one
process) hands the service one sample at a time per robot. :class:`Gatherer` sits between those
pipelines and the service, on the process's client event loop, and turns the samples that are
ready at about the same time into ONE call carrying a micro-batch:

- a sample that finds no call of this gatherer in flight goes **at once** (no added latency while
  the service keeps up);
- while a call is in flight, samples wait here for at most ``gather_ms`` (or until
  ``max_batch_size`` are waiting, or until the calls in flight have all come back), then go
  together as one call;
- one waiting sample goes as a per-sample call (the replica's ``@serve.batch`` may still merge it
  with other processes' samples); two or more go as one micro-batch call, run as one batch;
- the results are split back, one per sample, in order. Isolation is per sample: the replica
  answers each sample on its own (a bad sample fails alone); a batch that cannot be sent as a
  whole (:class:`BatchNotSent`, e.g. one payload that does not serialise) is sent again one sample
  per call, so only the bad sample fails; an error of the call itself (the replica died) reaches
  each of its samples, as it would have one by one.

Decisions are the ones the samples get one by one: the replica's batch engine keeps every
sample's own walk (tests/pipeline/test_service.py). The class knows nothing of Ray: it is given
the two coroutines that call the service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from exitflow.pipeline.messages import Sample

SendOne = Callable[[Sample, str], Awaitable[Any]]
SendMany = Callable[[Sequence[Sample], Sequence[str]], Awaitable[Sequence[Any]]]


class BatchNotSent(Exception):  # noqa: N818 - a state the sender reports: nothing left this process
    """Raised by a ``send_many`` that could not send the batch at all (e.g. a payload that does not
    serialise): the gatherer then sends its samples one per call."""


@dataclass(frozen=True)
class GatherSettings:
    """How a process's samples are gathered into micro-batch calls (see the module doc).

    Args:
        enabled: Gather at all (off: every sample is its own call, as before).
        gather_ms: The longest a sample waits for others while a call is in flight.
        max_batch_size: The most samples one call carries (the service's ``max_batch_size``).
    """

    enabled: bool = True
    gather_ms: float = 2.0
    max_batch_size: int = 32

    def __post_init__(self) -> None:
        if not self.gather_ms >= 0.0:
            raise ValueError(f"gather_ms must be >= 0, got {self.gather_ms}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")


class Gatherer:
    """Gathers samples into micro-batch calls; use it from one event loop (see the module doc).

    Args:
        send_one: ``await send_one(sample, client)`` -> that sample's result (one call).
        send_many: ``await send_many(samples, clients)`` -> one result per sample, in order (one call).
        settings: Wait and batch bounds.
    """

    def __init__(self, send_one: SendOne, send_many: SendMany, settings: GatherSettings | None = None):
        self.send_one, self.send_many = send_one, send_many
        self.settings = settings or GatherSettings()
        self._pending: list[tuple[Sample, str, asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight = 0
        self._tasks: set[asyncio.Task] = set()
        self.calls = 0  # calls sent (per-sample and micro-batch)
        self.samples = 0  # samples sent
        self.largest_call = 0
        self.resent_one_by_one = 0  # batches that could not be sent whole

    async def submit(self, sample: Sample, client: str = "") -> Any:
        """``sample``'s result, from a call it may share with other waiting samples."""
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.append((sample, client, future))
        if len(self._pending) >= self.settings.max_batch_size or self._in_flight == 0:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.settings.gather_ms / 1000.0, self._flush)
        return await future

    def stats(self) -> dict[str, Any]:
        """Calls and samples sent, the mean and largest call, batches resent one by one."""
        return {"calls": self.calls, "samples": self.samples, "largest_call": self.largest_call,
                "samples_per_call": self.samples / self.calls if self.calls else 0.0,
                "resent_one_by_one": self.resent_one_by_one}

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending:
            batch = self._pending[: self.settings.max_batch_size]
            del self._pending[: self.settings.max_batch_size]
            self._in_flight += 1
            self.calls += 1
            self.samples += len(batch)
            self.largest_call = max(self.largest_call, len(batch))
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)  # a strong reference until it is done
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[Sample, str, asyncio.Future]]) -> None:
        try:
            if len(batch) == 1:
                sample, client, future = batch[0]
                _settle(future, await _outcome(self.send_one(sample, client)))
                return
            samples, clients = [b[0] for b in batch], [b[1] for b in batch]
            try:
                results = list(await self.send_many(samples, clients))
            except BatchNotSent:
                self.resent_one_by_one += 1
                outcomes = await asyncio.gather(*[_outcome(self.send_one(s, c)) for s, c in zip(samples, clients,
                                                                                                strict=True)])
                for (_, _, future), outcome in zip(batch, outcomes, strict=True):
                    _settle(future, outcome)
                return
            except Exception as e:  # noqa: BLE001 - the call failed: each of its samples gets the error
                for _, _, future in batch:
                    _settle(future, e)
                return
            if len(results) != len(batch):
                error = RuntimeError(f"the service answered {len(results)} results for {len(batch)} samples")
                results = [error] * len(batch)
            for (_, _, future), result in zip(batch, results, strict=True):
                _settle(future, result)
        finally:
            self._in_flight -= 1
            if self._pending and self._in_flight == 0:  # the service is free: what waits goes now
                self._flush()


async def _outcome(call: Awaitable[Any]) -> Any:
    """The call's result, or the exception it raised (returned, to be handed to one sample)."""
    try:
        return await call
    except Exception as e:  # noqa: BLE001 - this sample's own failure
        return e


def _settle(future: asyncio.Future, outcome: Any) -> None:
    if future.done():  # the caller gave up (cancelled)
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
