"""History segments (consensus.history): append and read back, rotation, torn tails, divergence and gap filling."""

import pytest

from consensus.history import HistoryDiverged, HistoryStore
from consensus.record import ChainHead, RecordError, next_record


def chain(count, start=None, prefix=b"p"):
    head = start or ChainHead()
    records = []
    for i in range(count):
        head = next_record(head, prefix + str(i).encode())
        records.append(head)
    return records


def test_appended_records_read_back_in_order(tmp_path):
    """Records appended are read back in order, and the head is the last one."""
    store = HistoryStore(tmp_path)
    records = chain(10)
    store.append(records)
    assert list(store.read()) == records
    assert store.head == ChainHead(10, records[-1].hash)


def test_a_reopened_store_continues_where_it_stopped(tmp_path):
    """Reopening finds the head on disk and keeps appending to the chain."""
    records = chain(20)
    store = HistoryStore(tmp_path)
    store.append(records[:12])
    store.close()
    reopened = HistoryStore(tmp_path)
    assert reopened.head.seq == 12
    reopened.append(records[12:])
    assert list(reopened.read()) == records


def test_full_segments_are_sealed_and_reads_span_them(tmp_path):
    """Small segments rotate; a range read crosses segment boundaries."""
    store = HistoryStore(tmp_path, segment_bytes=500)
    records = chain(60)
    store.append(records)
    assert len(list(tmp_path.glob("*.seg"))) > 3
    assert [r.seq for r in store.read(17, 44)] == list(range(17, 45))
    store.close()
    assert list(HistoryStore(tmp_path, segment_bytes=500).read()) == records


def test_records_already_on_disk_are_skipped(tmp_path):
    """Re-applying records the history already holds (a journal replay) writes nothing twice."""
    store = HistoryStore(tmp_path)
    records = chain(5)
    store.append(records)
    store.append(records[2:])
    assert list(store.read()) == records


def test_a_different_record_at_the_head_is_divergence(tmp_path):
    """A committed record that differs from the one on disk at the same seq raises HistoryDiverged."""
    store = HistoryStore(tmp_path)
    store.append(chain(3))
    with pytest.raises(HistoryDiverged):
        store.append([chain(3, prefix=b"other")[-1]])


def test_a_torn_final_frame_is_cut_off_on_open(tmp_path):
    """A crash mid-write leaves a partial frame; opening drops it and keeps every whole record."""
    store = HistoryStore(tmp_path)
    records = chain(8)
    store.append(records)
    store.close()
    segment = next(tmp_path.glob("*.seg"))
    data = segment.read_bytes()
    segment.write_bytes(data[:-7])
    reopened = HistoryStore(tmp_path)
    assert list(reopened.read()) == records[:7]
    reopened.append(records[7:])
    assert list(reopened.read()) == records


def test_records_after_a_snapshot_gap_wait_until_the_gap_is_filled(tmp_path):
    """After a snapshot moves the chain ahead, later records wait; a checked copy of the gap writes them all."""
    records = chain(30)
    store = HistoryStore(tmp_path)
    store.append(records[:5])
    store.note_snapshot(ChainHead(20, records[19].hash))
    store.append(records[20:25])
    assert store.gap == (6, 20)
    assert store.head.seq == 5
    store.fill_gap(records[5:20])
    assert store.gap is None
    assert list(store.read()) == records[:25]


def test_a_copied_gap_that_does_not_reach_the_snapshot_hash_is_refused(tmp_path):
    """A copy whose chain does not end at the snapshot's seq and hash is refused and nothing is written."""
    records = chain(30)
    store = HistoryStore(tmp_path)
    store.append(records[:5])
    store.note_snapshot(ChainHead(20, records[19].hash))
    forged = chain(15, start=records[4], prefix=b"forged")
    with pytest.raises(RecordError):
        store.fill_gap(forged)
    assert store.head.seq == 5 and store.gap == (6, 20)


def test_an_unknown_fsync_policy_is_refused(tmp_path):
    """Only the documented fsync policies are accepted."""
    with pytest.raises(ValueError, match="always, batch"):
        HistoryStore(tmp_path, fsync="sometimes")


def test_sync_under_always_keeps_records_readable(tmp_path):
    """fsync of the open segment leaves the history readable and unchanged."""
    store = HistoryStore(tmp_path, fsync="always")
    records = chain(4)
    store.append(records)
    store.sync()
    store.sync_directory()
    assert list(store.read()) == records


def test_a_read_deep_in_a_large_segment_returns_exactly_the_range(tmp_path):
    """A read that starts far into a segment (through the index) returns exactly the range, chain-checked."""
    records = chain(3000)
    store = HistoryStore(tmp_path)
    store.append(records)
    assert list(store.read(2500, 2510)) == records[2499:2510]
    store.close()
    reopened = HistoryStore(tmp_path)
    assert list(reopened.read(1000, 1003)) == records[999:1003]
    assert list(reopened.read(257, 257)) == [records[256]]


def test_an_older_segment_is_indexed_on_first_read(tmp_path):
    """Segments before the open one are indexed lazily and read correctly from the middle."""
    records = chain(2000)
    store = HistoryStore(tmp_path, segment_bytes=40_000)
    store.append(records)
    store.close()
    reopened = HistoryStore(tmp_path, segment_bytes=40_000)
    assert len(list(tmp_path.glob("*.seg"))) > 2
    assert list(reopened.read(300, 1700)) == records[299:1700]
