"""Ground truth on a side topic: labels matched to samples by their trigger message's capture time.

A source that knows what it shows (a simulated robot, a labelled test rig) sends each label as a
message of modality :data:`LABEL` stamped with the capture time of the frame it labels. The driver
keeps them in a :class:`LabelBook` instead of the synchronizer (a sample never waits for its
label) and sets ``Sample.label`` on the sample triggered by that frame; the engine copies it into
the decision, and the live statistics score accuracy over labelled decisions.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Any

from exitflow.pipeline.messages import Sample

LABEL = "label"


class LabelBook:
    """The latest ``keep`` labels by capture time (the driver's clock).

    Args:
        tolerance_ns: Largest distance between a label's stamp and the frame's it matches (stamps of
            one source are rewritten into the driver's clock with the same offset, so they agree).
        keep: Labels kept waiting for their sample.
    """

    def __init__(self, tolerance_ns: int = 1_000_000, keep: int = 256):
        self.tolerance_ns, self.keep = tolerance_ns, keep
        self._stamps: list[int] = []
        self._labels: list[Any] = []

    def add(self, timestamp_ns: int, label: Any) -> None:
        i = bisect.bisect(self._stamps, timestamp_ns)
        self._stamps.insert(i, timestamp_ns)
        self._labels.insert(i, label)
        if len(self._stamps) > self.keep:
            del self._stamps[0], self._labels[0]

    def attach(self, sample: Sample, trigger: str = "image") -> Sample:
        """``sample`` with the label stamped at its trigger's capture time, if one arrived."""
        if sample.label is not None or not self._stamps:
            return sample
        ts = sample.timestamps_ns.get(trigger, sample.timestamp_ns)
        i = bisect.bisect_left(self._stamps, ts - self.tolerance_ns)
        if i < len(self._stamps) and abs(self._stamps[i] - ts) <= self.tolerance_ns:
            label = self._labels[i]
            del self._stamps[i], self._labels[i]
            return dataclasses.replace(sample, label=int(label))
        return sample
