"""The replicated log of opaque bytes: record format, log contract and its implementations.

Nothing here knows about VMs or decodes an event; `appliance` is never imported.
"""
