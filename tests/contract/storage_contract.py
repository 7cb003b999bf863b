"""The behaviour every storage driver has: the in-memory driver, files and replicated disks each run this suite.

A subclass provides `open_storage(tmp_path)`, an async context manager yielding a Storage.
"""

from __future__ import annotations

import contextlib

from appliance.drivers.base import Storage


class StorageContract:
    """Subclass with `open_storage(tmp_path)`."""

    def open_storage(self, tmp_path) -> contextlib.AbstractAsyncContextManager[Storage]:
        raise NotImplementedError

    async def test_a_created_disk_is_listed(self, tmp_path):
        """create makes the disk, and list names it by instance and index."""
        async with self.open_storage(tmp_path) as storage:
            await storage.create("inst-1", 0, 64)
            await storage.create("inst-1", 1, 64)
            assert (await storage.list()) == [("inst-1", 0), ("inst-1", 1)]

    async def test_create_and_remove_are_idempotent(self, tmp_path):
        """Creating twice keeps one disk; removing twice, or a disk never made, is no error."""
        async with self.open_storage(tmp_path) as storage:
            await storage.create("inst-1", 0, 64)
            await storage.create("inst-1", 0, 64)
            assert (await storage.list()) == [("inst-1", 0)]
            await storage.remove("inst-1", 0)
            await storage.remove("inst-1", 0)
            await storage.remove("inst-2", 3)
            assert (await storage.list()) == []
