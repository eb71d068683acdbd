"""Walk an MCAP file's data section record by record: the reader's way through a file whose summary
is missing (a crash, a cut copy) or damaged.

:class:`ChunkScanner` yields every chunk it can parse and a :class:`~.mcap_records.DamagedChunk`
for each one it cannot; after damage it resynchronises on the next byte offset where a
well-formed chunk header starts. What it skips goes into the shared
:class:`~.mcap_records.ReadReport` (bytes jumped over, a file that ends inside a record).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

from exitflow.pipeline.live.recording.mcap_records import (
    CHUNK_HEAD,
    MAGIC,
    MAX_CHUNK_BYTES,
    OP_ATTACHMENT,
    OP_CHANNEL,
    OP_CHUNK,
    OP_DATA_END,
    OP_HEADER,
    OP_MESSAGE_INDEX,
    OP_METADATA,
    OP_SCHEMA,
    RECORD_HEAD,
    ChunkData,
    DamagedChunk,
    ReadReport,
    chunk_from_record,
)

__all__ = ["ChunkScanner"]

SCAN_BLOCK = 1 << 20


class ChunkScanner:
    """The chunks of an open MCAP file, found by walking its records (see the module doc).

    Args:
        file: The file, opened for binary reads (the scanner seeks in it).
        size: Its size in bytes.
        report: Where skipped bytes and truncation are noted.
    """

    def __init__(self, file: BinaryIO, size: int, report: ReadReport):
        self.file = file
        self.size = size
        self.report = report
        self.last_damaged: DamagedChunk | None = None  # its message index records count its messages

    def plausible_chunk_at(self, pos: int, any_opcode: bool = False) -> int | None:
        """The record length if a well-formed chunk header starts at ``pos``, else None.

        ``any_opcode`` accepts any first byte (a chunk whose opcode byte was damaged).
        """
        self.file.seek(pos)
        head = self.file.read(9 + CHUNK_HEAD.size + 4 + 8)
        if len(head) < 9 + CHUNK_HEAD.size or (head[0] != OP_CHUNK and not any_opcode):
            return None
        (length,) = struct.unpack_from("<Q", head, 1)
        if pos + 9 + length > self.size or length > MAX_CHUNK_BYTES:
            return None
        start, end, usize, _crc, clen = CHUNK_HEAD.unpack_from(head, 9)
        if clen > 4 or start > end or usize > MAX_CHUNK_BYTES or len(head) < 9 + CHUNK_HEAD.size + clen + 8:
            return None
        p = 9 + CHUNK_HEAD.size
        name = head[p : p + clen]
        (dlen,) = struct.unpack_from("<Q", head, p + clen)
        if name not in (b"", b"zstd", b"lz4") or dlen != length - (CHUNK_HEAD.size + clen + 8):
            return None
        return int(length)

    def find_chunk(self, pos: int) -> int | None:
        """The next offset at or after ``pos`` where a plausible chunk record starts."""
        while pos < self.size:
            self.file.seek(pos)
            block = self.file.read(SCAN_BLOCK)
            hit = block.find(bytes([OP_CHUNK]))
            while hit != -1:
                if self.plausible_chunk_at(pos + hit) is not None:
                    return pos + hit
                hit = block.find(bytes([OP_CHUNK]), hit + 1)
            pos += len(block)
        return None

    def chunks(self, start_ns: int | None, end_ns: int | None) -> Iterator[ChunkData | DamagedChunk]:
        """Walk the data section record by record, resynchronising on the next chunk after damage.

        Only chunk records are checked field by field, so after damage the search for the next
        chunk starts where the last good chunk ended (a damaged length in a record after it may
        have sent the walk past an intact chunk). The message index records that follow a chunk
        count its messages when the consumer marked it damaged (``self.last_damaged``).
        """
        known = (OP_HEADER, OP_SCHEMA, OP_CHANNEL, OP_CHUNK, OP_MESSAGE_INDEX, OP_ATTACHMENT, OP_METADATA)
        pos = last_chunk_end = len(MAGIC)
        last_resync = -1
        self.last_damaged = None
        while pos + 9 <= self.size:
            self.file.seek(pos)
            opcode, length = RECORD_HEAD.unpack(self.file.read(9))
            end = pos + 9 + length
            if opcode == OP_DATA_END and length == 4:
                self.report.incomplete = False  # all data is there (only the summary went missing)
                return
            problem: str | None = None
            if opcode not in known:
                problem = f"unknown_record:0x{opcode:02x}"
            elif end > self.size:
                problem = "truncated"
            elif opcode == OP_CHUNK:
                try:
                    chunk = chunk_from_record(pos, self.file.read(length))
                except (ValueError, struct.error) as e:
                    problem = f"bad_chunk_header:{e}"
                else:
                    self.last_damaged = None
                    last_chunk_end = end
                    if (start_ns is None or chunk.end_ns >= start_ns) and (end_ns is None or chunk.start_ns <= end_ns):
                        yield chunk
            elif opcode == OP_MESSAGE_INDEX:
                body = self.file.read(min(length, 6))
                if len(body) == 6 and self.last_damaged is not None:
                    (array_len,) = struct.unpack_from("<I", body, 2)
                    if array_len % 16 == 0 and array_len + 6 == length:
                        lost = self.last_damaged.messages_lost or 0
                        self.last_damaged.messages_lost = lost + array_len // 16
            if problem is None:
                pos = end
                continue
            nxt = self.find_chunk(last_chunk_end) if last_chunk_end > last_resync else None
            if nxt is None or nxt <= last_resync:
                nxt = self.find_chunk(pos + 1)
            chunk_like = opcode == OP_CHUNK or self.plausible_chunk_at(pos, any_opcode=True) is not None
            if nxt is None and problem == "truncated":
                self.report.truncated = True
            if chunk_like and (nxt is None or nxt > pos):
                damaged = DamagedChunk(pos, problem)
                self.file.seek(pos + 9)
                head = self.file.read(CHUNK_HEAD.size)
                if len(head) == CHUNK_HEAD.size:
                    damaged.start_ns, damaged.end_ns = CHUNK_HEAD.unpack(head)[:2]
                self.last_damaged = damaged
                yield damaged
            if nxt is None:
                self.report.bytes_skipped += self.size - pos
                return
            if nxt > pos:
                self.report.bytes_skipped += nxt - pos
            last_resync = pos = nxt
