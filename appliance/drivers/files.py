"""The file storage driver: one sparse raw file per disk, `<root>/<instance id>/disk<index>.raw`.

Ganeti's `file` disk template in miniature: a disk is a file in the node's data dir, created
sparse (it takes room only as it is written) and only ever grown, never shrunk, by `create`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import trio

from appliance.drivers.base import DriverError, Storage

MIB = 1024 * 1024
INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
DISK_FILE = re.compile(r"disk(0|[1-9][0-9]*)\.raw")


class FileStorage(Storage):
    """The storage port over raw files under `root`."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, instance_id: str, index: int) -> Path:
        """Where disk `index` of the instance lives."""
        if not INSTANCE_ID.fullmatch(instance_id):
            raise DriverError(f"instance id {instance_id!r} cannot name a directory of the file storage; "
                              "use letters, digits, '.', '-' and '_', starting with a letter or digit")
        if index < 0:
            raise DriverError(f"disk index {index} of instance {instance_id} is negative; indexes start at 0")
        return self.root / instance_id / f"disk{index}.raw"

    async def create(self, instance_id: str, index: int, size_mib: int) -> None:
        path = self.path(instance_id, index)
        await trio.to_thread.run_sync(self._create, path, size_mib * MIB)

    def _create(self, path: Path, size_bytes: int) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as disk:
                if os.fstat(disk.fileno()).st_size < size_bytes:
                    os.ftruncate(disk.fileno(), size_bytes)
        except OSError as error:
            raise DriverError(f"cannot create disk file {path}: {error}; check that {self.root} exists, "
                              "is writable and has room") from error

    async def remove(self, instance_id: str, index: int) -> None:
        path = self.path(instance_id, index)
        await trio.to_thread.run_sync(self._remove, path)

    def _remove(self, path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
            if path.parent.is_dir() and not any(path.parent.iterdir()):
                path.parent.rmdir()
        except OSError as error:
            raise DriverError(f"cannot remove disk file {path}: {error}; "
                              f"check the permissions of {self.root}") from error

    async def list(self) -> list[tuple[str, int]]:
        return await trio.to_thread.run_sync(self._list)

    def _list(self) -> list[tuple[str, int]]:
        if not self.root.is_dir():
            return []
        disks = []
        try:
            for directory in self.root.iterdir():
                if not (directory.is_dir() and INSTANCE_ID.fullmatch(directory.name)):
                    continue
                for disk in directory.iterdir():
                    match = DISK_FILE.fullmatch(disk.name)
                    if match:
                        disks.append((directory.name, int(match.group(1))))
        except OSError as error:
            raise DriverError(f"cannot list the disk files under {self.root}: {error}") from error
        return sorted(disks)
