"""The file storage driver: one sparse raw file per disk, `<root>/<instance id>/disk<index>.raw`, and
the fake replicated disks beside them.

Ganeti's `file` disk template in miniature: a disk is a file in the node's data dir, created
sparse (it takes room only as it is written) and only ever grown, never shrunk, by `create`.

Each disk also gets an empty records file, the fake data plane a guest writes to (`records.py`
describes the files and the write protocol). A disk becomes one copy of a replicated pair when
`set_peer` pairs it with the copy on another node; `peers` maps node names to those nodes' storage
roots (a live mapping: a node that cannot be found there cannot be reached). Replicated states
follow base.py: UPTODATE when both copies are reachable and hold every acknowledged record (the
records up to the highest `acked` of either copy, and every record acknowledged alone); SYNCING
while `resync` rebuilds this copy; DEGRADED otherwise. `resync` appends the records the peer has
and this copy lacks (the missing tail); a copy holding records its peer never had (an old primary
that wrote alone, then lost its role) is first rewritten as a copy of the peer's.
One driver object per root at a time (the progress of a resync is kept in memory).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import trio

from appliance.drivers import records
from appliance.drivers.base import (DEGRADED, PRIMARY, SECONDARY, SYNCING, UPTODATE, DriverError, Storage,
                                    check_pairing)

MIB = 1024 * 1024
INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
DISK_FILE = re.compile(r"disk(0|[1-9][0-9]*)\.raw")
PAIRING_FILE = re.compile(r"(0|[1-9][0-9]*)\.peer")
RESYNC_BATCH = 1000
RESYNC_MAX_PASSES = 100


class FileStorage(Storage):
    """The storage port over raw files under `root`; `peers` maps node names to their storage roots.

    `node_name` is this node's name (a disk is never paired with its own node); `resync_pause_s`
    is waited between batches of a resync, so tests and demos can watch a copy SYNCING.
    """

    def __init__(self, root: str | os.PathLike, peers: Mapping[str, str | os.PathLike] | None = None,
                 node_name: str | None = None, resync_pause_s: float = 0.0) -> None:
        self.root = Path(root)
        # Kept as given (not copied): a live mapping may learn nodes that join after the driver was made.
        self.peers = peers if peers is not None else {}
        self.node_name = node_name
        self.resync_pause_s = resync_pause_s
        self._resyncing: dict[tuple[str, int], int] = {}
        self._resync_locks: dict[tuple[str, int], trio.Lock] = {}

    def path(self, instance_id: str, index: int) -> Path:
        """Where disk `index` of the instance lives."""
        if not INSTANCE_ID.fullmatch(instance_id):
            raise DriverError(f"instance id {instance_id!r} cannot name a directory of the file storage; "
                              "use letters, digits, '.', '-' and '_', starting with a letter or digit")
        if index < 0:
            raise DriverError(f"disk index {index} of instance {instance_id} is negative; indexes start at 0")
        return self.root / instance_id / f"disk{index}.raw"

    def copy_prefix(self, instance_id: str, index: int) -> Path:
        """The path prefix of the disk's replicated copy here (`records.py` names the files)."""
        return self.path(instance_id, index).parent / str(index)

    async def create(self, instance_id: str, index: int, size_mib: int) -> None:
        path = self.path(instance_id, index)
        if size_mib < 0:
            raise DriverError(f"disk {index} of instance {instance_id} cannot have a negative size "
                              f"({size_mib} MiB); give its size in MiB, 0 or more")
        await trio.to_thread.run_sync(self._create, path, self.copy_prefix(instance_id, index), size_mib * MIB)

    def _create(self, path: Path, prefix: Path, size_bytes: int) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as disk:
                if os.fstat(disk.fileno()).st_size < size_bytes:
                    os.ftruncate(disk.fileno(), size_bytes)
            records.with_suffix(prefix, "records").touch()
        except OSError as error:
            raise DriverError(f"cannot create disk file {path}: {error}; check that {self.root} exists, "
                              "is writable and has room") from error

    async def remove(self, instance_id: str, index: int) -> None:
        path = self.path(instance_id, index)
        await trio.to_thread.run_sync(self._remove, path, index)

    def _remove(self, path: Path, index: int) -> None:
        try:
            if path.parent.is_dir():
                # The copy's files and their staging files (`records.py`, and the guest's `acked.tmp`).
                for file in path.parent.iterdir():
                    if file.name.startswith((f"{index}.", f".{index}.")):
                        file.unlink(missing_ok=True)
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

    # --- replicated copies ------------------------------------------------------------

    def _peer_root(self, peer_node: str) -> Path | None:
        """The storage root of `peer_node`, or None when the mapping does not know it."""
        try:
            return Path(self.peers[peer_node])
        except KeyError:
            return None

    def _existing_copy(self, instance_id: str, index: int) -> Path:
        prefix = self.copy_prefix(instance_id, index)
        if not self.path(instance_id, index).exists():
            raise DriverError(f"disk {index} of instance {instance_id} does not exist on "
                              f"{self.node_name or self.root}; create it before pairing or resyncing it")
        return prefix

    async def set_peer(self, instance_id: str, index: int, peer_node: str, role: str) -> None:
        check_pairing(instance_id, index, peer_node, role, self.node_name)
        prefix = self._existing_copy(instance_id, index)
        await trio.to_thread.run_sync(self._set_peer, prefix, instance_id, index, peer_node, role)

    def _set_peer(self, prefix: Path, instance_id: str, index: int, peer_node: str, role: str) -> None:
        try:
            if records.read_pairing(prefix) != (peer_node, role):
                records.write_atomically(records.with_suffix(prefix, "peer"),
                                         json.dumps({"peer": peer_node, "role": role}, sort_keys=True) + "\n")
            self._write_mirror(prefix, instance_id, index, peer_node)
        except OSError as error:
            raise DriverError(f"cannot pair disk {index} of instance {instance_id} with {peer_node}: {error}; "
                              f"check the permissions of {self.root}") from error

    def _write_mirror(self, prefix: Path, instance_id: str, index: int, peer_node: str) -> None:
        """Tell the writer where the peer copy is and which markers cut it off (empty when the peer is unknown)."""
        peer_root = self._peer_root(peer_node)
        if peer_root is None:
            text = "\n\n\n"
        else:
            peer_prefix = records.copy_prefix(peer_root.absolute(), instance_id, index)
            text = (f"{peer_prefix}\n{peer_root.absolute() / records.UNREACHABLE_MARKER}\n"
                    f"{self.root.absolute() / records.UNREACHABLE_MARKER}\n")
        mirror = records.with_suffix(prefix, "mirror")
        try:
            current = mirror.read_text()
        except FileNotFoundError:
            current = None
        if current != text:
            records.write_atomically(mirror, text)

    async def states(self) -> list[tuple[str, int, str, int]]:
        return await trio.to_thread.run_sync(self._states)

    def _states(self) -> list[tuple[str, int, str, int]]:
        if not self.root.is_dir():
            return []
        states = []
        try:
            for directory in self.root.iterdir():
                if not (directory.is_dir() and INSTANCE_ID.fullmatch(directory.name)):
                    continue
                for file in directory.iterdir():
                    match = PAIRING_FILE.fullmatch(file.name)
                    if match:
                        states.append(self._state(directory.name, int(match.group(1))))
        except OSError as error:
            raise DriverError(f"cannot read the replicated disks under {self.root}: {error}") from error
        return sorted(state for state in states if state is not None)

    def _state(self, instance_id: str, index: int) -> tuple[str, int, str, int] | None:
        prefix = self.copy_prefix(instance_id, index)
        pairing = records.read_pairing(prefix)
        if pairing is None or not self.path(instance_id, index).exists():
            return None
        if (instance_id, index) in self._resyncing:
            return instance_id, index, SYNCING, self._resyncing[(instance_id, index)]
        peer_prefix = self._reachable_peer_copy(instance_id, index, pairing[0])
        if peer_prefix is None:
            return instance_id, index, DEGRADED, 0
        if self._missing(prefix, peer_prefix):
            return instance_id, index, DEGRADED, 0
        return instance_id, index, UPTODATE, 100

    def _reachable_peer_copy(self, instance_id: str, index: int, peer_node: str) -> Path | None:
        """The prefix of the peer's copy if the peer can be reached and holds one, else None."""
        peer_root = self._peer_root(peer_node)
        if peer_root is None or not (records.root_reachable(peer_root) and records.root_reachable(self.root)):
            return None
        peer_prefix = records.copy_prefix(peer_root, instance_id, index)
        return peer_prefix if records.with_suffix(peer_prefix, "records").exists() else None

    @staticmethod
    def _missing(prefix: Path, peer_prefix: Path) -> bool:
        """Whether either copy lacks an acknowledged record: one up to the highest acked, or one acked alone."""
        local = records.read_record_set(records.with_suffix(prefix, "records"))
        remote = records.read_record_set(records.with_suffix(peer_prefix, "records"))
        acked = max(records.read_int(records.with_suffix(prefix, "acked")),
                    records.read_int(records.with_suffix(peer_prefix, "acked")))
        required = {record for record in local | remote if record <= acked}
        required |= records.read_record_set(records.with_suffix(prefix, "degraded"))
        required |= records.read_record_set(records.with_suffix(peer_prefix, "degraded"))
        return not (required <= local and required <= remote)

    async def resync(self, instance_id: str, index: int, peer_node: str) -> None:
        prefix = self._existing_copy(instance_id, index)
        key = (instance_id, index)
        async with self._resync_locks.setdefault(key, trio.Lock()):
            peer_prefix = await trio.to_thread.run_sync(self._resync_check, prefix, instance_id, index, peer_node)
            self._resyncing[key] = 0
            try:
                await self._copy_missing(prefix, peer_prefix, key)
            except OSError as error:
                raise DriverError(f"cannot resync disk {index} of instance {instance_id} from {peer_node}: "
                                  f"{error}; check both nodes' disk dirs, then resync again") from error
            finally:
                del self._resyncing[key]

    def _resync_check(self, prefix: Path, instance_id: str, index: int, peer_node: str) -> Path:
        """The peer copy to resync from, after checking the pairing; pairs an unpaired copy as secondary."""
        pairing = records.read_pairing(prefix)
        if pairing is None:
            self._set_peer(prefix, instance_id, index, peer_node, SECONDARY)
        elif pairing[0] != peer_node:
            raise DriverError(f"disk {index} of instance {instance_id} is paired with {pairing[0]}, not "
                              f"{peer_node}; pair it with set_peer first if its peer has changed")
        elif pairing[1] == PRIMARY:
            raise DriverError(f"disk {index} of instance {instance_id} is the primary copy here, which a resync "
                              f"would overwrite; resync the secondary on {peer_node}, or make this copy the "
                              "secondary with set_peer first")
        else:
            self._write_mirror(prefix, instance_id, index, peer_node)
        peer_prefix = self._reachable_peer_copy(instance_id, index, peer_node)
        if peer_prefix is None:
            raise DriverError(f"cannot resync disk {index} of instance {instance_id}: the copy on {peer_node} "
                              "cannot be reached (or does not exist); resync once the node is back")
        return peer_prefix

    async def _copy_missing(self, prefix: Path, peer_prefix: Path, key: tuple[str, int]) -> None:
        """Append what the peer holds and this copy lacks, batch by batch, until a pass finds nothing missing.

        The writer keeps mirroring to this copy meanwhile, so the passes converge on the records it
        wrote before the resync began; each pass re-reads both copies.
        """
        local_path, peer_path = records.with_suffix(prefix, "records"), records.with_suffix(peer_prefix, "records")
        copied = total = 0
        for _ in range(RESYNC_MAX_PASSES):
            # This copy first: a record the writer mirrors meanwhile is on the peer before it is here.
            local = await trio.to_thread.run_sync(records.read_record_set, local_path)
            remote = await trio.to_thread.run_sync(records.read_record_set, peer_path)
            if local - remote:
                # This copy holds records its peer never had: make it a copy of the peer's.
                await trio.to_thread.run_sync(records.write_atomically, local_path,
                                              "".join(f"{record}\n" for record in sorted(remote)))
                local = remote
            missing = sorted(remote - local)
            if not missing:
                return
            total += len(missing)
            for start in range(0, len(missing), RESYNC_BATCH):
                batch = missing[start:start + RESYNC_BATCH]
                await trio.to_thread.run_sync(self._append, local_path, batch)
                copied += len(batch)
                self._resyncing[key] = min(99, copied * 100 // total)
                await trio.sleep(self.resync_pause_s)
        raise DriverError(f"the resync of disk {key[1]} of instance {key[0]} did not catch up with its peer in "
                          f"{RESYNC_MAX_PASSES} passes; check that the peer's writer is not racing ahead, then "
                          "resync again")

    @staticmethod
    def _append(path: Path, batch: list[int]) -> None:
        with open(path, "a") as copy:
            copy.write("".join(f"{record}\n" for record in batch))
            copy.flush()
            os.fsync(copy.fileno())
