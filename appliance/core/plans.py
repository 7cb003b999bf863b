"""Plans as committed data: steps, their events and waits encoded as plain values, and back.

A job's plan is committed in JobOperationPlanned, so a new leader runs exactly
the steps the old one admitted; it never plans an operation again. Event ids
are derived from where an event stands in its job, so a step proposed twice
(by a retry or by a new leader) is recognised as a repeat by replay's window.

The committed form of a plan's steps (part of the log format: change it only
with a new version of JobOperationPlanned): a list of steps, each
`[message, events, waits, compensation]`; an event is `[type, version,
payload]` (upcast on decode), a wait `[what, instance, node, timeout_s,
on_timeout]`. Arrays rather than maps keep the encoding small and cheap.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

from appliance.model import events as ev
from appliance.model.ids import EVENT_ID_BYTES
from ops.base import Step, Wait


@functools.lru_cache(maxsize=65536)
def event_id(*parts: Any) -> bytes:
    """A 16-byte event id derived from its parts (job, operation, step, index; or a node's report).

    Cached: the engine asks for the ids of the steps it watches on every decision.
    """
    return hashlib.sha256(repr(parts).encode()).digest()[:EVENT_ID_BYTES]


def encode_event(event: Any) -> tuple:
    cls = type(event)
    return (cls.TYPE, cls.VERSION, ev.payload_of(event))


def decode_event(data: tuple) -> Any:
    """An event from its committed form, upcast to the current version."""
    type_number, version, payload = data
    cls = ev.REGISTRY[type_number]
    if version < cls.VERSION:
        payload = ev.upcast(cls, version, dict(payload))
    return cls(**payload)


def encode_steps(steps: tuple) -> tuple:
    """Steps as plain data for JobOperationPlanned (the format is in this module's docstring)."""
    return tuple((step.message, tuple(encode_event(e) for e in step.events),
                  tuple((w.what, w.instance, w.node, w.timeout_s, w.on_timeout) for w in step.waits),
                  tuple(encode_event(e) for e in step.compensation)) for step in steps)


def decode_steps(data: tuple) -> tuple:
    """The committed steps as Step values."""
    return tuple(Step(message, tuple(decode_event(e) for e in events), tuple(Wait(*w) for w in step_waits),
                      tuple(decode_event(e) for e in compensation))
                 for message, events, step_waits, compensation in data)


def plain(value: Any) -> Any:
    """A result or params value as plain data (dataclasses become dicts)."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return tuple(plain(v) for v in value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value
