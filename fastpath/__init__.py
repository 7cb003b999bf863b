"""Placement, balancing and capacity planning: a C core (cffi) and its pure-Python twin.

Nothing outside this package sees `ffi` or `lib`; `fastpath.core` owns every call.
"""
