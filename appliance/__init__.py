"""Cairn's node: the model, the core, jobs, reconciler, drivers, API, daemon and CLI."""
