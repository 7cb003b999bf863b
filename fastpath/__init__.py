"""Placement, balancing and capacity planning: a C core (cffi) and its pure-Python twin.

Nothing outside this package sees `ffi` or `lib`; `fastpath.core` owns every call.
"""


def engine_class(implementation: str = "c"):
    """The Engine class of the compiled core ("c") or of the pure-Python twin ("pure")."""
    if implementation == "pure":
        from fastpath.pure import Engine
        return Engine
    if implementation != "c":
        raise ValueError(f"unknown implementation '{implementation}'; use 'c' or 'pure'")
    from fastpath.core import Engine
    return Engine
