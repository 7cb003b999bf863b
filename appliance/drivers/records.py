"""The fake data plane of replicated disks: record files, acknowledgements and markers, as plain files.

Each copy of a replicated disk is a set of files in its node's disk root (a FileStorage root),
under `<root>/<instance id>/`, all named after the disk index:

- `<index>.records`: the copy's data, one line per record ("N\\n"), append-only. Records are
  numbered 1, 2, 3... by the writer; a copy holds a set of numbers (a resync may append older
  numbers after newer ones, and a repeated number is the same record).
- `<index>.acked`: written only beside the writer's own copy: the highest record the writer has
  acknowledged (what an application was told is on disk), replaced atomically after each write.
- `<index>.degraded`: the records the writer acknowledged on its own copy alone because the peer
  could not be reached (one line each). While the peer lacks any of them the pair is degraded.
- `<index>.peer`: the pairing written by `set_peer` (JSON: peer node and this copy's role).
- `<index>.mirror`: for the writer, where to mirror each write: the peer copy's path prefix, the
  peer's unreachable marker and this node's, one a line (all empty when the peer is unknown).

A node is cut off from the others (its copies cannot be reached, nor can it reach theirs) while
its root holds the marker `.unreachable` (`set_unreachable`); a node whose root is missing, or that
the storage's `peers` mapping does not name, cannot be reached either. That is how tests and the
benchmark cut a node off. The writer (the fake guest) mirrors a write only while the peer's records
file exists and neither root holds the marker.

The write protocol (the guest's unit of work, in `fake.py`) for record N is: append N to the local
copy; append N to the peer copy, or, when it cannot be reached, append N to the local `degraded`
list; then replace `acked` with N. A write(2) that returned survives the writer's SIGKILL (the page
cache outlives the process), so after a kill `acked` never names a record that is neither on the
peer copy nor in the `degraded` list. The fake does not model a machine losing its page cache.

The helpers at the bottom read copies for tests and for the benchmark's check for lost
acknowledged writes (`lost_acknowledged`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

UNREACHABLE_MARKER = ".unreachable"


def copy_prefix(root: str | os.PathLike, instance_id: str, index: int) -> Path:
    """The path prefix of a copy's files: `<root>/<instance id>/<index>` (the suffixes follow)."""
    return Path(root) / instance_id / str(index)


def with_suffix(prefix: Path, suffix: str) -> Path:
    return prefix.parent / f"{prefix.name}.{suffix}"


def read_record_set(path: Path) -> set[int]:
    """The record numbers in a records (or degraded) file; a missing file holds none.

    A line cut short by a writer killed mid-write is not a record (it was never acknowledged).
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return set()
    lines = text.split("\n")
    # The last element is "" for a complete file, or a partial line: neither is a record.
    return {int(line) for line in lines[:-1] if line.isdigit()}


def read_int(path: Path) -> int:
    """The number in a one-line file; 0 when it is missing or empty."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return 0
    return int(text) if text.isdigit() else 0


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` so that a reader sees the old or the new content, never a mix."""
    staging = path.parent / f".{path.name}.tmp"
    staging.write_text(text)
    staging.rename(path)


def read_pairing(prefix: Path) -> tuple[str, str] | None:
    """The (peer node, role) recorded by `set_peer` for a copy, or None if it is not paired."""
    try:
        pairing = json.loads(with_suffix(prefix, "peer").read_text())
        return pairing["peer"], pairing["role"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def set_unreachable(root: str | os.PathLike, unreachable: bool) -> None:
    """Cut a node's disks off from every other node (True), or make them reachable again (False)."""
    marker = Path(root) / UNREACHABLE_MARKER
    if unreachable:
        Path(root).mkdir(parents=True, exist_ok=True)
        marker.touch()
    else:
        marker.unlink(missing_ok=True)


def root_reachable(root: Path) -> bool:
    return root.is_dir() and not (root / UNREACHABLE_MARKER).exists()


# --- for tests and the benchmark ------------------------------------------------------


def acked_count(root: str | os.PathLike, instance_id: str, index: int) -> int:
    """The highest record the writer acknowledged on this node's copy (0 if it never wrote here)."""
    return read_int(with_suffix(copy_prefix(root, instance_id, index), "acked"))


def record_set(root: str | os.PathLike, instance_id: str, index: int) -> set[int]:
    """The records this node's copy holds."""
    return read_record_set(with_suffix(copy_prefix(root, instance_id, index), "records"))


def highest_record(root: str | os.PathLike, instance_id: str, index: int) -> int:
    """The highest record this node's copy holds (0 if none)."""
    return max(record_set(root, instance_id, index), default=0)


def lone_records(root: str | os.PathLike, instance_id: str, index: int) -> set[int]:
    """The records the writer acknowledged on this node's copy alone (its peer was unreachable)."""
    return read_record_set(with_suffix(copy_prefix(root, instance_id, index), "degraded"))


def acknowledged(roots: Iterable[str | os.PathLike], instance_id: str, index: int) -> int:
    """The highest record acknowledged to the instance's applications on any of these nodes."""
    return max((acked_count(root, instance_id, index) for root in roots), default=0)


def lost_acknowledged(roots: Iterable[str | os.PathLike], serving_root: str | os.PathLike, instance_id: str,
                      index: int) -> set[int]:
    """The acknowledged records (up to the highest acked on any of `roots`) missing from the copy at
    `serving_root`, the one the instance now runs on: what the benchmark counts as lost writes.

    Records are numbered without gaps by a continuing guest, so every number up to the highest
    acknowledged one was written; one missing from the serving copy was acknowledged and lost.
    """
    return set(range(1, acknowledged(roots, instance_id, index) + 1)) - record_set(serving_root, instance_id, index)
