"""Backpressure: bounded queues per pipeline edge and a max-in-flight limiter.

Every edge between stages (source -> sync, sync -> engine) is a :class:`BoundedQueue` with
one of three policies when it is full:

- ``drop_oldest``: evict the oldest item and accept the new one (live view: freshest data wins);
- ``drop_newest``: reject the new item (keeps what is already queued, e.g. a recording);
- ``block``: wait until there is room (up to a timeout, then drop the new item).

Nothing grows without bound: the item count never exceeds ``maxsize`` and every drop is
counted with its reason, so memory stays flat when a consumer is slower than its producer.
Plain classes, thread-safe, no Ray (the runtime uses them inside actors and the driver).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

T = TypeVar("T")
QueuePolicy = Literal["drop_oldest", "drop_newest", "block"]
QUEUE_POLICIES: tuple[str, ...] = ("drop_oldest", "drop_newest", "block")


class Empty(Exception):  # noqa: N818 - mirrors queue.Empty
    """Raised by :meth:`BoundedQueue.get` when nothing arrives before the timeout."""


@dataclass
class QueueStats:
    """Counters of one queue; ``dropped`` maps a reason to a count."""

    name: str
    maxsize: int
    policy: str
    size: int = 0
    put: int = 0
    got: int = 0
    high_water: int = 0
    blocked_s: float = 0.0
    dropped: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "maxsize": self.maxsize,
            "policy": self.policy,
            "size": self.size,
            "put": self.put,
            "got": self.got,
            "high_water": self.high_water,
            "blocked_s": round(self.blocked_s, 6),
            "dropped": dict(self.dropped),
        }


class BoundedQueue(Generic[T]):
    """A FIFO with a hard size bound and a full-queue policy.

    Args:
        maxsize: Most items held at once (>= 1).
        policy: ``"drop_oldest"``, ``"drop_newest"`` or ``"block"``.
        name: Label for stats and the live view.
        block_timeout_s: For ``block``: how long ``put`` waits before dropping the new item
            (reason ``"block_timeout"``); None waits forever.

    Raises:
        ValueError: for a size below 1 or an unknown policy.
    """

    def __init__(
        self,
        maxsize: int,
        policy: str = "drop_oldest",
        name: str = "queue",
        block_timeout_s: float | None = 1.0,
    ):
        if not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError(f"queue '{name}': maxsize must be an integer >= 1, got {maxsize!r}")
        if policy not in QUEUE_POLICIES:
            raise ValueError(f"queue '{name}': policy must be one of {QUEUE_POLICIES}, got {policy!r}")
        self.maxsize = maxsize
        self.policy = policy
        self.name = name
        self.block_timeout_s = block_timeout_s
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._stats = QueueStats(name=name, maxsize=maxsize, policy=policy)
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def qsize(self) -> int:
        return len(self)

    def _drop(self, reason: str) -> None:
        self._stats.dropped[reason] = self._stats.dropped.get(reason, 0) + 1

    def put(self, item: T, timeout_s: float | None = None) -> bool:
        """Offer ``item``; returns True when it was queued, False when it was dropped.

        Args:
            item: Anything.
            timeout_s: For ``block``: overrides ``block_timeout_s`` for this call.
        """
        with self._cond:
            if self._closed:
                self._drop("closed")
                return False
            self._stats.put += 1
            if len(self._items) >= self.maxsize:
                if self.policy == "drop_oldest":
                    self._items.popleft()
                    self._drop("drop_oldest")
                elif self.policy == "drop_newest":
                    self._drop("drop_newest")
                    return False
                else:
                    wait_s = self.block_timeout_s if timeout_s is None else timeout_s
                    start = time.monotonic()
                    ok = self._cond.wait_for(lambda: len(self._items) < self.maxsize or self._closed, wait_s)
                    self._stats.blocked_s += time.monotonic() - start
                    if not ok or self._closed:
                        self._drop("block_timeout" if not ok else "closed")
                        return False
            self._items.append(item)
            self._stats.high_water = max(self._stats.high_water, len(self._items))
            self._cond.notify_all()
            return True

    def get(self, timeout_s: float | None = None) -> T:
        """Take the oldest item, waiting up to ``timeout_s`` (None: forever).

        Raises:
            Empty: when nothing arrived in time.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._items) or self._closed, timeout_s):
                raise Empty(f"queue '{self.name}' stayed empty for {timeout_s} s")
            if not self._items:
                raise Empty(f"queue '{self.name}' is closed")
            item = self._items.popleft()
            self._stats.got += 1
            self._cond.notify_all()
            return item

    def get_nowait(self) -> T:
        return self.get(timeout_s=0.0)

    def drain(self, max_items: int | None = None) -> list[T]:
        """Take up to ``max_items`` queued items at once without waiting."""
        with self._cond:
            n = len(self._items) if max_items is None else min(max_items, len(self._items))
            out = [self._items.popleft() for _ in range(n)]
            self._stats.got += n
            if n:
                self._cond.notify_all()
            return out

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until an item is queued (or the queue is closed), up to ``timeout_s``; True when one is."""
        with self._cond:
            self._cond.wait_for(lambda: bool(self._items) or self._closed, timeout_s)
            return bool(self._items)

    def close(self) -> None:
        """Wake every waiter; later puts are dropped with reason ``"closed"``."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def stats(self) -> QueueStats:
        with self._cond:
            self._stats.size = len(self._items)
            return QueueStats(**{**self._stats.__dict__, "dropped": dict(self._stats.dropped)})


class InFlightLimiter:
    """Counts work handed to a stage and not yet finished; refuses more than ``max_in_flight``.

    Args:
        max_in_flight: Most outstanding items (>= 1).

    Raises:
        ValueError: for a limit below 1.
    """

    def __init__(self, max_in_flight: int):
        if not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise ValueError(f"max_in_flight must be an integer >= 1, got {max_in_flight!r}")
        self.max_in_flight = max_in_flight
        self._count = 0
        self._lock = threading.Lock()
        self.high_water = 0

    @property
    def in_flight(self) -> int:
        return self._count

    def try_acquire(self) -> bool:
        """Take a slot if one is free; False when the stage is at its limit."""
        with self._lock:
            if self._count >= self.max_in_flight:
                return False
            self._count += 1
            self.high_water = max(self.high_water, self._count)
            return True

    def release(self) -> None:
        with self._lock:
            if self._count <= 0:
                raise RuntimeError("InFlightLimiter.release() called more often than try_acquire()")
            self._count -= 1
