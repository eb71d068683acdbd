"""Messages that flow through the pipeline: sensor messages, aligned samples and decisions.

Everything here is plain data (numpy payloads, no torch) so it crosses Ray actor
boundaries and serialises to JSON/MCAP without surprises.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

MODALITIES = ("image", "audio", "text")


@dataclass
class SensorMessage:
    """One message from one source.

    Attributes:
        modality: ``"image"``, ``"audio"`` or ``"text"``.
        source: Name of the source that produced it (e.g. ``"camera0"``).
        timestamp_ns: Capture time. A source stamps it on its host's wall clock (a monotonic
            clock in epoch ns, :class:`~exitflow.pipeline.live.core.clocks.SourceClock`: the clock
            hosts share, as ROS 2 stamps); the driver rewrites it into its own monotonic clock
            with the source's estimated offset (:mod:`exitflow.pipeline.live.core.clocks`), so sync,
            recording and latency compare stamps of one time base whatever host they came from.
        source_time_ns: The source's own media clock (file position, stream pts), or None.
        seq: Per-source sequence number, starting at 0.
        payload: ``np.ndarray`` (image HxW[xC] uint8, audio float32 mono) or ``str`` (text).
        sample_rate_hz: For audio, the payload's sample rate.
        meta: Free-form extras (frame size, codec, ...).
        capture_wall_ns: ``timestamp_ns`` as the source's clock gave it (kept when the driver
            rewrites ``timestamp_ns``), or None.
        receive_ns: The driver's ``time.monotonic_ns()`` when the message reached it (intervals
            only), or None before that.
    """

    modality: str
    source: str
    timestamp_ns: int
    payload: Any
    seq: int = 0
    source_time_ns: int | None = None
    sample_rate_hz: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    capture_wall_ns: int | None = None
    receive_ns: int | None = None


@dataclass
class Sample:
    """Per-modality payloads aligned to one instant, ready for the engine.

    Attributes:
        sample_id: Stable identifier (data set index or stream sequence).
        timestamp_ns: Event time of the sample.
        payloads: Modality -> model-ready input (image (1,28,28) float32, audio (1,112,112)
            float32 spectrogram, text ``str``).
        missing: Modalities absent from this sample (sensor gone, dropped, not in the data set).
        label: Ground truth when known (replay of a labelled data set), else None.
        timestamps_ns: Modality -> timestamp of the message each payload came from.
    """

    sample_id: int
    timestamp_ns: int
    payloads: dict[str, Any]
    missing: frozenset[str] = frozenset()
    label: int | None = None
    timestamps_ns: dict[str, int] = field(default_factory=dict)

    def present(self) -> list[str]:
        return [m for m in self.payloads if m not in self.missing]


@dataclass
class Decision:
    """What the engine did with one sample; one JSON line in the decision log.

    Energy figures always carry where they came from (``energy_source``) and whether they
    are ``estimated``.
    """

    sample_id: int
    prediction: int
    system: str
    label: int | None = None
    order: list[str] = field(default_factory=list)
    exits: dict[str, int] = field(default_factory=dict)  # modality -> exit index taken
    exit_layers: dict[str, int] = field(default_factory=dict)  # modality -> backbone layer
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    fusion_layers: dict[str, int] = field(default_factory=dict)
    exited_by: str | None = None  # the modality whose exit answered, or "fusion"
    fused_checks: int = 0  # times the fusion exit ran (fused early checks plus the final fusion)
    kept_tokens: dict[str, float] = field(default_factory=dict)
    kept_heads: float | None = None
    macs: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)  # stage -> ms, plus "total"
    energy_mj: float | None = None  # total energy of the sample's windows
    energy_source: str | None = None
    estimated: bool | None = None
    dynamic_energy_mj: float | None = None  # the part attributable to the work (total minus idle floor)
    idle_energy_mj: float | None = None
    lam: float | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    timestamp_ns: int | None = None
    budget_note: str | None = None  # e.g. the budget is below the cheapest plan
    # online recalibration (pipeline/inference/shadow.py): the full path also ran as a shadow; its MACs,
    # time (latency_ms["shadow"]) and energy are included in macs, latency_ms["total"] and energy_mj
    shadow: bool = False
    shadow_prediction: int | None = None
    shadow_macs: int = 0
    shadow_energy_mj: float | None = None
    recalibration: dict[str, Any] | None = None  # the controller's state after a shadowed sample (live views)
    rung: str | None = None  # the last rung's model when it answered (encoders/last_rung.py), e.g. "lf"
    # the full fusion's calibrated logits (C,) when the walk ended there: the last rung's input; not logged
    final_logits: Any = field(default=None, repr=False, compare=False)

    @property
    def correct(self) -> bool | None:
        return None if self.label is None else self.prediction == self.label

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: numpy scalars become Python numbers, NaN becomes None."""
        data = asdict(self)
        del data["final_logits"]  # an engine-internal hand-over to the last rung, not a logged field
        return _json_safe(data)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
