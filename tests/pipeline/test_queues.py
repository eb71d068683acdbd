"""Bounded queues and the in-flight limiter: policies, counters, flat memory under a slow consumer."""

from __future__ import annotations

import threading
import time
import tracemalloc

import numpy as np
import pytest

from exitflow.pipeline.live.core.queues import BoundedQueue, Empty, InFlightLimiter


def test_drop_oldest_keeps_the_newest_items():
    q = BoundedQueue(3, "drop_oldest", name="e")
    for i in range(10):
        assert q.put(i)
    assert q.drain() == [7, 8, 9]
    st = q.stats()
    assert st.dropped == {"drop_oldest": 7}
    assert st.put == 10 and st.got == 3 and st.high_water == 3


def test_drop_newest_keeps_the_oldest_items():
    q = BoundedQueue(3, "drop_newest")
    accepted = [q.put(i) for i in range(10)]
    assert accepted == [True] * 3 + [False] * 7
    assert q.drain() == [0, 1, 2]
    assert q.stats().dropped == {"drop_newest": 7}


def test_block_waits_for_the_consumer_and_times_out_when_nobody_reads():
    q = BoundedQueue(1, "block", block_timeout_s=0.05)
    assert q.put("a")
    assert not q.put("b")  # nobody reads: times out and drops
    assert q.stats().dropped == {"block_timeout": 1}

    def consume_later():
        time.sleep(0.05)
        q.get()

    t = threading.Thread(target=consume_later)
    t.start()
    assert q.put("c", timeout_s=2.0)  # unblocked by the consumer
    t.join()
    assert q.drain() == ["c"]
    assert q.stats().blocked_s > 0.02


def test_get_times_out_with_empty_and_close_wakes_waiters():
    q = BoundedQueue(2)
    with pytest.raises(Empty):
        q.get(timeout_s=0.01)
    q.close()
    assert not q.put(1)
    assert q.stats().dropped == {"closed": 1}


@pytest.mark.parametrize("bad", [0, -1, 1.5])
def test_bad_size_is_rejected_with_a_clear_message(bad):
    with pytest.raises(ValueError, match="maxsize must be an integer >= 1"):
        BoundedQueue(bad)


def test_unknown_policy_is_rejected():
    with pytest.raises(ValueError, match="policy must be one of"):
        BoundedQueue(2, "drop_random")


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest", "block"])
def test_memory_stays_flat_when_the_consumer_is_slower(policy):
    """A producer 10x faster than the consumer pushes 1 MiB frames; memory stays near the bound."""
    maxsize, frame_bytes = 4, 1 << 20
    q: BoundedQueue[np.ndarray] = BoundedQueue(maxsize, policy, block_timeout_s=0.001)
    stop = threading.Event()
    consumed = []

    def slow_consumer():
        while not stop.is_set():
            try:
                consumed.append(int(q.get(timeout_s=0.01)[0]))
            except Empty:
                continue
            time.sleep(0.005)

    tracemalloc.start()
    consumer = threading.Thread(target=slow_consumer)
    consumer.start()
    try:
        for i in range(300):
            frame = np.full(frame_bytes, i % 250, dtype=np.uint8)
            q.put(frame)
            assert len(q) <= maxsize
            time.sleep(0.0005)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        stop.set()
        consumer.join()
        tracemalloc.stop()
    st = q.stats()
    assert st.high_water <= maxsize
    assert sum(st.dropped.values()) > 100  # most frames had to go
    assert 0 < len(consumed) < 300
    # queued frames + the one being built + the one the consumer holds, with slack
    assert peak < (maxsize + 4) * frame_bytes, f"peak {peak / 2**20:.1f} MiB grew past the bound"


def test_in_flight_limiter_refuses_past_its_limit():
    lim = InFlightLimiter(2)
    assert lim.try_acquire() and lim.try_acquire()
    assert not lim.try_acquire()
    lim.release()
    assert lim.try_acquire()
    assert lim.in_flight == 2 and lim.high_water == 2
    lim.release()
    lim.release()
    with pytest.raises(RuntimeError, match="more often"):
        lim.release()
    with pytest.raises(ValueError):
        InFlightLimiter(0)
