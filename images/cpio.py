"""A writer of cpio archives in the "newc" format, the one the Linux kernel unpacks as an initramfs.

Only what an initramfs needs: directories, regular files, symbolic links and
device nodes, all owned by 0:0, with a fixed modification time so that the same
entries always give the same bytes. The layout (from the kernel's
Documentation/driver-api/early-userspace/buffer-format.rst): every entry is a
110-byte ASCII header (`070701` and thirteen 8-digit hex fields), the name
with its NUL, padding to a multiple of 4, the data, padding to a multiple of
4; the archive ends with an entry named `TRAILER!!!`.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
HEADER_BYTES = 110


@dataclass(frozen=True)
class Entry:
    """One archive member: `name` without a leading slash, `mode` with its file type bits (stat.S_IF*)."""

    name: str
    mode: int
    data: bytes = b""
    rdev_major: int = 0
    rdev_minor: int = 0


def directory(name: str, permissions: int = 0o755) -> Entry:
    """A directory entry."""
    return Entry(name, stat.S_IFDIR | permissions)


def regular(name: str, data: bytes, permissions: int = 0o644) -> Entry:
    """A regular file with its contents."""
    return Entry(name, stat.S_IFREG | permissions, data)


def symlink(name: str, target: str) -> Entry:
    """A symbolic link; its data is the target path."""
    return Entry(name, stat.S_IFLNK | 0o777, target.encode())


def char_device(name: str, major: int, minor: int, permissions: int = 0o600) -> Entry:
    """A character device node (the kernel needs /dev/console before devtmpfs is mounted)."""
    return Entry(name, stat.S_IFCHR | permissions, b"", major, minor)


def _padding(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _member(inode: int, entry: Entry, mtime: int) -> bytes:
    name = entry.name.encode() + b"\0"
    if entry.data and not (stat.S_ISREG(entry.mode) or stat.S_ISLNK(entry.mode)):
        raise ValueError(f"cpio entry {entry.name!r}: only regular files and symbolic links carry data")
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (inode, entry.mode, 0, 0, nlink, mtime, len(entry.data), 0, 0, entry.rdev_major, entry.rdev_minor,
              len(name), 0)
    header = MAGIC + b"".join(b"%08X" % value for value in fields)
    return header + name + _padding(HEADER_BYTES + len(name)) + entry.data + _padding(len(entry.data))


def newc(entries: Iterable[Entry], mtime: int = 0) -> bytes:
    """The archive of `entries`, in the order given (a directory must come before what it holds), with the trailer.

    Names must be unique and relative; ValueError otherwise.
    """
    parts, seen = [], set()
    for inode, entry in enumerate(entries, start=1):
        if not entry.name or entry.name.startswith("/") or entry.name == TRAILER:
            raise ValueError(f"cpio entry name {entry.name!r} must be a relative path other than {TRAILER}")
        if entry.name in seen:
            raise ValueError(f"cpio entry {entry.name!r} appears twice")
        seen.add(entry.name)
        parts.append(_member(inode, entry, mtime))
    parts.append(_member(0, Entry(TRAILER, 0), 0))
    return b"".join(parts)
