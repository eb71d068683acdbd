"""What the synchronizer takes in: message checks, the audio window, and its counters.

Every message is checked before it is buffered (:func:`message_problem`), so a malformed one is
refused and counted (``malformed_<what>``) and can never poison a later poll; audio chunks are
assembled into fixed-length windows (:func:`audio_window`), zero-padded at the front when at
least ``min_fill`` of the window is real audio.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from exitflow.pipeline.messages import SensorMessage

SYNC_POLICIES = ("exact", "approximate", "latest")
MAX_TEXT_CHARS = 65_536  # longer text is refused (sources cut lines far shorter)
MAX_SOURCES = 256  # distinct source names tracked; more are refused (a fuzzer, a misconfiguration)
MAX_TIMESTAMP_NS = 2**63 - 1


@dataclass
class AudioWindow:
    """A raw audio window: float32 mono samples at ``sample_rate_hz`` (what preprocessing takes)."""

    samples: np.ndarray
    sample_rate_hz: int


@dataclass
class SyncStats:
    """Counters: ``dropped`` (reason -> n) for refused messages, ``unmatched`` (modality -> n)
    for messages that aged out unused, ``missing`` (modality -> reason -> n) per emitted sample."""

    received: int = 0
    emitted: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    unmatched: dict[str, int] = field(default_factory=dict)
    missing: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "emitted": self.emitted,
            "dropped": dict(self.dropped),
            "unmatched": dict(self.unmatched),
            "missing": {m: dict(r) for m, r in self.missing.items()},
        }


def bump(counter: dict[str, int], key: str, n: int = 1) -> None:
    counter[key] = counter.get(key, 0) + n


def message_problem(msg: Any, modalities: tuple[str, ...] | list[str] | set[str]) -> str | None:
    """Why ``msg`` cannot be used by a synchronizer of ``modalities`` (a drop reason), or None when
    it is well formed: a known modality and a string source, a timestamp in range, and a payload of
    the right type, shape and dtype (finite audio, non-empty text of at most ``MAX_TEXT_CHARS``)."""
    modality = getattr(msg, "modality", None)
    if not isinstance(modality, str) or not isinstance(getattr(msg, "source", None), str):
        return "malformed_message"
    if modality not in modalities:
        return "unknown_modality"
    ts = getattr(msg, "timestamp_ns", None)
    if isinstance(ts, bool) or not isinstance(ts, (int, np.integer)) or not 0 <= int(ts) <= MAX_TIMESTAMP_NS:
        return "malformed_timestamp"
    payload = getattr(msg, "payload", None)
    if modality == "text":
        if not isinstance(payload, str):
            return "malformed_text"
        if not payload.strip():
            return "empty_text"
        return "text_too_long" if len(payload) > MAX_TEXT_CHARS else None
    if not isinstance(payload, np.ndarray) or payload.size == 0 or payload.dtype.kind not in "uif":
        return f"malformed_{modality}"
    if payload.dtype.kind == "f" and not np.isfinite(payload).all():
        return f"non_finite_{modality}"
    if modality == "image":
        ok = payload.ndim == 2 or (payload.ndim == 3 and payload.shape[2] in (1, 3, 4))
        return None if ok else "malformed_image"
    if payload.ndim != 1:
        return "malformed_audio"
    rate = getattr(msg, "sample_rate_hz", None)
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)):
        return "malformed_audio"
    return None


def audio_window(buf: deque[SensorMessage], idx: int, window_samples: int, min_fill: float) -> np.ndarray | None:
    """The ``window_samples`` float32 samples ending with chunk ``buf[idx]`` (earlier chunks before
    it), zero-padded at the front; None when less than ``min_fill`` of the window is there."""
    chunks: list[np.ndarray] = []
    have = 0
    for i in range(idx, -1, -1):
        chunks.append(np.asarray(buf[i].payload, dtype=np.float32))
        have += chunks[-1].shape[0]
        if have >= window_samples:
            break
    window = np.concatenate(chunks[::-1])[-window_samples:]
    if window.shape[0] < min_fill * window_samples:
        return None
    if window.shape[0] < window_samples:
        window = np.concatenate([np.zeros(window_samples - window.shape[0], np.float32), window])
    return window
