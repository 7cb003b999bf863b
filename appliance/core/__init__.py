"""The node core: jobs and reconciliation as one I/O-free state machine (`NodeCore.step(input) -> Ready`).

Nothing here touches trio, sockets, threads, subprocesses or the clock: time
arrives as ticks, committed records and driver results arrive as inputs, and
every effect leaves as data in a `Ready` for the I/O shell (the daemon, or the
simulator) to perform.
"""
