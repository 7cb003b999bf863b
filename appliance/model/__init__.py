"""The pure vocabulary of Cairn: ids, events, their codec, the cluster state and replay.

Only the standard library, cbor2 and immutables may be imported here; no trio, no I/O.
"""
