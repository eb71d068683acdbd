"""Synchronizer policies, audio windows, counters, fallback clock, and preprocessing shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from exitflow.pipeline.data.roots import SHARED_DATA
from exitflow.pipeline.live.core.sync import AudioWindow, Synchronizer
from exitflow.pipeline.live.runtime.preprocess import preprocess_sample
from exitflow.pipeline.messages import SensorMessage

MS = 1_000_000
GRID_NPZ = SHARED_DATA / Path("grid_av_samples/grid_decoded.npz")


def img(t_ms: float, value: int = 0, source: str = "cam") -> SensorMessage:
    return SensorMessage("image", source, int(t_ms * MS), np.full((4, 4), value, np.uint8))


def aud(t_ms: float, samples: np.ndarray, rate: int = 1000) -> SensorMessage:
    return SensorMessage("audio", "mic", int(t_ms * MS), samples.astype(np.float32), sample_rate_hz=rate)


def txt(t_ms: float, text: str) -> SensorMessage:
    return SensorMessage("text", "txt", int(t_ms * MS), text)


def make_sync(**kwargs) -> Synchronizer:
    defaults = dict(slop_ns=20 * MS, audio_window_s=0.5, audio_rate_hz=1000, trigger_timeout_ns=10_000 * MS)
    return Synchronizer(**{**defaults, **kwargs})


def test_approximate_picks_the_nearest_partner_within_slop():
    sync = make_sync(modalities=("image", "text"), policies={"text": "approximate"})
    sync.push(txt(90, "early"))
    sync.push(txt(108, "close"))
    sync.push(img(100, 1))
    assert sync.poll(110 * MS) == []  # the trigger waits one slop for late partners
    (sample,) = sync.poll(120 * MS)
    assert sample.payloads["text"] == "close"
    assert sample.timestamps_ns == {"image": 100 * MS, "text": 108 * MS}
    assert sample.missing == frozenset()
    sync.push(txt(150, "between"))
    sync.push(img(200, 2))
    (sample,) = sync.poll(300 * MS)
    assert sample.missing == {"text"}
    assert sync.stats.missing["text"] == {"outside_slop": 1}
    assert sync.stats.unmatched == {"text": 1}  # "early" was passed over


def test_exact_policy_needs_identical_timestamps():
    sync = make_sync(modalities=("image", "text"), policies={"text": "exact"})
    sync.push(txt(100, "a"))
    sync.push(img(100))
    sync.push(txt(199, "b"))
    sync.push(img(200))
    first, second = sync.poll(1000 * MS)
    assert first.payloads["text"] == "a" and "text" not in first.missing
    assert second.missing == {"text"} and sync.stats.missing["text"] == {"no_exact_match": 1}


def test_latest_policy_reuses_the_newest_message_until_it_is_too_old():
    sync = make_sync(modalities=("image", "text"), max_age_ns={"text": 150 * MS})
    sync.push(txt(50, "bin blue"))
    for t in (100, 150, 250):
        sync.push(img(t))
    samples = sync.poll(1000 * MS)
    assert [s.payloads.get("text") for s in samples] == ["bin blue", "bin blue", None]
    assert sync.stats.missing["text"] == {"too_old": 1}


def test_audio_window_is_assembled_from_the_last_chunks():
    sync = make_sync(modalities=("image", "audio"))
    for k in range(10):  # 100 ms chunks at 1 kHz, values = chunk index
        sync.push(aud(100 * (k + 1), np.full(100, k)))
    sync.push(img(1000))
    (sample,) = sync.poll(2000 * MS)
    clip = sample.payloads["audio"]
    assert isinstance(clip, AudioWindow) and clip.sample_rate_hz == 1000
    assert clip.samples.shape == (500,) and clip.samples.dtype == np.float32
    np.testing.assert_array_equal(clip.samples, np.repeat(np.arange(5, 10), 100).astype(np.float32))
    assert sample.timestamps_ns["audio"] == 1000 * MS


def test_short_audio_is_zero_padded_or_missing_below_the_fill_share():
    sync = make_sync(modalities=("image", "audio"), min_audio_fill=0.3)
    sync.push(aud(200, np.ones(200)))
    sync.push(img(200))
    sync.push(img(220))
    first, _ = sync.poll(1000 * MS)
    np.testing.assert_array_equal(first.payloads["audio"].samples, np.r_[np.zeros(300), np.ones(200)])
    sync2 = make_sync(modalities=("image", "audio"), min_audio_fill=0.5)
    sync2.push(aud(100, np.ones(100)))
    sync2.push(img(100))
    (sample,) = sync2.poll(1000 * MS)
    assert sample.missing == {"audio"} and sync2.stats.missing["audio"] == {"audio_underfill": 1}


def test_non_monotonic_and_wrong_rate_messages_are_dropped_and_counted_not_fatal():
    sync = make_sync(modalities=("image", "audio"))
    assert sync.push(img(100))
    assert not sync.push(img(50))  # went backwards
    assert not sync.push(aud(100, np.ones(10), rate=44100))
    assert sync.push(img(150))
    assert sync.stats.dropped == {"non_monotonic": 1, "rate_mismatch": 1}
    assert [s.timestamp_ns for s in sync.poll(1000 * MS)] == [100 * MS, 150 * MS]


def test_fallback_clock_keeps_other_modalities_flowing_when_the_trigger_is_silent():
    sync = make_sync(modalities=("image", "text"), trigger_timeout_ns=300 * MS, fallback_period_ns=100 * MS)
    sync.push(img(0))
    assert len(sync.poll(50 * MS)) == 1
    sync.push(txt(400, "still here"))
    out = []
    for now in range(100, 1001, 50):
        out += sync.poll(now * MS)
    assert len(out) == 7  # every 100 ms from 300 ms on
    assert all(s.missing == {"image"} and s.payloads["text"] == "still here" for s in out[2:])
    sync.push(img(1000))  # the camera is back
    assert [s.missing for s in sync.poll(1100 * MS)] == [frozenset()]


def test_same_input_gives_identical_samples_in_event_time():
    def run():
        sync = make_sync(modalities=("image", "audio", "text"))
        msgs = [aud(100 * (k + 1), np.full(100, k)) for k in range(8)]
        msgs += [img(40 * k + 5, k) for k in range(20)] + [txt(333, "lay red")]
        out = []
        for m in sorted(msgs, key=lambda m: m.timestamp_ns):
            out += sync.poll(m.timestamp_ns)
            sync.push(m)
        out += sync.flush()
        return [(s.sample_id, s.timestamp_ns, sorted(s.missing), s.timestamps_ns) for s in out]

    first = run()
    assert len(first) == 20 and first == run()


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="trigger"):
        Synchronizer(modalities=("audio",), trigger="image")
    with pytest.raises(ValueError, match="sync policy"):
        Synchronizer(policies={"audio": "nearest"})


@pytest.mark.skipif(not GRID_NPZ.exists(), reason="GRID decoded clips not found under ../shared/data")
def test_preprocess_turns_real_grid_payloads_into_model_inputs():
    with np.load(GRID_NPZ, allow_pickle=False) as z:
        frame = z["frames"][0, 30]  # (144, 180) uint8
        audio = z["audio"][0, :16000].astype(np.float32) / 32768.0
    sync = Synchronizer(modalities=("image", "audio", "text"), audio_rate_hz=16000, slop_ns=50 * MS)
    sync.push(SensorMessage("audio", "mic", 1000 * MS, audio, sample_rate_hz=16000))
    sync.push(txt(900, "bin blue at f two now"))
    sync.push(SensorMessage("image", "cam", 1000 * MS, frame))
    (sample,) = sync.poll(1100 * MS)
    ready = preprocess_sample(sample)
    assert ready.payloads["image"].shape == (1, 28, 28) and ready.payloads["image"].dtype == np.float32
    assert ready.payloads["audio"].shape == (1, 112, 112) and ready.payloads["audio"].dtype == np.float32
    assert np.isfinite(ready.payloads["audio"]).all() and ready.payloads["audio"].max() == pytest.approx(1.0)
    assert 0.0 <= ready.payloads["image"].min() and ready.payloads["image"].max() <= 1.0
    assert ready.payloads["text"] == "bin blue at f two now" and ready.missing == frozenset()
    bad = preprocess_sample(
        type(sample)(
            sample_id=1, timestamp_ns=0, payloads={"audio": AudioWindow(np.zeros(10, np.float32), 16000)}
        )
    )
    assert bad.missing == {"audio"}
