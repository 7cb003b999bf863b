"""pysyncobj's snapshots written as CBOR documents (never pickle), and the checkpoint the application offers."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import cbor2
from pysyncobj.node import TCPNode

from consensus.history import HistoryStore
from consensus.log import LogError
from consensus.record import ChainHead
from consensus.syncobj_settings import SyncObjSettings

SNAPSHOT_FORMAT = 1


class SnapshotFiles:
    """SyncObjLog's snapshot side: pysyncobj's serializer pair (tick thread) and the checkpoint file."""

    _settings: SyncObjSettings
    _data_dir: Path
    _history: HistoryStore
    _chain: ChainHead
    _checkpoint: tuple[int, bytes] | None

    # Provided by the other sides of SyncObjLog.
    _to_trio: Callable[..., None]
    _snapshot_in_trio: Callable[[ChainHead], None]

    def _write_snapshot(self, file_name: str, data: tuple) -> None:
        last_entry, before_last, cluster = data
        durable = self._settings.fsync == "always"
        if durable:
            # Under `always` the snapshot is never ahead of the durable history.
            # Under `batch` a power loss may leave it ahead; the member then
            # copies the missing records from a peer like any lagging member.
            self._history.sync()
        document = {
            "format": SNAPSHOT_FORMAT,
            "chain": [self._chain.seq, self._chain.hash],
            "entries": [list(last_entry), list(before_last)],
            "cluster": sorted(node.id for node in cluster if node is not None),
            "checkpoint": list(self._checkpoint) if self._checkpoint else None,
        }
        with open(file_name, "wb") as f:
            cbor2.dump(document, f, canonical=True)
            if durable:
                f.flush()
                os.fsync(f.fileno())

    def _read_snapshot(self, file_name: str) -> tuple:
        with open(file_name, "rb") as f:
            document = cbor2.load(f)
        if document.get("format") != SNAPSHOT_FORMAT:
            raise LogError(f"snapshot {file_name} has format {document.get('format')!r}, expected "
                           f"{SNAPSHOT_FORMAT}; this build cannot read it")
        seq, digest = document["chain"]
        self._chain = ChainHead(seq, digest)
        if document.get("checkpoint"):
            offered = tuple(document["checkpoint"])
            if self._checkpoint is None or offered[0] > self._checkpoint[0]:
                self._checkpoint = (offered[0], offered[1])
        self._history.note_snapshot(self._chain)
        self._to_trio(self._snapshot_in_trio, self._chain)
        cluster = {TCPNode(address) for address in document["cluster"]}
        last_entry, before_last = (tuple(entry) for entry in document["entries"])
        return last_entry, before_last, cluster

    def _load_checkpoint(self) -> tuple[int, bytes] | None:
        path = self._data_dir / "checkpoint.cbor"
        if not path.exists():
            return None
        seq, data = cbor2.loads(path.read_bytes())
        return seq, data

    def set_snapshot(self, seq: int, data: bytes) -> None:
        path = self._data_dir / "checkpoint.cbor"
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(cbor2.dumps([seq, bytes(data)], canonical=True))
        os.replace(temporary, path)
        self._checkpoint = (seq, bytes(data))

    def latest_snapshot(self) -> tuple[int, bytes] | None:
        return self._checkpoint
