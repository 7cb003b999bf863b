"""What this machine offers to instances: memory, disk and cpus, detected from the host, each overridable.

The daemon reports it as NodeCapacityDetected. Several nodes sharing one host
(a local cluster, a test) must each be given their share: `detect` takes
overrides, and an override of 0 or less is refused rather than taken as "none".
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# What the host keeps for itself (its own processes, the page cache the daemons lean on).
RESERVED_MEMORY_MIB = 1024


@dataclass(frozen=True)
class Capacity:
    """Memory and disk in MiB, cpus as a count."""

    memory_mib: int
    disk_mib: int
    cpus: int


class CapacityError(ValueError):
    """The host could not be read, or an override makes no sense; the message says what to give instead."""


def detect(data_dir: str, memory_mib: int | None = None, disk_mib: int | None = None, cpus: int | None = None,
           meminfo: str = "/proc/meminfo") -> Capacity:
    """The host's capacity for instances, with any given figure taking the place of the detected one."""
    for name, value in (("memory_mib", memory_mib), ("disk_mib", disk_mib), ("cpus", cpus)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise CapacityError(f"{name} must be a whole number of at least 1, got {value!r}")
    return Capacity(memory_mib if memory_mib is not None else _memory_mib(meminfo),
                    disk_mib if disk_mib is not None else _disk_mib(data_dir),
                    cpus if cpus is not None else _cpus())


def _memory_mib(meminfo: str) -> int:
    """MemTotal less what the host keeps for itself (at least 1 MiB)."""
    try:
        with open(meminfo, encoding="ascii") as lines:
            for line in lines:
                if line.startswith("MemTotal:"):
                    return max(int(line.split()[1]) // 1024 - RESERVED_MEMORY_MIB, 1)
    except (OSError, ValueError, IndexError) as error:
        raise CapacityError(f"cannot read the host's memory from {meminfo} ({error}); "
                            "give it with --memory-mib") from None
    raise CapacityError(f"{meminfo} has no MemTotal line; give the memory with --memory-mib")


def _disk_mib(data_dir: str) -> int:
    """The space the data directory's file system has for disks (free to unprivileged users)."""
    try:
        stats = os.statvfs(data_dir)
    except OSError as error:
        raise CapacityError(f"cannot read the free space of {data_dir} ({error.strerror}); create it first, "
                            "or give the disk with --disk-mib") from None
    return max(stats.f_bavail * stats.f_frsize // (1024 * 1024), 1)


def _cpus() -> int:
    """The cpus this process may run on (a cgroup or taskset limit counts)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
