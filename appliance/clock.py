"""The one place that reads the clock; everything else is handed time as a value."""

import time


def now() -> float:
    """Wall-clock seconds since the epoch (for `proposed_at` and audit lines)."""
    return time.time()


def monotonic() -> float:
    """Seconds from an arbitrary start that never go backwards (for timeouts and benchmarks)."""
    return time.monotonic()


def boottime() -> float:
    """Seconds on CLOCK_BOOTTIME: monotonic, and counting while the machine is suspended (leases: a resumed
    node must find its lease already lapsed)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)
