"""Labelled MCAP recordings -> rows of a data set folder (``exitflow data from-mcap``).

A recording made with ``exitflow run --record`` plus a sidecar CSV of labelled time ranges::

    start_s,end_s,label[,split][,group]
    1.0,2.5,stop
    4.2,5.0,go

(seconds from the recording's first message, as ``exitflow replay --start`` counts them) becomes
one sample per range, written as plain files into the data set folder and appended to its
manifest, so ``exitflow data import DIR`` checks and caches it like every other row:

- image: the camera frame closest to the range's middle, as a lossless PNG of the decoded frame;
- audio: every audio chunk stamped inside the range, in time order, as a float WAV at the
  recorded rate (exactly the samples the live path had);
- text: the text messages inside the range, joined with spaces.

A modality with nothing inside a range is left empty for that row. ``group`` defaults to the
recording's file name, so one recording never straddles splits. The recording is read once,
one chunk at a time (:class:`~exitflow.pipeline.live.recording.reader.Recording`); damaged chunks are
skipped and reported.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf

from exitflow.pipeline.data.manifest import SPLIT_NAMES, ManifestError
from exitflow.pipeline.errors import DataError
from exitflow.pipeline.live.recording.reader import Recording, sensor_topics

LABEL_COLUMNS = ("start_s", "end_s", "label", "split", "group")


@dataclass
class LabelledRange:
    line: int
    start_s: float
    end_s: float
    label: str
    split: str = ""
    group: str = ""
    frame: np.ndarray | None = None
    frame_gap_s: float = math.inf
    audio: list[tuple[float, np.ndarray]] = field(default_factory=list)
    rate_hz: int | None = None
    texts: list[tuple[float, str]] = field(default_factory=list)


def read_labels(path: Path) -> list[LabelledRange]:
    """The labelled ranges of a sidecar CSV; every bad line is reported (ManifestError)."""
    if not path.is_file():
        raise DataError(f"no label file {path}; write a CSV with columns start_s,end_s,label (seconds from the "
                        f"recording's first message)")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        problems = [f"unknown column(s) {', '.join(repr(c) for c in columns if c not in LABEL_COLUMNS)}; allowed: "
                    f"{', '.join(LABEL_COLUMNS)}"] if any(c not in LABEL_COLUMNS for c in columns) else []
        problems += [f"no {c!r} column" for c in LABEL_COLUMNS[:3] if c not in columns]
        if problems:
            raise ManifestError(problems, str(path))
        ranges = []
        for row in reader:
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            line = reader.line_num
            try:
                start, end = float(row["start_s"]), float(row["end_s"])
            except ValueError:
                problems.append(f"line {line}: start_s/end_s must be numbers, got {row['start_s']!r}, {row['end_s']!r}")
                continue
            if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
                problems.append(f"line {line}: need 0 <= start_s < end_s, got {start}, {end}")
            if not row["label"]:
                problems.append(f"line {line}: empty label")
            split = row.get("split", "").lower()
            if split and split not in SPLIT_NAMES:
                problems.append(f"line {line}: split {split!r} is not one of {', '.join(SPLIT_NAMES)}")
            ranges.append(LabelledRange(line, start, end, row["label"], split, row.get("group", "")))
    if not ranges and not problems:
        problems.append("no labelled ranges")
    if problems:
        raise ManifestError(problems, str(path))
    return ranges


def _collect(recording: Path, ranges: list[LabelledRange]) -> dict[str, int]:
    """Fill each range's frame, audio chunks and texts from one pass over the recording; returns what was
    skipped (undecodable records by reason, ``damaged_chunks``)."""
    skipped: dict[str, int] = {}
    with Recording(recording) as rec:
        t0 = rec.start_time_ns()
        if t0 is None:
            raise DataError(f"{recording} holds no messages")
        for event in rec.events(sensor_topics(rec), errors=skipped):
            msg = event.message
            if msg is None:
                continue
            t_s = (event.log_time_ns - t0) / 1e9
            for r in ranges:
                if not r.start_s <= t_s < r.end_s:
                    continue
                if msg.modality == "image" and isinstance(msg.payload, np.ndarray):
                    gap = abs(t_s - (r.start_s + r.end_s) / 2)
                    if gap < r.frame_gap_s:
                        r.frame, r.frame_gap_s = msg.payload, gap
                elif msg.modality == "audio" and isinstance(msg.payload, np.ndarray):
                    if r.rate_hz is not None and msg.sample_rate_hz != r.rate_hz:
                        raise DataError(f"{recording}: audio at {msg.sample_rate_hz} Hz and {r.rate_hz} Hz inside "
                                        f"one labelled range (labels line {r.line}); record one microphone per range")
                    r.rate_hz = msg.sample_rate_hz
                    r.audio.append((t_s, np.asarray(msg.payload, dtype=np.float32).reshape(-1)))
                elif msg.modality == "text" and isinstance(msg.payload, str):
                    r.texts.append((t_s, msg.payload))
        if rec.report.chunks_damaged:
            skipped["damaged_chunks"] = len(rec.report.chunks_damaged)
    return skipped


def extract_recording(recording: Path, labels: Path, folder: Path) -> dict:
    """Write one row per labelled range of ``recording`` into ``folder`` (files + ``manifest.csv``).

    Returns ``{"rows", "with": {modality: n}, "skipped": {...}}``.

    Raises:
        ManifestError: bad label lines; DataError: an unreadable recording or a JSONL/Parquet manifest.
    """
    ranges = read_labels(labels)
    skipped = _collect(recording, ranges)
    stem = recording.stem
    out = folder / "recordings" / stem
    out.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.csv"
    if any((folder / n).is_file() for n in ("manifest.jsonl", "manifest.parquet")):
        raise DataError(f"{folder} has a JSONL/Parquet manifest; from-mcap appends to manifest.csv only")
    rows: list[dict[str, str]] = []
    existing: list[dict[str, str]] = []
    existing_columns: list[str] = []
    if manifest.is_file():
        with manifest.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            existing = list(reader)
            existing_columns = list(reader.fieldnames or [])
    counts = dict.fromkeys(("image", "audio", "text"), 0)
    for k, r in enumerate(ranges):
        row = {"id": f"{stem}-{k:04d}", "label": r.label, "split": r.split, "group": r.group or stem,
               "image": "", "audio": "", "text": ""}
        if r.frame is not None:
            path = out / f"{k:04d}_image.png"
            cv2.imwrite(str(path), r.frame)
            row["image"] = str(path.relative_to(folder))
        if r.audio:
            path = out / f"{k:04d}_audio.wav"
            sf.write(path, np.concatenate([a for _, a in sorted(r.audio, key=lambda x: x[0])]), r.rate_hz,
                     subtype="FLOAT")
            row["audio"] = str(path.relative_to(folder))
        if r.texts:
            row["text"] = " ".join(t for _, t in sorted(r.texts, key=lambda x: x[0]))
        for m in counts:
            counts[m] += bool(row[m])
        rows.append(row)
    wanted = ["id", *(m for m in counts if counts[m] or m in existing_columns), "label",
              *(["split"] if any(r["split"] for r in rows) or "split" in existing_columns else []), "group"]
    columns = existing_columns + [c for c in wanted if c not in existing_columns]
    tmp = manifest.with_name(".manifest.csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([{c: e.get(c, "") for c in columns} for e in existing] + rows)
    tmp.replace(manifest)
    (out / "source.json").write_text(json.dumps({"recording": str(recording.resolve()), "labels": str(labels.resolve())},
                                                indent=1) + "\n")
    return {"rows": len(rows), "with": counts, "skipped": skipped}
