"""The pure-Python twin of the C core: the same semantics, used by tests and as a fallback."""

import math
from collections.abc import Sequence


def stddev(values: Sequence[float]) -> float:
    """Population standard deviation, as htools computes it."""
    if not values:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
