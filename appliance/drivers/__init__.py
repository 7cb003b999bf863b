"""Drivers: the I/O behind the reconciler's actions (hypervisors and storage), one contract each."""
