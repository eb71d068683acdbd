"""Samples as columns for one call on the wire: one contiguous array per modality.

A call that carries a micro-batch (a driver serving several robots, a benchmark client) sends a
:class:`SampleBatch` instead of a list of :class:`~exitflow.pipeline.messages.Sample` objects. Where
every row holds an array of one shape and dtype for a modality (model-ready images, spectrograms,
frames reduced at the source), that modality travels as ONE ``(B, ...)`` array: pickle protocol 5
and Ray's object store move it as one buffer (zero-copy out of the store on the replica's node),
not as B arrays and B Python objects. Anything else (an ``AudioWindow``, a string, ragged frames)
travels as one entry per row. :meth:`SampleBatch.unpack` gives back the samples, each payload a
row view of its column (no copy; read-only when the batch came out of Ray's store).

    batch = SampleBatch.pack(samples, clients)   # on the caller: one copy per stacked modality
    samples = batch.unpack()                     # in the replica: views, no copy
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from exitflow.pipeline.messages import Sample


@dataclass
class SampleBatch:
    """``len(sample_ids)`` samples by column (see the module doc).

    Attributes:
        sample_ids: One per row.
        timestamps_ns: Each sample's event time.
        present: Each row's payload modalities, in the sample's order.
        payloads: Modality -> a ``(B, ...)`` array (stacked) or a list with one entry per row
            (``None`` where the row has no such payload).
        missing: Each row's missing modalities.
        labels: Each row's label (None: unknown).
        modality_timestamps_ns: Each row's ``Sample.timestamps_ns``.
        clients: Who sent each row (a robot), for per-client fairness in the replica.
    """

    sample_ids: list[int]
    timestamps_ns: list[int]
    present: list[tuple[str, ...]]
    payloads: dict[str, np.ndarray | list[Any]]
    missing: list[frozenset[str]]
    labels: list[int | None]
    modality_timestamps_ns: list[dict[str, int]]
    clients: list[str]

    def __len__(self) -> int:
        return len(self.sample_ids)

    @classmethod
    def pack(cls, samples: Sequence[Sample], clients: Sequence[str] | str = "") -> SampleBatch:
        """``samples`` as columns; ``clients`` one per sample, or one name for all.

        Raises:
            ValueError: when ``clients`` is a list of another length than ``samples``.
        """
        names = [clients] * len(samples) if isinstance(clients, str) else list(clients)
        if len(names) != len(samples):
            raise ValueError(f"one client per sample expected: {len(samples)} samples, {len(names)} clients")
        modalities: dict[str, None] = {}
        for s in samples:
            modalities.update(dict.fromkeys(s.payloads))
        payloads = {m: _column([s.payloads.get(m) for s in samples]) for m in modalities}
        return cls(
            sample_ids=[s.sample_id for s in samples],
            timestamps_ns=[s.timestamp_ns for s in samples],
            present=[tuple(s.payloads) for s in samples],
            payloads=payloads,
            missing=[frozenset(s.missing) for s in samples],
            labels=[s.label for s in samples],
            modality_timestamps_ns=[s.timestamps_ns for s in samples],
            clients=names,
        )

    def unpack(self) -> list[Sample]:
        """The samples again; a stacked modality's payloads are row views of its array (no copy)."""
        out = []
        for i, sample_id in enumerate(self.sample_ids):
            payloads = {m: self.payloads[m][i] for m in self.present[i]}
            out.append(Sample(sample_id, self.timestamps_ns[i], payloads, self.missing[i], self.labels[i],
                              self.modality_timestamps_ns[i]))
        return out


def _column(values: list[Any]) -> np.ndarray | list[Any]:
    """One ``(B, ...)`` array when every value is a numeric array of one shape and dtype, else the list."""
    first = values[0] if values else None
    if not isinstance(first, np.ndarray) or first.dtype == np.object_ or first.ndim == 0:
        return values
    for v in values:
        if not isinstance(v, np.ndarray) or v.shape != first.shape or v.dtype != first.dtype:
            return values
    return np.stack(values)  # (B, *shape): the one copy, on the caller
