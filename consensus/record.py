"""The committed-record format: a hash chain of opaque payloads, framed with a CRC on disk.

A record is `seq`, `prev_hash`, `hash = sha256(prev_hash || seq || payload)` and
the payload bytes. Nothing here decodes a payload. The live log, each node's
history segments, event files and CBOR exports all use this one format.

On disk each record is a frame:

    magic  2 bytes  0xCA 0x1E
    length 4 bytes  big-endian length of the body
    crc    4 bytes  big-endian CRC-32 of the body
    body            prev_hash (32) | seq (8 bytes, big-endian) | payload | hash (32)

The body is laid out so that its first len-32 bytes are exactly what `hash`
covers, which lets a reader check the hash without copying the payload.

A finished file (an event file, an export) ends with one seal frame (magic
0xCA 0x5E, same layout) whose body is `count | first_seq | last_seq | last_hash`,
so that cutting whole records off the end is detected too. Live segments are
open: they have no seal until they are closed.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

GENESIS_HASH = bytes(32)
RECORD_MAGIC = b"\xca\x1e"
SEAL_MAGIC = b"\xca\x5e"
_FRAME = struct.Struct(">2sII")
_SEQ = struct.Struct(">Q")
_SEAL_BODY = struct.Struct(">QQQ32s")
_BODY_FIXED = 8 + 32 + 32
_MAX_BODY = 1 << 30
_CHUNK = 1 << 22
_sha256 = hashlib.sha256
_crc32 = zlib.crc32
_tuple_new = tuple.__new__


class RecordError(ValueError):
    """A record file or chain is damaged; `seq` is the first record that cannot be trusted."""

    def __init__(self, seq: int, reason: str, offset: int | None = None) -> None:
        self.seq = seq
        self.reason = reason
        self.offset = offset
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"record seq {seq}{where}: {reason}")


class Record(NamedTuple):
    """One committed entry of the log (a named tuple: readers build one per record, fast)."""

    seq: int
    prev_hash: bytes
    hash: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class Seal:
    """The trailer of a finished record file."""

    count: int
    first_seq: int
    last_seq: int
    last_hash: bytes


@dataclass(frozen=True, slots=True)
class ChainHead:
    """Where a chain ends: the next record gets `seq + 1` and `prev_hash = hash`."""

    seq: int = 0
    hash: bytes = GENESIS_HASH


def record_hash(prev_hash: bytes, seq: int, payload: bytes) -> bytes:
    """The chain hash of a record: sha256(prev_hash || seq as 8 big-endian bytes || payload)."""
    return hashlib.sha256(prev_hash + _SEQ.pack(seq) + payload).digest()


def next_record(head: ChainHead | Record, payload: bytes) -> Record:
    """Build the record that follows `head` in the chain."""
    seq = head.seq + 1
    return Record(seq, head.hash, record_hash(head.hash, seq, payload), bytes(payload))


def check_link(head: ChainHead | Record | None, record: Record) -> None:
    """Raise RecordError unless `record` is well formed and (when given) follows `head`."""
    if record_hash(record.prev_hash, record.seq, record.payload) != record.hash:
        raise RecordError(record.seq, "hash does not match prev_hash, seq and payload")
    if head is None:
        if record.seq == 1 and record.prev_hash != GENESIS_HASH:
            raise RecordError(1, "the first record of a log must follow the genesis hash")
        return
    if record.seq != head.seq + 1:
        raise RecordError(head.seq + 1, f"expected seq {head.seq + 1}, found seq {record.seq} (records missing or reordered)")
    if record.prev_hash != head.hash:
        raise RecordError(record.seq, "prev_hash does not match the hash of the record before it")


def encode_record(record: Record) -> bytes:
    """The on-disk frame of one record."""
    body = b"".join((record.prev_hash, _SEQ.pack(record.seq), record.payload, record.hash))
    return _FRAME.pack(RECORD_MAGIC, len(body), zlib.crc32(body)) + body


def encode_seal(seal: Seal) -> bytes:
    """The on-disk frame of a seal."""
    body = _SEAL_BODY.pack(seal.count, seal.first_seq, seal.last_seq, seal.last_hash)
    return _FRAME.pack(SEAL_MAGIC, len(body), zlib.crc32(body)) + body


class RecordWriter:
    """Appends records to a file, checking that each one continues the chain."""

    def __init__(self, path: str | os.PathLike, head: ChainHead | None = None, fsync: bool = False) -> None:
        self.path = Path(path)
        self._file: BinaryIO = open(self.path, "ab")
        self._fsync = fsync
        self.head: ChainHead | Record | None = head
        self.first_seq: int | None = None
        self.count = 0

    def append(self, record: Record) -> None:
        """Write one record; it must follow the last one written (or the given head)."""
        check_link(self.head, record)
        self._file.write(encode_record(record))
        if self.first_seq is None:
            self.first_seq = record.seq
        self.head = record
        self.count += 1

    def append_linked(self, record: Record) -> None:
        """Write a record whose hash the caller computed itself (with next_record): only its link is checked.

        The history writer uses this on the commit path, where recomputing
        every hash a second time would double the hashing per record.
        """
        head = self.head
        if head is not None and (record.seq != head.seq + 1 or record.prev_hash != head.hash):
            raise RecordError(head.seq + 1, f"record seq {record.seq} does not link to seq {head.seq}")
        self._file.write(encode_record(record))
        if self.first_seq is None:
            self.first_seq = record.seq
        self.head = record
        self.count += 1

    def fileno(self) -> int:
        """The file descriptor, for fsync."""
        return self._file.fileno()

    def append_payload(self, payload: bytes) -> Record:
        """Chain a payload onto the last record and write it."""
        record = next_record(self.head or ChainHead(), payload)
        self.append(record)
        return record

    def flush(self) -> None:
        """Hand buffered frames to the OS, and to the disk when the writer was opened with fsync."""
        self._file.flush()
        if self._fsync:
            os.fsync(self._file.fileno())

    def seal(self) -> Seal:
        """Write the trailer that marks the file finished, then close it."""
        head = self.head or ChainHead()
        seal = Seal(self.count, self.first_seq or head.seq + 1, head.seq, head.hash)
        self._file.write(encode_seal(seal))
        self.close()
        return seal

    def close(self) -> None:
        """Flush and close the file."""
        if not self._file.closed:
            self.flush()
            self._file.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RecordReader:
    """Reads frames from a record file in order, checking CRCs and (by default) the chain.

    After iteration, `seal` holds the file's trailer, or None for an open file.
    """

    def __init__(self, path: str | os.PathLike, verify_chain: bool = True, offset: int = 0,
                 head: ChainHead | Record | None = None, check_crc: bool | None = None) -> None:
        self.path = Path(path)
        self.verify_chain = verify_chain
        # A verified chain covers every byte a reader uses (the hash covers the whole body), so
        # by default the CRC is checked only without it; verify_file checks both, so that an
        # edit of the CRC field itself is caught too.
        self.check_crc = not verify_chain if check_crc is None else check_crc
        self.offset = offset
        self.head = head
        self.seal: Seal | None = None
        self.count = 0
        self.position = offset

    def __iter__(self) -> Iterator[Record]:
        return self._records()

    def with_offsets(self) -> Iterator[tuple[int, Record]]:
        """Yield (byte offset of the frame, record) for every record."""
        for record in self._records():
            yield self.position, record

    def _records(self) -> Iterator[Record]:
        """Every record in order; `position` is the byte offset of the frame just yielded.

        The hot loop of every replay: the frame, its CRC, the record and the
        chain link are handled inline, through memoryviews, so a body is never
        copied as a whole and no call is paid that the common case does not need.
        """
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            buffer, view = b"", memoryview(b"")
            position, start = self.offset, 0
            header, body_fixed, unpack_frame, unpack_seq = _FRAME.size, _BODY_FIXED, _FRAME.unpack_from, _SEQ.unpack_from
            check_crc, verify = self.check_crc, self.verify_chain
            while True:
                if len(buffer) - start < header:
                    buffer = buffer[start:] + f.read(_CHUNK)
                    view, start = memoryview(buffer), 0
                    if not buffer:
                        return
                    if len(buffer) < header:
                        self._fail("file ends inside a frame header (truncated)", position)
                magic, length, crc = unpack_frame(buffer, start)
                if (magic != RECORD_MAGIC and magic != SEAL_MAGIC) or length > _MAX_BODY:
                    self._fail("not a record frame (bad magic or length)", position)
                end = start + header + length
                if end > len(buffer):
                    buffer = self._fill(f, buffer[start:], end - start, position)
                    view, end, start = memoryview(buffer), end - start, 0
                body = start + header
                # Seals have no hash, so their CRC is always checked; a record's CRC also names the
                # fault when its hash check fails (see _check).
                if (magic == SEAL_MAGIC or check_crc) and _crc32(view[body:end]) != crc:
                    self._fail("CRC mismatch (the record was changed)", position)
                if magic == SEAL_MAGIC:
                    self._read_seal(buffer[body:end], position, buffer[end:end + 1] or f.read(1))
                    return
                if length < body_fixed:
                    self._fail("record body too short", position)
                record = _tuple_new(Record, (unpack_seq(buffer, body + 32)[0], buffer[body:body + 32],
                                             buffer[end - 32:end], buffer[body + 40:end - 32]))
                head = self.head
                # The fast path of _check, written out: linked to the head, and the body's first
                # len-32 bytes are exactly what the hash covers.
                if (not verify or head is None or record[0] != head.seq + 1 or record[1] != head.hash
                        or _sha256(view[body:end - 32]).digest() != record[2]):
                    self._check(record, view, body, end, position, crc)
                self.head = record
                self.count += 1
                self.position = position
                yield record
                position += end - start
                start = end

    def _check(self, record: Record, view: memoryview, body: int, end: int, position: int, crc: int) -> None:
        """The checked path of a record the fast path could not vouch for: name the fault, or accept it."""
        if not self.verify_chain:
            return
        if _crc32(view[body:end]) != crc:
            self._fail("CRC mismatch (the record was changed)", position)
        try:
            check_link(self.head, record)
        except RecordError as error:
            raise RecordError(error.seq, error.reason, position) from None

    def _fill(self, f: BinaryIO, partial: bytes, needed: int, position: int) -> bytes:
        """Read on until `partial` holds `needed` bytes (a record larger than what is buffered)."""
        while len(partial) < needed:
            more = f.read(max(_CHUNK, needed - len(partial)))
            if not more:
                self._fail("file ends inside a record (truncated)", position)
            partial += more
        return partial

    def _read_seal(self, body: bytes, position: int, trailing: bytes) -> None:
        if len(body) != _SEAL_BODY.size:
            self._fail("seal has the wrong size", position)
        seal = Seal(*_SEAL_BODY.unpack(body))
        head = self.head or ChainHead()
        if seal.last_seq != head.seq or seal.last_hash != head.hash:
            self._fail(f"seal says the file ends at seq {seal.last_seq}, records end at seq {head.seq}", position)
        if self.offset == 0 and seal.count != self.count:
            self._fail(f"seal counts {seal.count} records, the file holds {self.count}", position)
        if trailing:
            self._fail("bytes after the seal", position)
        self.seal = seal

    def _fail(self, reason: str, position: int) -> None:
        head_seq = self.head.seq if self.head is not None else 0
        raise RecordError(head_seq + 1, reason, position)


def read_records(path: str | os.PathLike, verify_chain: bool = True) -> Iterator[Record]:
    """Every record of a file, in order, checked."""
    return iter(RecordReader(path, verify_chain=verify_chain))


@dataclass(frozen=True, slots=True)
class FileSummary:
    """What verifying a record file found."""

    count: int
    first_seq: int | None
    last_seq: int
    last_hash: bytes
    sealed: bool


def verify_file(path: str | os.PathLike, require_seal: bool = True) -> FileSummary:
    """Check every frame, CRC, hash and link of a file; raise RecordError naming the first bad seq."""
    reader = RecordReader(path, check_crc=True)
    first_seq = None
    for record in reader:
        if first_seq is None:
            first_seq = record.seq
    head = reader.head or ChainHead()
    if require_seal and reader.seal is None:
        raise RecordError(head.seq + 1, "file has no seal: it was cut short (or is a live segment; use --open)")
    return FileSummary(reader.count, first_seq, head.seq, head.hash, reader.seal is not None)


def write_records(path: str | os.PathLike, records: Iterator[Record] | list[Record], seal: bool = True) -> FileSummary:
    """Write records to a new file (replacing it), sealed by default."""
    target = Path(path)
    temporary = target.with_name(target.name + ".tmp")
    temporary.unlink(missing_ok=True)
    writer = RecordWriter(temporary)
    first_seq = None
    for record in records:
        if writer.head is None and record.seq != 1:
            writer.head = ChainHead(record.seq - 1, record.prev_hash)
        writer.append(record)
        first_seq = record.seq if first_seq is None else first_seq
    head = writer.head or ChainHead()
    if seal:
        writer.seal()
    else:
        writer.close()
    os.replace(temporary, target)
    return FileSummary(writer.count, first_seq, head.seq, head.hash, seal)
