"""MemoryLog beyond the contract: its history file survives a restart and is checked on load."""

import pytest

from consensus.memory_log import MemoryLog
from consensus.record import RecordError


async def test_a_restarted_memory_log_reads_its_history_back(tmp_path):
    """Records written to the history file are there after reopening, and new ones chain on."""
    path = tmp_path / "history.rec"
    log = MemoryLog(history_path=path)
    for i in range(5):
        await log.propose(bytes([i]))
    await log.aclose()
    reopened = MemoryLog(history_path=path)
    assert reopened.head().seq == 5
    assert await reopened.propose(b"sixth") == 6
    assert [r.payload for r in reopened.read()] == [bytes([i]) for i in range(5)] + [b"sixth"]
    await reopened.aclose()


async def test_a_damaged_history_file_is_refused(tmp_path):
    """A history file with a changed byte is refused when loading."""
    path = tmp_path / "history.rec"
    log = MemoryLog(history_path=path)
    await log.propose(b"payload that will be damaged")
    await log.aclose()
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(RecordError):
        MemoryLog(history_path=path)
