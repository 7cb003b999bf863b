"""The event-log contract, run against the in-memory log."""

import contextlib

from consensus.memory_log import MemoryLog
from tests.contract.log_contract import LogContract


class TestMemoryLog(LogContract):
    """MemoryLog passes the event-log contract."""

    @contextlib.asynccontextmanager
    async def open_log(self, tmp_path):
        log = MemoryLog(history_path=tmp_path / "history.rec")
        try:
            yield log
        finally:
            await log.aclose()
