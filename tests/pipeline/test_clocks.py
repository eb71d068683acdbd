"""Clock offsets from round trips, the once-only skew warning, and early sync triggers."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from exitflow.pipeline.live.core.clocks import (
    ClockBook,
    ClockProbe,
    OffsetEstimator,
    SourceClock,
    driver_wall_offset_ns,
)
from exitflow.pipeline.live.core.sync import Synchronizer
from exitflow.pipeline.messages import SensorMessage

MS = 1_000_000
HOUR_NS = 3600 * 1_000_000_000


def test_the_shortest_round_trip_gives_the_offset():
    est = OffsetEstimator(keep=3)
    assert est.offset_ns is None
    est.add(ClockProbe(sent_ns=0, source_ns=1_000 + 40, received_ns=80))  # rtt 80: offset 1000
    est.add(ClockProbe(sent_ns=100, source_ns=1_000 + 190, received_ns=200))  # rtt 100, answer late: 1090
    assert est.offset_ns == 1_000
    est.add(ClockProbe(sent_ns=300, source_ns=1_005 + 302, received_ns=304))  # rtt 4
    assert est.offset_ns == 1_005
    for i in range(3):  # the short probe ages out of the window
        est.add(ClockProbe(sent_ns=1000 + i * 100, source_ns=2_000 + 1000 + i * 100 + 10, received_ns=1020 + i * 100))
    assert est.offset_ns == 2_000
    with pytest.raises(ValueError, match="cannot end before"):
        est.add(ClockProbe(sent_ns=10, source_ns=0, received_ns=5))


def test_source_clock_offset_is_seen_as_skew_and_corrected(caplog):
    book = ClockBook(slop_ns=60 * MS)
    clock = SourceClock(offset_ns=HOUR_NS)
    import time

    with caplog.at_level(logging.WARNING, logger="exitflow.pipeline.live.core.clocks"):
        for _ in range(3):
            sent = time.monotonic_ns()
            answer = clock.now_ns()
            book.add_probe("cam", ClockProbe(sent, answer, time.monotonic_ns()))
    assert abs(book.skew_ns("cam") - HOUR_NS) < 5 * MS
    assert len([r for r in caplog.records if "cam" in r.getMessage()]) == 1  # logged once, not per probe
    info = book.to_dict()["cam"]
    assert info["skewed"] and abs(info["skew_ms"] - 3_600_000) < 5
    stamp = clock.now_ns()
    assert abs(book.to_driver_ns("cam", stamp) - time.monotonic_ns()) < 5 * MS  # back in the driver's clock
    # before any probe a source is assumed to share the driver's wall clock
    assert abs(book.to_driver_ns("mic", time.time_ns()) - time.monotonic_ns()) < 5 * MS
    assert book.skew_ns("mic") is None and "mic" not in book.to_dict()
    assert abs(driver_wall_offset_ns() - (time.time_ns() - time.monotonic_ns())) < 5 * MS
    book.reset("cam")  # a restarted source: its old clock's probes are forgotten
    assert book.skew_ns("cam") is None and "cam" not in book.to_dict()


def _img(t_ms: float) -> SensorMessage:
    return SensorMessage("image", "cam", int(t_ms * MS), np.zeros((4, 4), np.uint8))


def _aud(t_ms: float) -> SensorMessage:
    return SensorMessage("audio", "mic", int(t_ms * MS), np.ones(100, np.float32), sample_rate_hz=1000)


def _sync(early: bool) -> Synchronizer:
    return Synchronizer(modalities=("image", "audio"), slop_ns=60 * MS, audio_window_s=0.1, audio_rate_hz=1000,
                        trigger_timeout_ns=10_000 * MS, early_trigger=early)


def test_early_trigger_emits_once_the_partner_is_in_and_picks_what_the_slop_wait_picks():
    early, late = _sync(True), _sync(False)
    picks: dict[str, list[int | None]] = {"early": [], "late": []}
    polled = {"early": 0, "late": 0}  # samples out before the final flush

    def offset_ms(s) -> int | None:  # the audio chunk picked, relative to the frame
        return None if "audio" not in s.timestamps_ns else s.timestamps_ns["audio"] // MS - s.timestamp_ns // MS

    for t in range(0, 1000, 100):  # audio every 100 ms at t, frames at t + 30 and t + 80
        for name, sync in (("early", early), ("late", late)):
            for msg in (_aud(t), _img(t + 30), _img(t + 80)):
                sync.push(msg)
            now = (t + 80) * MS  # the newest message's time: no slop has passed for t + 80
            out = sync.poll(now)
            polled[name] += len(out)
            for s in out:
                picks[name].append(offset_ms(s))
    for s in late.flush():
        picks["late"].append(offset_ms(s))
    for s in early.flush():
        picks["early"].append(offset_ms(s))
    assert picks["early"] == picks["late"]  # same pairing
    # frame t+30 is nearer its own chunk (t) than the next (t+100): no wait; so is t+80 once t+100 is in
    assert early.stats.emitted == late.stats.emitted == 20
    assert polled["early"] == 19 and polled["late"] == 18  # early: all but the last frame, with no slop wait
    assert picks["early"][:4] == [-30, 20, -30, 20]  # nearest chunk: t for t+30, t+100 for t+80


def test_early_trigger_waits_for_a_partner_that_would_be_nearer():
    sync = _sync(True)
    for t in (0, 100):
        sync.push(_aud(t))
    sync.push(_img(170))  # the chunk at 200 (expected one period after 100) would be nearer: wait
    assert sync.poll(171 * MS) == []
    sync.push(_aud(200))
    (sample,) = sync.poll(201 * MS)
    assert sample.timestamps_ns["audio"] == 200 * MS
    sync.push(_img(230))
    sync.push(_img(260))  # nothing from audio after 200 yet; 300 would be nearer for 260, not for 230
    out = sync.poll(261 * MS)
    assert [s.timestamp_ns for s in out] == [230 * MS]


def test_early_trigger_does_not_wait_for_a_modality_that_went_silent():
    sync = _sync(True)  # trigger timeout 10 s
    sync.push(_aud(0))
    sync.push(_aud(100))
    sync.push(_img(30))
    assert len(sync.poll(31 * MS)) == 1  # chunk 0 is the nearest and chunk 100 is in: no wait
    sync.push(_img(5_000))
    assert sync.poll(5_001 * MS) == []  # audio silent for 4.9 s: within the timeout, it gets the slop
    sync.push(_img(10_200))  # 10.1 s without audio: gone, this frame does not wait for it
    out = sync.poll(10_201 * MS)
    assert [s.timestamp_ns for s in out] == [5_000 * MS, 10_200 * MS] and all("audio" in s.missing for s in out)
