"""Live pipeline, recording: a run to MCAP and back (Foxglove schemas, damage-tolerant reads).

What goes where (:mod:`.mcap_schemas`), the writer (:mod:`.writer`), the reader of either format
(:mod:`.reader`, over :mod:`.mcap_reader` / :mod:`.mcap_scan` / :mod:`.mcap_records`; the first
format in :mod:`.v1`). Imports :mod:`~exitflow.pipeline.live.core` only; replaying a recording
through an engine is a runtime (:mod:`exitflow.pipeline.live.runtime.playback`).
"""

from exitflow.pipeline.live.recording.mcap_reader import DamagedChunk, McapFile, RawMessage, ReadReport
from exitflow.pipeline.live.recording.mcap_schemas import (
    DECISION_TOPIC,
    EVENT_TOPIC,
    FORMAT,
    SENSOR_TOPIC_PREFIX,
    STATUS_TOPIC,
)
from exitflow.pipeline.live.recording.reader import (
    RecordedEvent,
    Recording,
    read_recording,
    recorded_modalities,
    sensor_topics,
)
from exitflow.pipeline.live.recording.writer import RecordingWriter, recording_metadata

__all__ = [
    "DECISION_TOPIC",
    "EVENT_TOPIC",
    "FORMAT",
    "SENSOR_TOPIC_PREFIX",
    "STATUS_TOPIC",
    "DamagedChunk",
    "McapFile",
    "RawMessage",
    "ReadReport",
    "RecordedEvent",
    "Recording",
    "RecordingWriter",
    "read_recording",
    "recorded_modalities",
    "recording_metadata",
    "sensor_topics",
]
