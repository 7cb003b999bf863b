"""Event files on disk: write histories, verify them, replay them (from checkpoints), export them.

An event file is a sealed record file (consensus.record) whose payloads are
event envelopes (appliance.model.codec). Checkpoints live beside it in
`FILE.checkpoints/`, one file per checkpoint: the state at a seq, the hash of
that seq's record and the byte offset of the next record, so a replay to any
point starts from the nearest checkpoint and checks the chain from there on.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

import cbor2

from appliance.model import codec, replay
from appliance.model.errors import UndecodableEvent
from appliance.model.state import ClusterState, decode_checkpoint, encode_checkpoint
from consensus.record import (
    ChainHead, FileSummary, Record, RecordError, RecordReader, RecordWriter, encode_record, encode_seal, Seal,
    verify_file,
)

CHECKPOINT_MAGIC = b"CAIRNCK1"
_DIGEST_BYTES = 32


class EventFileError(ValueError):
    """An event file or checkpoint is damaged or does not fit; `seq` names the first bad record."""

    def __init__(self, message: str, seq: int | None = None) -> None:
        self.seq = seq
        super().__init__(message)


def write_envelopes(path: str | os.PathLike, envelopes: Iterable[codec.Envelope]) -> FileSummary:
    """Encode envelopes, chain them from genesis and write a sealed event file."""
    target = Path(path)
    temporary = target.with_name(target.name + ".tmp")
    temporary.unlink(missing_ok=True)
    writer = RecordWriter(temporary)
    for envelope in envelopes:
        writer.append_payload(codec.encode(envelope))
    head = writer.head or ChainHead()
    seal = writer.seal()
    os.replace(temporary, target)
    return FileSummary(seal.count, seal.first_seq if seal.count else None, head.seq, head.hash, True)


def records(path: str | os.PathLike, offset: int = 0, head: ChainHead | Record | None = None) -> RecordReader:
    """A checked reader of the file's records (from a byte offset after `head`, if given)."""
    return RecordReader(path, verify_chain=True, offset=offset, head=head)


def _wrap(error: RecordError) -> EventFileError:
    return EventFileError(f"first bad record: seq {error.seq}: {error.reason}", error.seq)


def verify(path: str | os.PathLike, require_seal: bool = True) -> FileSummary:
    """Check the chain, every CRC and hash, the seal, and that every payload decodes."""
    try:
        for record in RecordReader(path, check_crc=True):
            codec.decode(record.payload, record.seq)
        return verify_file(path, require_seal=require_seal) if require_seal else _open_summary(path)
    except RecordError as error:
        raise _wrap(error) from None
    except UndecodableEvent as error:
        raise EventFileError(f"first bad record: seq {error.seq}: {error}", error.seq) from None


def _open_summary(path: str | os.PathLike) -> FileSummary:
    return verify_file(path, require_seal=False)


# --- checkpoints -------------------------------------------------------------

def checkpoint_dir(path: str | os.PathLike) -> Path:
    return Path(f"{path}.checkpoints")


@dataclass(frozen=True)
class Checkpoint:
    """The state after `seq`, with where the next record starts in the event file."""

    seq: int
    record_hash: bytes
    next_offset: int
    state: bytes

    def encode(self) -> bytes:
        body = cbor2.dumps({"seq": self.seq, "record_hash": self.record_hash, "next_offset": self.next_offset,
                            "state": self.state}, canonical=True)
        return CHECKPOINT_MAGIC + hashlib.sha256(body).digest() + body

    @classmethod
    def decode(cls, data: bytes, where: str) -> Checkpoint:
        body = data[len(CHECKPOINT_MAGIC) + _DIGEST_BYTES:]
        digest = data[len(CHECKPOINT_MAGIC):len(CHECKPOINT_MAGIC) + _DIGEST_BYTES]
        if not data.startswith(CHECKPOINT_MAGIC) or hashlib.sha256(body).digest() != digest:
            raise EventFileError(f"checkpoint {where} is damaged; delete it and run 'cairn events checkpoint' again")
        raw = cbor2.loads(body)
        return cls(raw["seq"], raw["record_hash"], raw["next_offset"], raw["state"])


def write_checkpoints(path: str | os.PathLike, every: int) -> list[int]:
    """Fold the file once, writing a checkpoint after every `every` records; return their seqs."""
    if every < 1:
        raise ValueError("--every must be at least 1")
    directory = checkpoint_dir(path)
    directory.mkdir(exist_ok=True)
    for old in directory.glob("*.ckpt"):
        old.unlink()
    state, written = ClusterState(), []
    reader = records(path)
    try:
        for offset, record in reader.with_offsets():
            state = replay.apply(state, codec.decode(record.payload, record.seq), record.seq)
            if record.seq % every == 0:
                next_offset = offset + len(encode_record(record))
                checkpoint = Checkpoint(record.seq, record.hash, next_offset, encode_checkpoint(state))
                _write_atomically(directory / f"{record.seq:012d}.ckpt", checkpoint.encode())
                written.append(record.seq)
    except RecordError as error:
        raise _wrap(error) from None
    return written


def _write_atomically(target: Path, data: bytes) -> None:
    temporary = target.with_name(target.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, target)


def nearest_checkpoint(path: str | os.PathLike, at: int | None) -> Checkpoint | None:
    """The newest checkpoint at or before `at` (any, when `at` is None), or None."""
    directory = checkpoint_dir(path)
    if not directory.is_dir():
        return None
    seqs = sorted(int(p.stem) for p in directory.glob("*.ckpt") if p.stem.isdigit())
    usable = [s for s in seqs if at is None or s <= at]
    if not usable:
        return None
    where = directory / f"{usable[-1]:012d}.ckpt"
    return Checkpoint.decode(where.read_bytes(), str(where))


# --- replay and export ---------------------------------------------------------

def replay_file(path: str | os.PathLike, at: int | None = None, use_checkpoints: bool = True) -> ClusterState:
    """The state after record `at` (the whole file when None), starting from the nearest checkpoint."""
    checkpoint = nearest_checkpoint(path, at) if use_checkpoints else None
    if checkpoint is not None:
        state = decode_checkpoint(checkpoint.state)
        reader = records(path, checkpoint.next_offset, ChainHead(checkpoint.seq, checkpoint.record_hash))
    else:
        state, reader = ClusterState(), records(path)
    try:
        state = replay.fold(reader, state, until=at)
    except RecordError as error:
        raise _wrap(error) from None
    except UndecodableEvent as error:
        raise EventFileError(str(error), error.seq) from None
    if at is not None and state.seq < at:
        raise EventFileError(f"the file ends at seq {state.seq}; there is no seq {at} to replay to", state.seq)
    return state


def export(path: str | os.PathLike, out: BinaryIO | TextIO, fmt: str, since: int = 0) -> int:
    """Write records after `since` to `out` as JSON Lines (text) or a sealed CBOR record stream; return the count."""
    count, first_seq, head = 0, None, None
    try:
        for record in records(path):
            if record.seq <= since:
                continue
            if fmt == "jsonl":
                envelope = codec.decode(record.payload, record.seq)
                out.write(json.dumps(codec.to_json_ready(envelope, record.seq), sort_keys=True) + "\n")
            else:
                out.write(encode_record(record))
            first_seq = record.seq if first_seq is None else first_seq
            head, count = record, count + 1
    except RecordError as error:
        raise _wrap(error) from None
    if fmt == "cbor":
        # An empty export is an empty chain: its seal must match a reader that saw no records.
        last = head or ChainHead()
        out.write(encode_seal(Seal(count, first_seq or last.seq + 1, last.seq, last.hash)))
    return count


def iter_envelopes(path: str | os.PathLike) -> Iterator[tuple[Record, codec.Envelope]]:
    """Every record with its decoded envelope, checked."""
    for record in records(path):
        yield record, codec.decode(record.payload, record.seq)
