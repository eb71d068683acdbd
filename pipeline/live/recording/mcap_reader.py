"""Read an MCAP file chunk by chunk, skipping (and counting) what is damaged.

:class:`McapFile` never holds more than about two chunks in memory, whatever the file's size.
It has two ways through a file:

* **index**: when the footer and the summary section are intact (their CRC checks), the chunk
  index says where every chunk lies, which time range and which channels it holds; chunks
  outside ``start_ns``/``end_ns`` or without a wanted topic are never read.
* **scan**: when the summary is missing (a crash or a cut file) or damaged, the records are
  walked from the start (:class:`~.mcap_scan.ChunkScanner`). After a record that does not parse,
  the reader looks for the next byte offset where a well-formed chunk header starts (opcode,
  lengths, compression name all consistent) and goes on from there.

Either way a chunk whose compressed data does not decompress, whose CRC does not match or which
the file ends inside is skipped: :class:`ReadReport` counts it with the time range it covered and
the messages it held (from its message index when that survived), and every other chunk is read.
A file that does not end with a footer and the closing magic is *incomplete*
(:attr:`ReadReport.incomplete`): cut at a record boundary it would otherwise read as whole; the
report keeps the time range of what was read (``first_ns``/``last_ns``). Nothing raises for damage
inside the file; only a file that cannot be opened, or that holds no
MCAP at all, raises :class:`~exitflow.pipeline.errors.DataError`.
"""

from __future__ import annotations

import heapq
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import lz4.frame
import zstandard
from mcap.records import Channel, ChunkIndex, Metadata, MetadataIndex, Schema, Statistics

from exitflow.pipeline.errors import DataError
from exitflow.pipeline.live.recording.mcap_records import (
    CHUNK_HEAD,
    FOOTER_LEN,
    MAGIC,
    OP_ATTACHMENT,
    OP_CHANNEL,
    OP_CHUNK,
    OP_FOOTER,
    OP_HEADER,
    OP_MESSAGE,
    OP_MESSAGE_INDEX,
    OP_METADATA,
    OP_SCHEMA,
    RECORD_HEAD,
    ChunkData,
    DamagedChunk,
    RawMessage,
    ReadReport,
    chunk_from_record,
    iter_records,
    parse_record,
)
from exitflow.pipeline.live.recording.mcap_scan import ChunkScanner

__all__ = ["DamagedChunk", "McapFile", "RawMessage", "ReadReport"]

_SCAN_BLOCK = 1 << 20


@dataclass
class _Summary:
    schemas: dict[int, Schema]
    channels: dict[int, Channel]
    chunk_indexes: list[ChunkIndex]
    metadata_indexes: list[MetadataIndex]
    statistics: Statistics | None


class McapFile:
    """A damage-tolerant, streaming view of one MCAP file (see the module doc).

    Args:
        path: The ``.mcap`` file.

    Raises:
        DataError: when the file cannot be opened or does not start like MCAP and has no chunk.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._file: BinaryIO = self.path.open("rb")
        except OSError as e:
            raise DataError(f"cannot read recording {path}: {e}") from e
        self.size = self.path.stat().st_size
        head = self._file.read(len(MAGIC))
        self._summary = self._read_summary()
        self.report = ReadReport(mode="index" if self._summary is not None else "scan",
                                 incomplete=not self._ends_with_footer())
        self._scanner = ChunkScanner(self._file, self.size, self.report)
        if head != MAGIC and self._summary is None and self._scanner.find_chunk(0) is None:
            self._file.close()
            raise DataError(f"{path} is not an MCAP recording (no MCAP magic and no chunk found)")

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> McapFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- summary ---------------------------------------------------------------------------
    def _ends_with_footer(self) -> bool:
        """Whether the file ends like a finished MCAP file: a footer record, then the magic.

        A writer that crashed, or a copy cut anywhere (at a record boundary too), ends otherwise.
        """
        if self.size < 2 * len(MAGIC) + FOOTER_LEN:
            return False
        self._file.seek(self.size - len(MAGIC) - FOOTER_LEN)
        tail = self._file.read(FOOTER_LEN + len(MAGIC))
        opcode, length = RECORD_HEAD.unpack_from(tail, 0)
        return opcode == OP_FOOTER and length == 20 and tail[FOOTER_LEN:] == MAGIC

    def _read_summary(self) -> _Summary | None:
        """The summary section when the footer points at one whose CRC matches, else None."""
        if self.size < 2 * len(MAGIC) + FOOTER_LEN:
            return None
        footer_pos = self.size - len(MAGIC) - FOOTER_LEN
        self._file.seek(footer_pos)
        footer = self._file.read(FOOTER_LEN)
        opcode, length = RECORD_HEAD.unpack_from(footer, 0)
        summary_start, _offsets_start, crc = struct.unpack_from("<QQI", footer, 9)
        if opcode != OP_FOOTER or length != 20 or not len(MAGIC) <= summary_start < footer_pos:
            return None
        if footer_pos - summary_start > 1 << 30:
            return None
        self._file.seek(summary_start)
        covered = self._file.read(footer_pos + 25 - summary_start)
        if crc == 0 or zlib.crc32(covered) != crc:
            return None
        out = _Summary({}, {}, [], [], None)
        try:
            for op, body in iter_records(covered[: footer_pos - summary_start]):
                record = parse_record(op, body)
                if isinstance(record, Schema):
                    out.schemas[record.id] = record
                elif isinstance(record, Channel):
                    out.channels[record.id] = record
                elif isinstance(record, ChunkIndex):
                    out.chunk_indexes.append(record)
                elif isinstance(record, MetadataIndex):
                    out.metadata_indexes.append(record)
                elif isinstance(record, Statistics):
                    out.statistics = record
        except (ValueError, struct.error, UnicodeDecodeError, EOFError) as e:  # CRC matched: not damage
            raise DataError(f"{self.path}: the summary section does not parse ({e})") from e
        out.chunk_indexes.sort(key=lambda c: c.chunk_start_offset)
        return out

    @property
    def indexed(self) -> bool:
        return self._summary is not None

    def message_count(self) -> int | None:
        """Messages in the file according to its statistics record (None without a summary)."""
        stats = self._summary.statistics if self._summary else None
        return None if stats is None else int(stats.message_count)

    def metadata(self) -> dict[str, dict[str, str]]:
        """Metadata records by name (through the index, or the records before the first chunk)."""
        out: dict[str, dict[str, str]] = {}
        if self._summary is not None:
            for index in self._summary.metadata_indexes:
                record = self._record_at(index.offset, index.length)
                if isinstance(record, Metadata):
                    out[record.name] = dict(record.metadata)
            return out
        pos = len(MAGIC)
        while pos + 9 <= self.size:
            self._file.seek(pos)
            opcode, length = RECORD_HEAD.unpack(self._file.read(9))
            if opcode not in (OP_HEADER, OP_METADATA, OP_ATTACHMENT, OP_SCHEMA, OP_CHANNEL) or \
                    pos + 9 + length > self.size:
                break
            if opcode == OP_METADATA:
                record = self._record_at(pos, 9 + length)
                if isinstance(record, Metadata):
                    out[record.name] = dict(record.metadata)
            pos += 9 + length
        return out

    def _record_at(self, offset: int, length: int) -> Any:
        if offset + length > self.size or length < 9:
            return None
        self._file.seek(offset)
        raw = self._file.read(length)
        try:
            opcode, body_len = RECORD_HEAD.unpack_from(raw, 0)
            return parse_record(opcode, raw[9 : 9 + body_len]) if 9 + body_len <= len(raw) else None
        except (ValueError, struct.error, UnicodeDecodeError, EOFError):
            return None

    # -- chunks ----------------------------------------------------------------------------
    def _index_count(self, index: ChunkIndex) -> int | None:
        """Messages in a chunk according to its message index records (None if those are damaged)."""
        total = 0
        for offset in index.message_index_offsets.values():
            if offset + 15 > self.size:
                return None
            self._file.seek(offset)
            opcode, length, _channel, array_len = struct.unpack("<BQHI", self._file.read(15))
            if opcode != OP_MESSAGE_INDEX or array_len % 16 or array_len + 6 != length:
                return None
            total += array_len // 16
        return total

    def _chunks_indexed(
        self, start_ns: int | None, end_ns: int | None, channel_ids: set[int] | None
    ) -> Iterator[ChunkData | DamagedChunk]:
        summary = self._summary
        if summary is None:
            return
        for index in summary.chunk_indexes:
            if (start_ns is not None and index.message_end_time < start_ns) or (
                    end_ns is not None and index.message_start_time > end_ns):
                continue
            if channel_ids is not None and index.message_index_offsets and \
                    not channel_ids & set(index.message_index_offsets):
                continue
            offset, length = index.chunk_start_offset, index.chunk_length
            reason = None
            if offset + length > self.size or length < 9:
                reason = "truncated"
            else:
                self._file.seek(offset)
                raw = self._file.read(length)
                opcode, body_len = RECORD_HEAD.unpack_from(raw, 0)
                if opcode != OP_CHUNK or body_len != length - 9:
                    reason = "bad_record_header"
                else:
                    try:
                        yield chunk_from_record(offset, raw[9:])
                        continue
                    except (ValueError, struct.error) as e:
                        reason = f"bad_chunk_header:{e}"
            yield DamagedChunk(offset, reason, index.message_start_time, index.message_end_time,
                               self._index_count(index))

    # -- messages --------------------------------------------------------------------------
    def _decode_chunk(
        self, chunk: ChunkData, schemas: dict[int, Schema], channels: dict[int, Channel],
        channel_ids: set[int] | None, topics: set[str] | None, start_ns: int | None, end_ns: int | None,
    ) -> list[tuple[int, int, RawMessage]]:
        """Messages of one chunk as ``(log_time_ns, index, message)``; raises on a bad chunk."""
        if chunk.compression == "zstd":
            data = zstandard.ZstdDecompressor().decompress(chunk.data, max_output_size=chunk.uncompressed_size)
        elif chunk.compression == "lz4":
            data = lz4.frame.decompress(chunk.data)
        else:
            data = chunk.data
        if len(data) != chunk.uncompressed_size or (chunk.crc and zlib.crc32(data) != chunk.crc):
            raise ValueError("crc_mismatch")
        out: list[tuple[int, int, RawMessage]] = []
        for op, body in iter_records(data):
            if op in (OP_SCHEMA, OP_CHANNEL):
                try:
                    record = parse_record(op, body)
                except (ValueError, struct.error, UnicodeDecodeError, EOFError):
                    self.report.skip("bad_channel_record")
                    continue
                if isinstance(record, Schema):
                    schemas.setdefault(record.id, record)
                else:
                    channels.setdefault(record.id, record)
                continue
            if op != OP_MESSAGE or len(body) < 22:
                continue
            channel_id, sequence, log_time, publish_time = struct.unpack_from("<HIQQ", body, 0)
            if (start_ns is not None and log_time < start_ns) or (end_ns is not None and log_time > end_ns):
                continue
            channel = channels.get(channel_id)
            if channel is None:
                self.report.skip("unknown_channel")
                continue
            if (channel_ids is not None and channel_id not in channel_ids) or \
                    (topics is not None and channel.topic not in topics):
                continue
            schema = schemas.get(channel.schema_id)
            out.append((log_time, len(out), RawMessage(
                channel.topic, schema.name if schema else "", channel.message_encoding, log_time,
                publish_time, sequence, body[22:])))
        return out

    def iter_messages(
        self, topics: list[str] | None = None, start_ns: int | None = None, end_ns: int | None = None
    ) -> Iterator[RawMessage]:
        """Messages in ``log_time`` order (ties in file order), reading one chunk at a time.

        Args:
            topics: Only these topics (None: all).
            start_ns: Only messages with ``log_time >= start_ns`` (epoch ns).
            end_ns: Only messages with ``log_time <= end_ns``.
        """
        wanted = set(topics) if topics is not None else None
        schemas = dict(self._summary.schemas) if self._summary else {}
        channels = dict(self._summary.channels) if self._summary else {}
        channel_ids = None
        if self._summary is not None and wanted is not None:
            channel_ids = {cid for cid, ch in channels.items() if ch.topic in wanted}
        chunks = (self._chunks_indexed(start_ns, end_ns, channel_ids) if self._summary is not None
                  else self._scanner.chunks(start_ns, end_ns))
        pending: list[tuple[int, int, int, RawMessage]] = []
        for ordinal, item in enumerate(chunks):
            if isinstance(item, DamagedChunk):
                self.report.chunks_damaged.append(item)
                continue
            try:
                decoded = self._decode_chunk(item, schemas, channels, channel_ids, wanted, start_ns, end_ns)
            except Exception as e:  # noqa: BLE001 - any failure of one chunk's codec is that chunk's damage
                reason = str(e) if str(e) == "crc_mismatch" else f"decompress:{type(e).__name__}"
                lost = None
                if self._summary is not None:
                    index = next((c for c in self._summary.chunk_indexes if c.chunk_start_offset == item.offset), None)
                    lost = self._index_count(index) if index is not None else None
                damaged = DamagedChunk(item.offset, reason, item.start_ns, item.end_ns, lost)
                self.report.chunks_damaged.append(damaged)
                self._scanner.last_damaged = damaged  # the scan counts its message index records
                continue
            self.report.chunks_read += 1
            first = min((t for t, _, _ in decoded), default=None)
            while pending and first is not None and pending[0][0] < first:
                yield self._handed_out(heapq.heappop(pending)[3])
            for log_time, i, message in decoded:
                heapq.heappush(pending, (log_time, ordinal, i, message))
        while pending:
            yield self._handed_out(heapq.heappop(pending)[3])

    def _handed_out(self, message: RawMessage) -> RawMessage:
        """Count ``message`` as read, and its ``log_time`` into the time range kept."""
        report = self.report
        report.messages_read += 1
        if report.first_ns is None or message.log_time_ns < report.first_ns:
            report.first_ns = message.log_time_ns
        if report.last_ns is None or message.log_time_ns > report.last_ns:
            report.last_ns = message.log_time_ns
        return message

    def start_time_ns(self) -> int | None:
        """``log_time`` of the first message: from the statistics, else the first plausible chunk."""
        if self._summary is not None:
            stats = self._summary.statistics
            if stats is not None and stats.message_count:
                return int(stats.message_start_time)
            starts = [c.message_start_time for c in self._summary.chunk_indexes]
            return min(starts) if starts else None
        pos = self._scanner.find_chunk(len(MAGIC))
        if pos is None:
            return None
        self._file.seek(pos + 9)
        return int(CHUNK_HEAD.unpack(self._file.read(CHUNK_HEAD.size))[0])

    def channels(self) -> list[tuple[str, str, str]] | None:
        """``(topic, schema name, message encoding)`` of every channel from the summary; None without one."""
        if self._summary is None:
            return None
        schemas = self._summary.schemas
        return [(ch.topic, schemas[ch.schema_id].name if ch.schema_id in schemas else "", ch.message_encoding)
                for ch in self._summary.channels.values()]
