"""Seeded damage to the example recording, replayed: what is lost, what survives, any traceback.

For each of ``--flips`` single-byte flips (a random byte XOR a random non-zero value) and
``--cuts`` truncations at random offsets of ``examples/grid_live.mcap``, the damaged copy is
replayed with :func:`replay_stream` (the default config's synchronizer, the rule engine, the
default preprocessing), and compared with the chunk layout of the undamaged file as the ``mcap``
library reads it:

* ``tracebacks``: exceptions that escaped the replay (must be 0);
* ``intact_missing``: messages of chunks the damage did not touch that were not replayed (must be 0);
* messages lost, as a share of the file, against what a reader that stops at the first error
  (``mcap.stream_reader.StreamReader``, what ``read_recording`` did before) would have kept.

    PYTHONPATH=.. python benchmarks/recording_damage.py --out runs/recording_damage.json
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import traceback
from pathlib import Path
from typing import Any

import numpy as np
from mcap.data_stream import ReadDataStream
from mcap.reader import make_reader
from mcap.records import Chunk, Message
from mcap.stream_reader import StreamReader, breakup_chunk

from exitflow.pipeline.config import load_config
from exitflow.pipeline.live.core.sync import make_synchronizer
from exitflow.pipeline.live.recording.mcap_reader import McapFile
from exitflow.pipeline.live.runtime.playback import replay_stream
from exitflow.pipeline.live.runtime.rule_engine import RuleEngine

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples/grid_live.mcap"


def layout(data: bytes) -> list[tuple[int, int, set[tuple[int, int, int]]]]:
    summary = make_reader(io.BytesIO(data)).get_summary()
    if summary is None:
        raise ValueError("the example has no summary")
    out = []
    for index in summary.chunk_indexes:
        body = data[index.chunk_start_offset + 9 : index.chunk_start_offset + index.chunk_length]
        chunk = Chunk.read(ReadDataStream(io.BytesIO(body)))
        keys = {(r.channel_id, r.log_time, r.sequence) for r in breakup_chunk(chunk, True) if isinstance(r, Message)}
        out.append((index.chunk_start_offset, index.chunk_start_offset + index.chunk_length, keys))
    return out


def stop_at_first_error(path: Path) -> int:
    """Messages a reader that gives up at the first bad record keeps (the old behaviour)."""
    n = 0
    try:
        for record in StreamReader(str(path), validate_crcs=True).records:
            n += isinstance(record, Message)
    except Exception:  # noqa: BLE001 - the point: it stops here
        pass
    return n


def one(path: Path, cfg: Any, total: int, intact: set[tuple[int, int, int]], ids: dict[int, str]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    try:
        sync = make_synchronizer(cfg.stream, ["audio", "image", "text"])
        summary = replay_stream(path, RuleEngine(), sync)
        row.update(decisions=summary.decisions, sensor_messages=summary.messages,
                   damaged_chunks=len(summary.read.chunks_damaged), reported_lost=summary.read.messages_lost,
                   truncated=summary.read.truncated, lost_data=summary.lost_data)
    except Exception as e:  # noqa: BLE001 - counted: the benchmark's point is that this never happens
        row["traceback"] = "".join(traceback.format_exception(e))[-2000:]
        return row
    with McapFile(path) as f:
        got = {(m.topic, m.log_time_ns, m.sequence) for m in f.iter_messages()}
    named = {(ids[c], t, s) for c, t, s in intact}
    row["read_messages"] = len(got)
    row["intact_missing"] = len(named - got)
    row["lost_share"] = 1 - len(got) / total
    row["old_reader_lost_share"] = 1 - stop_at_first_error(path) / total
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flips", type=int, default=200)
    parser.add_argument("--cuts", type=int, default=20)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    cfg = load_config(None, ["stream.engine=exitflow.pipeline.live.runtime.rule_engine:build_rule_engine"])
    data = EXAMPLE.read_bytes()
    chunks = layout(data)
    summary = make_reader(io.BytesIO(data)).get_summary()
    ids = {cid: ch.topic for cid, ch in summary.channels.items()} if summary else {}
    total = sum(len(k) for _, _, k in chunks)
    rng = np.random.default_rng(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "damaged.mcap"
        for i in range(args.flips + args.cuts):
            if i < args.flips:
                offset = int(rng.integers(0, len(data)))
                damaged = bytearray(data)
                damaged[offset] ^= int(rng.integers(1, 256))
                intact = set().union(*(k for s, e, k in chunks if not s <= offset < e))
                kind = "flip"
            else:
                offset = int(rng.integers(16, len(data)))
                damaged = bytearray(data[:offset])
                intact = set().union(*(k for s, e, k in chunks if e <= offset))
                kind = "cut"
            path.write_bytes(bytes(damaged))
            rows.append({"kind": kind, "offset": offset, "intact_messages": len(intact),
                         **one(path, cfg, total, intact, ids)})
    report: dict[str, Any] = {"file": str(EXAMPLE.relative_to(REPO)), "bytes": len(data), "chunks": len(chunks),
                              "messages": total, "seed": args.seed}
    for kind in ("flip", "cut"):
        sel = [r for r in rows if r["kind"] == kind]
        ok = [r for r in sel if "traceback" not in r]
        report[kind] = {
            "trials": len(sel),
            "tracebacks": len(sel) - len(ok),
            "intact_messages_missing": sum(r["intact_missing"] for r in ok),
            "trials_with_loss": sum(r["lost_share"] > 0 for r in ok),
            "loss_reported_when_lost": sum(r["lost_data"] for r in ok if r["lost_share"] > 0),
            "median_loss_share_when_lost": statistics.median([r["lost_share"] for r in ok if r["lost_share"] > 0] or [0]),
            "max_loss_share": max((r["lost_share"] for r in ok), default=0),
            "old_reader_median_loss_share_when_lost": statistics.median(
                [r["old_reader_lost_share"] for r in ok if r["old_reader_lost_share"] > 0] or [0]),
        }
        print(kind, json.dumps(report[kind]))
    report["rows"] = rows
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
