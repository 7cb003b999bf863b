"""The thin wrapper over the compiled core: turns C status codes into exceptions, arrays into lists."""

from collections.abc import Sequence

from fastpath._cairn_fastpath import ffi, lib

_STATUS = {lib.CAIRN_EINVAL: "invalid argument"}


class FastpathError(RuntimeError):
    """The C core refused its input."""


def _check(code: int, what: str) -> None:
    if code != lib.CAIRN_OK:
        raise FastpathError(f"{what}: {_STATUS.get(code, f'status {code}')}")


def stddev(values: Sequence[float]) -> float:
    """Population standard deviation, computed in C."""
    array = ffi.new("double[]", list(values))
    out = ffi.new("double *")
    _check(lib.cairn_stddev(array, len(values), out), "stddev")
    return out[0]
