"""Stage 2 of the live data flow: align messages from several sources into one Sample.

A *trigger* modality (normally the camera) drives sampling: every trigger message becomes one
:class:`~pipeline.messages.Sample` once ``slop`` has passed (so later messages within the slop
can still match). For every other modality a policy picks what goes with it:

- ``exact``: a message with exactly the trigger's ``timestamp_ns`` (replays of aligned data sets);
- ``approximate``: the message nearest in time, at most ``slop`` away; it is consumed;
- ``latest``: the newest message not later than trigger + slop and not older than ``max_age``.

Audio is assembled, not picked: the chosen chunk ends the window and the ``audio_window_s``
before it are concatenated (zero-padded at the front when at least ``min_audio_fill`` is there).
With ``early_trigger`` a trigger does not wait out the slop when it need not: it is emitted as
soon as every other modality has delivered the message the slop wait would pick (a message at
or after the trigger for ``approximate``/``exact``; for a modality whose next message, expected one
period after its newest, would be farther away or beyond the slop, the newest is already the
pick), so with every stream present a sample leaves when its last needed message is in. A
``latest`` modality (text) never holds a sample: it takes the newest message in when the sample
leaves, so a line that comes within the slop *after* the frame goes with the next frame instead
(the slop wait would have given it to this one). A modality that has sent nothing yet still gets
the full slop, and one silent for longer than ``trigger_timeout`` (a sensor gone) none.
When the trigger source goes quiet for ``trigger_timeout`` the synchronizer falls back to a clock
at ``fallback_hz`` so the other modalities keep flowing, with the trigger in ``missing``.
Every drop is counted with its reason; a timestamp that goes backwards is logged, dropped and
counted as ``non_monotonic``, never fatal. A malformed message (payload of the wrong type, shape
or dtype, NaN/inf audio, a bad timestamp, empty or oversized text) is refused at :meth:`push` and
counted as ``malformed_<what>``, so it can never poison a later :meth:`poll`. With ``trigger:
audio`` every audio chunk ends a sample whose audio is the assembled window, as for the others. Time comes in through ``poll(now_ns)``, so the same
code runs on the wall clock (live) and on event time (replay) with identical results.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from exitflow.pipeline.live.core.sync_input import (
    MAX_SOURCES,
    SYNC_POLICIES,
    AudioWindow,
    SyncStats,
    audio_window,
    bump,
    message_problem,
)
from exitflow.pipeline.messages import MODALITIES, Sample, SensorMessage

if TYPE_CHECKING:
    from exitflow.pipeline.config import StreamConfig

log = logging.getLogger(__name__)

class Synchronizer:
    """Aligns sensor messages into Samples; see the module docstring.

    Args:
        modalities: Modalities a sample should hold.
        trigger: Modality whose messages drive sampling.
        policies: Modality -> ``"exact" | "approximate" | "latest"`` (default: approximate;
            text latest).
        slop_ns: Largest time difference accepted by ``approximate``; also how long a trigger
            waits for its partners.
        audio_window_s: Length of the assembled audio window.
        audio_rate_hz: Rate audio must arrive at (other rates are dropped as ``rate_mismatch``).
        max_age_ns: Modality -> oldest message ``latest`` accepts (default: none for text 5 s).
        trigger_timeout_ns: Silence of the trigger after which the fallback clock runs.
        fallback_period_ns: Period of the fallback clock.
        min_audio_fill: Share of the window that must hold real audio (else ``audio_underfill``).
        buffer_size: Messages held per modality (oldest unused counted as unmatched).
        early_trigger: Emit a trigger as soon as its partners are in (see the module docstring)
            instead of always waiting ``slop``.
    """

    def __init__(
        self,
        modalities: tuple[str, ...] | list[str] = MODALITIES,
        trigger: str = "image",
        policies: dict[str, str] | None = None,
        slop_ns: int = 60_000_000,
        audio_window_s: float = 1.0,
        audio_rate_hz: int = 16000,
        max_age_ns: dict[str, int] | None = None,
        trigger_timeout_ns: int = 500_000_000,
        fallback_period_ns: int = 200_000_000,
        min_audio_fill: float = 0.25,
        buffer_size: int = 64,
        early_trigger: bool = False,
    ):
        self.modalities = tuple(modalities)
        if trigger not in self.modalities:
            raise ValueError(f"trigger {trigger!r} must be one of the modalities {self.modalities}")
        self.trigger = trigger
        self.policies = {m: ("latest" if m == "text" else "approximate") for m in self.modalities}
        for m, p in (policies or {}).items():
            if m not in self.modalities:
                continue
            if p not in SYNC_POLICIES:
                raise ValueError(f"sync policy for {m!r} must be one of {SYNC_POLICIES}, got {p!r}")
            self.policies[m] = p
        if slop_ns < 0:
            raise ValueError(f"slop_ns must be >= 0, got {slop_ns}")
        self.slop_ns = int(slop_ns)
        self.audio_window_samples = int(round(audio_window_s * audio_rate_hz))
        self.audio_rate_hz = int(audio_rate_hz)
        self.max_age_ns = {"text": 5_000_000_000, **(max_age_ns or {})}
        self.trigger_timeout_ns = int(trigger_timeout_ns)
        self.fallback_period_ns = int(fallback_period_ns)
        self.min_audio_fill = min_audio_fill
        self._buffers: dict[str, deque[SensorMessage]] = {m: deque() for m in self.modalities}
        self._used: set[int] = set()
        self._buffer_size = buffer_size
        self._audio_keep_ns = int(audio_window_s * 1e9) + 2 * self.slop_ns + 1_000_000_000
        self._pending: deque[SensorMessage] = deque()
        self._last_ts: dict[str, int] = {}
        self._last_trigger_ns: int | None = None
        self._first_seen_ns: int | None = None
        self._last_fallback_ns: int | None = None
        self._next_id = 0
        self.early_trigger = early_trigger
        self._newest_ns: dict[str, int] = {}  # modality -> newest accepted timestamp
        self._period_ns: dict[str, int] = {}  # modality -> last gap between its messages
        self.stats = SyncStats()

    # -- input -------------------------------------------------------------------------------
    def check(self, msg: Any) -> str | None:
        """Why ``msg`` cannot be used (a drop reason), or None when it is well formed."""
        return message_problem(msg, self.modalities)

    def push(self, msg: SensorMessage) -> bool:
        """Offer one message; False when it was dropped (the reason is counted). Never raises."""
        self.stats.received += 1
        try:
            return self._push(msg)
        except Exception as e:  # noqa: BLE001 - a message that slips past check() is dropped, not fatal
            log.warning("sync: message dropped: %s: %s", type(e).__name__, e)
            bump(self.stats.dropped, f"push_failed:{type(e).__name__}")
            return False

    def _push(self, msg: SensorMessage) -> bool:
        reason = self.check(msg)
        if reason is not None:
            bump(self.stats.dropped, reason)
            return False
        if msg.source not in self._last_ts and len(self._last_ts) >= MAX_SOURCES:
            bump(self.stats.dropped, "too_many_sources")
            return False
        last = self._last_ts.get(msg.source)
        if last is not None and msg.timestamp_ns == last:
            bump(self.stats.dropped, "duplicate_timestamp")
            return False
        if last is not None and msg.timestamp_ns < last:
            log.warning(
                "sync: %s timestamp went backwards (%d < %d ns); message dropped",
                msg.source,
                msg.timestamp_ns,
                last,
            )
            bump(self.stats.dropped, "non_monotonic")
            return False
        if msg.modality == "audio" and msg.sample_rate_hz != self.audio_rate_hz:
            bump(self.stats.dropped, "rate_mismatch")
            return False
        self._last_ts[msg.source] = msg.timestamp_ns
        newest = self._newest_ns.get(msg.modality)
        if newest is not None and msg.timestamp_ns > newest:
            self._period_ns[msg.modality] = msg.timestamp_ns - newest
        if newest is None or msg.timestamp_ns > newest:
            self._newest_ns[msg.modality] = msg.timestamp_ns
        if self._first_seen_ns is None:
            self._first_seen_ns = msg.timestamp_ns
        if msg.modality == self.trigger:
            self._last_trigger_ns = msg.timestamp_ns
            if len(self._pending) >= self._buffer_size:
                self._pending.popleft()
                bump(self.stats.dropped, "trigger_overflow")
            self._pending.append(msg)
            if msg.modality != "audio":  # an audio trigger also joins the window buffer below
                return True
        buf = self._buffers[msg.modality]
        buf.append(msg)
        if msg.modality == "audio":
            while buf and msg.timestamp_ns - buf[0].timestamp_ns > self._audio_keep_ns:
                self._evict("audio", buf.popleft())
        while len(buf) > self._buffer_size:
            self._evict(msg.modality, buf.popleft())
        return True

    def _evict(self, modality: str, msg: SensorMessage) -> None:
        if id(msg) in self._used:
            self._used.discard(id(msg))
        elif modality != "audio":
            bump(self.stats.unmatched, modality)

    # -- output ------------------------------------------------------------------------------
    def poll(self, now_ns: int) -> list[Sample]:
        """Samples whose partners had ``slop`` to arrive by ``now_ns`` (plus fallback samples)."""
        out: list[Sample] = []
        while self._pending and (
            self._pending[0].timestamp_ns + self.slop_ns <= now_ns
            or (self.early_trigger and self._partners_in(self._pending[0].timestamp_ns))
        ):
            self._emit_trigger(self._pending.popleft(), out)
        try:
            out.extend(self._fallback(now_ns))
        except Exception as e:  # noqa: BLE001 - see _recover
            self._recover(e)
        return out

    def _partners_in(self, t_ns: int) -> bool:
        """Whether every other modality has delivered what the slop wait would pick for ``t_ns``."""
        for m in self.modalities:
            if m == self.trigger:
                continue
            newest = self._newest_ns.get(m)
            quiet_since = newest if newest is not None else self._first_seen_ns
            if quiet_since is not None and t_ns - quiet_since > self.trigger_timeout_ns:
                continue  # silent for longer than the trigger timeout: gone, waiting would not help
            if newest is None:
                return False  # nothing yet: give it the slop
            policy = self.policies[m]
            period = self._period_ns.get(m)
            if policy == "latest":
                continue  # the newest message in is the pick: a later one belongs to later samples
            if newest >= t_ns:
                continue
            if policy == "exact" or period is None:
                return False
            next_ns = newest + period  # the next message, if the source keeps its pace
            if next_ns - t_ns < t_ns - newest and next_ns <= t_ns + self.slop_ns:
                return False  # it would be nearer: wait for it
        return True

    def flush(self) -> list[Sample]:
        """Everything still pending, as if time had run on (end of a replay)."""
        out: list[Sample] = []
        while self._pending:
            self._emit_trigger(self._pending.popleft(), out)
        return out

    def _emit_trigger(self, trig: SensorMessage, out: list[Sample]) -> None:
        try:
            out.append(self._assemble_trigger(trig))
        except Exception as e:  # noqa: BLE001 - see _recover
            self._recover(e)

    def _recover(self, e: Exception) -> None:
        """A sample that could not be assembled: count it and empty the partner buffers, so
        whatever caused it cannot fail the next poll too."""
        log.warning("sync: sample dropped (%s: %s); partner buffers cleared", type(e).__name__, e)
        bump(self.stats.dropped, f"assemble_failed:{type(e).__name__}")
        for buf in self._buffers.values():
            buf.clear()
        self._used.clear()

    def _assemble_trigger(self, trig: SensorMessage) -> Sample:
        sample = self._assemble(trig.timestamp_ns, trig)
        if sample is None:  # cannot happen: allow_empty is True for triggers
            raise RuntimeError("sync: a trigger sample came out empty")
        return sample

    def _fallback(self, now_ns: int) -> list[Sample]:
        """One sample per fallback period while the trigger is silent (none if nothing else is there)."""
        reference = self._last_trigger_ns if self._last_trigger_ns is not None else self._first_seen_ns
        if reference is None or now_ns - reference < self.trigger_timeout_ns:
            self._last_fallback_ns = None
            return []
        if self._last_fallback_ns is not None and now_ns - self._last_fallback_ns < self.fallback_period_ns:
            return []
        self._last_fallback_ns = now_ns
        sample = self._assemble(now_ns - self.slop_ns, None, allow_empty=False)
        return [] if sample is None else [sample]

    def _assemble(self, t_ns: int, trig: SensorMessage | None, allow_empty: bool = True) -> Sample | None:
        payloads: dict[str, Any] = {}
        stamps: dict[str, int] = {}
        reasons: dict[str, str] = {}
        for m in self.modalities:
            if m == self.trigger:
                if trig is None:
                    reasons[m] = "trigger_timeout"
                elif m == "audio":  # the window that this chunk ends, not the bare chunk
                    picked, reason = self._pick_audio(self._buffers[m], trig.timestamp_ns, "exact")
                    if picked is None:
                        reasons[m] = reason
                    else:
                        payloads[m], stamps[m] = picked
                else:
                    payloads[m], stamps[m] = trig.payload, trig.timestamp_ns
                continue
            picked, reason = self._pick(m, t_ns)
            if picked is None:
                reasons[m] = reason
            else:
                payloads[m], stamps[m] = picked
        if not payloads and not allow_empty:
            return None
        for m, reason in reasons.items():
            self._count_missing(m, reason)
        missing = set(reasons)
        sample = Sample(
            sample_id=self._next_id,
            timestamp_ns=t_ns,
            payloads=payloads,
            missing=frozenset(missing),
            timestamps_ns=stamps,
        )
        self._next_id += 1
        self.stats.emitted += 1
        return sample

    def _count_missing(self, modality: str, reason: str) -> None:
        bump(self.stats.missing.setdefault(modality, {}), reason)

    def _pick(self, modality: str, t_ns: int) -> tuple[tuple[Any, int] | None, str]:
        buf = self._buffers[modality]
        if not buf:
            return None, "no_data"
        policy = self.policies[modality]
        if modality == "audio":
            return self._pick_audio(buf, t_ns, policy)
        if policy == "exact":
            for msg in buf:
                if msg.timestamp_ns == t_ns:
                    self._consume(modality, msg)
                    return (msg.payload, msg.timestamp_ns), ""
            return None, "no_exact_match"
        if policy == "approximate":
            best = min(buf, key=lambda msg: abs(msg.timestamp_ns - t_ns))
            if abs(best.timestamp_ns - t_ns) > self.slop_ns:
                return None, "outside_slop"
            self._consume(modality, best)
            return (best.payload, best.timestamp_ns), ""
        candidates = [msg for msg in buf if msg.timestamp_ns <= t_ns + self.slop_ns]
        if not candidates:
            return None, "no_data"
        newest = candidates[-1]
        max_age = self.max_age_ns.get(modality)
        if max_age is not None and t_ns - newest.timestamp_ns > max_age:
            return None, "too_old"
        self._used.add(id(newest))
        return (newest.payload, newest.timestamp_ns), ""

    def _consume(self, modality: str, chosen: SensorMessage) -> None:
        buf = self._buffers[modality]
        while buf:
            msg = buf.popleft()
            if msg is chosen:
                self._used.discard(id(msg))
                return
            self._evict(modality, msg)

    def _pick_audio(
        self, buf: deque[SensorMessage], t_ns: int, policy: str
    ) -> tuple[tuple[Any, int] | None, str]:
        if policy == "exact":
            idx = next((i for i, msg in enumerate(buf) if msg.timestamp_ns == t_ns), None)
            if idx is None:
                return None, "no_exact_match"
        elif policy == "approximate":
            idx = min(range(len(buf)), key=lambda i: abs(buf[i].timestamp_ns - t_ns))
            if abs(buf[idx].timestamp_ns - t_ns) > self.slop_ns:
                return None, "outside_slop"
        else:
            idx = max(
                (i for i, msg in enumerate(buf) if msg.timestamp_ns <= t_ns + self.slop_ns), default=None
            )
            if idx is None:
                return None, "no_data"
        window = audio_window(buf, idx, self.audio_window_samples, self.min_audio_fill)
        if window is None:
            return None, "audio_underfill"
        return (AudioWindow(window, self.audio_rate_hz), buf[idx].timestamp_ns), ""


def make_synchronizer(stream: StreamConfig, modalities: list[str], trigger: str | None = None) -> Synchronizer:
    """The synchronizer the ``stream`` section describes, for ``modalities`` (live runs and replays)."""
    trigger = trigger or stream.trigger
    return Synchronizer(
        modalities=modalities,
        trigger=trigger if trigger in modalities else modalities[0],
        policies={str(m): str(p) for m, p in stream.policies.items()},
        slop_ns=int(stream.slop_ms * 1e6),
        audio_window_s=stream.audio_window_s,
        audio_rate_hz=stream.audio_rate_hz,
        max_age_ns={"text": int(stream.text_max_age_s * 1e9)},
        trigger_timeout_ns=int(stream.trigger_timeout_ms * 1e6),
        fallback_period_ns=int(1e9 / stream.fallback_hz),
        early_trigger=stream.early_trigger,
    )
