"""MCAP records at the byte level: opcodes, chunk headers, and what a damage-tolerant read reports.

The pieces :mod:`.mcap_reader` is built from: record and chunk-header layouts (from the MCAP
specification), :func:`chunk_from_record` that checks a chunk header's fields against each other,
and the plain data a read hands out (:class:`RawMessage`) and reports (:class:`ReadReport`,
:class:`DamagedChunk`).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from mcap.data_stream import ReadDataStream
from mcap.records import Channel, ChunkIndex, Metadata, MetadataIndex, Schema, Statistics

MAGIC = b"\x89MCAP0\r\n"
OP_HEADER, OP_FOOTER, OP_SCHEMA, OP_CHANNEL, OP_MESSAGE, OP_CHUNK = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
OP_MESSAGE_INDEX, OP_CHUNK_INDEX, OP_ATTACHMENT, OP_METADATA, OP_METADATA_INDEX = 0x07, 0x08, 0x09, 0x0C, 0x0D
OP_STATISTICS, OP_DATA_END = 0x0B, 0x0F
RECORD_HEAD = struct.Struct("<BQ")
CHUNK_HEAD = struct.Struct("<QQQII")  # start, end, uncompressed size, crc, compression name length
FOOTER_LEN = 1 + 8 + 20
MAX_CHUNK_BYTES = 1 << 31
COMPRESSIONS = ("", "zstd", "lz4")


@dataclass
class DamagedChunk:
    """One chunk that could not be read.

    Attributes:
        offset: Byte offset of the chunk record.
        reason: Why (``"crc_mismatch"``, ``"decompress:ZstdError"``, ``"truncated"``, ...).
        start_ns: First ``log_time`` it held (epoch ns), None when its header was lost too.
        end_ns: Last ``log_time`` it held.
        messages_lost: Messages it held (from its message index), None when unknown.
    """

    offset: int
    reason: str
    start_ns: int | None = None
    end_ns: int | None = None
    messages_lost: int | None = None


@dataclass
class ReadReport:
    """What one pass over a file read and what it had to skip.

    Attributes:
        mode: ``"index"`` (summary intact) or ``"scan"`` (summary missing or damaged).
        chunks_read: Chunks decoded whole.
        chunks_damaged: The chunks skipped, in file order.
        messages_read: Messages handed out (after the topic and time filters).
        records_skipped: Records inside good chunks that did not parse, by reason.
        bytes_skipped: Bytes the scan jumped over to find the next chunk.
        truncated: The file ends inside a record (a crash, a cut copy).
        incomplete: The file does not end like a finished recording (no footer and closing magic,
            and its data section has no end record): it was cut, at a record boundary or inside one.
        first_ns: ``log_time`` of the first message handed out (epoch ns), None before any.
        last_ns: ``log_time`` of the last one: with ``first_ns``, the time range kept.
    """

    mode: str = "index"
    chunks_read: int = 0
    chunks_damaged: list[DamagedChunk] = field(default_factory=list)
    messages_read: int = 0
    records_skipped: dict[str, int] = field(default_factory=dict)
    bytes_skipped: int = 0
    truncated: bool = False
    incomplete: bool = False
    first_ns: int | None = None
    last_ns: int | None = None

    @property
    def damaged(self) -> bool:
        return bool(self.chunks_damaged or self.records_skipped or self.truncated or self.bytes_skipped
                    or self.incomplete)

    def kept_text(self) -> str:
        """``"120 message(s) kept, 12.40 s (from 2026-12-07 10:00:01.000 UTC)"``: what was read."""
        if self.first_ns is None or self.last_ns is None:
            return f"{self.messages_read} message(s) kept"
        start = datetime.fromtimestamp(self.first_ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        return (f"{self.messages_read} message(s) kept, {(self.last_ns - self.first_ns) / 1e9:.2f} s "
                f"(from {start} UTC)")

    @property
    def messages_lost(self) -> int | None:
        """Messages known to be lost (None when a damaged chunk's count is unknown)."""
        counts = [c.messages_lost for c in self.chunks_damaged]
        if any(n is None for n in counts):
            return None
        return sum(n for n in counts if n is not None) + sum(self.records_skipped.values())

    def lost_time_ranges_ns(self) -> list[tuple[int | None, int | None]]:
        return [(c.start_ns, c.end_ns) for c in self.chunks_damaged]

    def skip(self, reason: str) -> None:
        self.records_skipped[reason] = self.records_skipped.get(reason, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "damaged": self.damaged, "messages_lost": self.messages_lost}


@dataclass
class RawMessage:
    """One message as stored: its channel's topic and schema, times (epoch ns) and bytes."""

    topic: str
    schema_name: str
    message_encoding: str
    log_time_ns: int
    publish_time_ns: int
    sequence: int
    data: bytes


@dataclass
class ChunkData:
    offset: int
    start_ns: int
    end_ns: int
    compression: str
    uncompressed_size: int
    crc: int
    data: bytes


def parse_record(opcode: int, body: bytes) -> Any:
    stream = ReadDataStream(io.BytesIO(body))
    kinds: dict[int, Any] = {OP_SCHEMA: Schema, OP_CHANNEL: Channel, OP_CHUNK_INDEX: ChunkIndex,
                             OP_METADATA: Metadata, OP_METADATA_INDEX: MetadataIndex,
                             OP_STATISTICS: Statistics}
    return kinds[opcode].read(stream) if opcode in kinds else None


def iter_records(buf: bytes) -> Iterator[tuple[int, bytes]]:
    """(opcode, body) of the records packed in ``buf``; raises ValueError on a cut record."""
    pos = 0
    while pos < len(buf):
        if pos + 9 > len(buf):
            raise ValueError("a record header is cut")
        opcode, length = RECORD_HEAD.unpack_from(buf, pos)
        if pos + 9 + length > len(buf):
            raise ValueError(f"record 0x{opcode:02x} of {length} bytes runs past its container")
        yield opcode, buf[pos + 9 : pos + 9 + length]
        pos += 9 + length


def chunk_from_record(offset: int, body: bytes) -> ChunkData:
    """Parse a chunk record's body; ValueError when its fields disagree with its length."""
    if len(body) < CHUNK_HEAD.size:
        raise ValueError("chunk header is cut")
    start, end, usize, crc, clen = CHUNK_HEAD.unpack_from(body, 0)
    pos = CHUNK_HEAD.size
    if clen > 4 or len(body) < pos + clen + 8:
        raise ValueError("chunk compression name is damaged")
    compression = body[pos : pos + clen].decode("ascii", errors="replace")
    (dlen,) = struct.unpack_from("<Q", body, pos + clen)
    if compression not in COMPRESSIONS or dlen != len(body) - (pos + clen + 8) or usize > MAX_CHUNK_BYTES:
        raise ValueError("chunk header fields disagree")
    return ChunkData(offset, start, end, compression, usize, crc, body[pos + clen + 8 :])
