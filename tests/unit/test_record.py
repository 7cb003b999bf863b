"""Tests of the committed-record format: chain, frames, seals and the checks that catch damage."""

import os

import pytest

from consensus.record import (
    GENESIS_HASH, ChainHead, RecordError, RecordReader, RecordWriter, check_link, next_record, read_records,
    record_hash, verify_file, write_records,
)


def chain(count: int, start: ChainHead = ChainHead()) -> list:
    records, head = [], start
    for i in range(count):
        head = next_record(head, f"payload {i}".encode() * (i % 5 + 1))
        records.append(head)
    return records


@pytest.fixture
def sealed_file(tmp_path):
    path = tmp_path / "events.log"
    write_records(path, chain(40))
    return path


def test_next_record_chains_hashes():
    """Each record's prev_hash is the hash of the one before, and its hash covers prev_hash, seq and payload."""
    first, second = chain(2)
    assert first.seq == 1 and first.prev_hash == GENESIS_HASH
    assert second.prev_hash == first.hash
    assert second.hash == record_hash(first.hash, 2, second.payload)


def test_written_records_read_back_identically(sealed_file):
    """A sealed file reads back the same records in the same order."""
    assert list(read_records(sealed_file)) == chain(40)


def test_verify_reports_count_and_head(sealed_file):
    """Verifying a good file reports its count, last seq and last hash."""
    summary = verify_file(sealed_file)
    records = chain(40)
    assert (summary.count, summary.first_seq, summary.last_seq, summary.last_hash, summary.sealed) == (
        40, 1, 40, records[-1].hash, True)


def test_every_single_byte_edit_is_caught(sealed_file):
    """Flipping any one byte anywhere in the file makes verification fail."""
    original = sealed_file.read_bytes()
    for position in range(len(original)):
        damaged = bytearray(original)
        damaged[position] ^= 0x41
        sealed_file.write_bytes(bytes(damaged))
        with pytest.raises(RecordError):
            verify_file(sealed_file)
    sealed_file.write_bytes(original)


def test_a_chain_verifying_reader_refuses_every_edit_the_crc_would_catch(sealed_file):
    """Reading with the chain verified skips the CRC, yet any flipped byte outside a CRC field still fails.

    The hash covers the whole body; only an edit of a record's CRC field itself leaves the
    records intact, and verify_file, which checks both, refuses that too.
    """
    original = sealed_file.read_bytes()
    # The first record takes the checked path (no head to link to), which reads the CRC too.
    offsets = [offset for offset, _ in RecordReader(sealed_file).with_offsets()][1:]
    crc_fields = {offset + 6 + i for offset in offsets for i in range(4)}
    for position in range(len(original)):
        damaged = bytearray(original)
        damaged[position] ^= 0x41
        sealed_file.write_bytes(bytes(damaged))
        if position in crc_fields:
            assert list(RecordReader(sealed_file)) == chain(40)
            with pytest.raises(RecordError):
                verify_file(sealed_file)
        else:
            with pytest.raises(RecordError):
                list(RecordReader(sealed_file))
    sealed_file.write_bytes(original)


def test_an_edit_names_the_damaged_seq(tmp_path):
    """An edit inside record 7's payload is reported as seq 7."""
    records = chain(10)
    path = tmp_path / "f.log"
    write_records(path, records)
    data = bytearray(path.read_bytes())
    offsets = [offset for offset, _ in RecordReader(path).with_offsets()]
    data[offsets[6] + 10 + 40 + 2] ^= 1  # frame header, prev_hash and seq, then into the payload
    path.write_bytes(bytes(data))
    with pytest.raises(RecordError) as caught:
        verify_file(path)
    assert caught.value.seq == 7


def test_truncation_at_a_record_boundary_is_caught(tmp_path):
    """Cutting whole records (and the seal) off the end is detected by the missing seal."""
    path = tmp_path / "f.log"
    write_records(path, chain(10))
    offsets = [offset for offset, _ in RecordReader(path).with_offsets()]
    with open(path, "r+b") as f:
        f.truncate(offsets[8])
    with pytest.raises(RecordError, match="no seal") as caught:
        verify_file(path)
    assert caught.value.seq == 9


def test_truncation_inside_a_record_is_caught(tmp_path):
    """A file cut inside a record names that record's seq."""
    path = tmp_path / "f.log"
    write_records(path, chain(10))
    offsets = [offset for offset, _ in RecordReader(path).with_offsets()]
    with open(path, "r+b") as f:
        f.truncate(offsets[4] + 20)
    with pytest.raises(RecordError, match="truncated") as caught:
        verify_file(path, require_seal=False)
    assert caught.value.seq == 5


def test_reordered_records_are_caught(tmp_path):
    """Swapping two records breaks the chain at the first of them."""
    records = chain(10)
    records[3], records[4] = records[4], records[3]
    path = tmp_path / "f.log"
    with open(path, "wb") as f:
        from consensus.record import encode_record
        for record in records:
            f.write(encode_record(record))
    with pytest.raises(RecordError) as caught:
        verify_file(path, require_seal=False)
    assert caught.value.seq == 4


def test_open_segment_verifies_without_seal(tmp_path):
    """A live segment with no seal verifies when the seal is not required."""
    path = tmp_path / "segment.log"
    with RecordWriter(path) as writer:
        for record in chain(5):
            writer.append(record)
    assert verify_file(path, require_seal=False).last_seq == 5


def test_writer_refuses_a_record_that_does_not_follow(tmp_path):
    """Appending a record out of order raises and writes nothing."""
    records = chain(3)
    with RecordWriter(tmp_path / "f.log") as writer:
        writer.append(records[0])
        with pytest.raises(RecordError):
            writer.append(records[2])
    assert [r.seq for r in read_records(tmp_path / "f.log", verify_chain=False)] == [1]


def test_a_file_may_start_mid_chain(tmp_path):
    """Records from seq 101 onward (an export --since) form a valid sealed file."""
    tail = chain(5, start=ChainHead(100, os.urandom(32)))
    summary = write_records(tmp_path / "tail.log", tail)
    assert (summary.first_seq, summary.last_seq) == (101, 105)
    assert verify_file(tmp_path / "tail.log").count == 5


def test_reader_can_resume_at_an_offset(tmp_path):
    """Reading from a record's offset with its predecessor as head yields the rest, checked."""
    records = chain(20)
    path = tmp_path / "f.log"
    write_records(path, records)
    offsets = [offset for offset, _ in RecordReader(path).with_offsets()]
    rest = list(RecordReader(path, offset=offsets[10], head=records[9]))
    assert rest == records[10:]


def test_first_record_must_follow_genesis():
    """A record claiming seq 1 with a non-genesis prev_hash is refused."""
    record = next_record(ChainHead(0, b"\x01" * 32), b"x")
    with pytest.raises(RecordError, match="genesis"):
        check_link(None, record)


def test_large_payloads_cross_read_chunks(tmp_path):
    """Records larger than the reader's chunk size read back intact."""
    big = [next_record(ChainHead(), os.urandom(5 << 20))]
    big.append(next_record(big[0], b"small"))
    write_records(tmp_path / "big.log", big)
    assert list(read_records(tmp_path / "big.log")) == big


def test_append_linked_refuses_a_record_that_does_not_link(tmp_path):
    """The trusted append still checks seq and prev_hash, and reads back checked."""
    records = chain(3)
    with RecordWriter(tmp_path / "f.log") as writer:
        writer.append_linked(records[0])
        with pytest.raises(RecordError):
            writer.append_linked(records[2])
        writer.append_linked(records[1])
    assert list(read_records(tmp_path / "f.log")) == records[:2]
