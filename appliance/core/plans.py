"""Plans as committed data: steps, their events and waits encoded as plain values, and back.

A job's plan is committed in JobOperationPlanned, so a new leader runs exactly
the steps the old one admitted; it never plans an operation again. Event ids
are derived from where an event stands in its job, so a step proposed twice
(by a retry or by a new leader) is recognised as a repeat by replay's window.
"""

from __future__ import annotations

import hashlib
from typing import Any

from appliance.model import events as ev
from appliance.model.ids import EVENT_ID_BYTES
from ops.base import Step, Wait


def event_id(*parts: Any) -> bytes:
    """A 16-byte event id derived from its parts (job, operation, step, index; or a node's report)."""
    return hashlib.sha256(repr(parts).encode()).digest()[:EVENT_ID_BYTES]


def encode_event(event: Any) -> dict[str, Any]:
    cls = type(event)
    return {"type": cls.TYPE, "version": cls.VERSION, "payload": ev.payload_of(event)}


def decode_event(data: dict[str, Any]) -> Any:
    """An event from its committed form, upcast to the current version."""
    cls = ev.REGISTRY[data["type"]]
    payload = dict(data["payload"])
    if data["version"] < cls.VERSION:
        payload = ev.upcast(cls, data["version"], payload)
    return cls(**payload)


def encode_wait(wait: Wait) -> dict[str, Any]:
    return {"what": wait.what, "instance": wait.instance, "node": wait.node, "timeout_s": wait.timeout_s,
            "on_timeout": wait.on_timeout}


def encode_steps(steps: tuple) -> tuple:
    """Steps as plain data for JobOperationPlanned."""
    return tuple({"message": step.message,
                  "events": tuple(encode_event(e) for e in step.events),
                  "waits": tuple(encode_wait(w) for w in step.waits),
                  "compensation": tuple(encode_event(e) for e in step.compensation)} for step in steps)


def decode_steps(data: tuple) -> tuple:
    """The committed steps as Step values."""
    return tuple(Step(step["message"], tuple(decode_event(e) for e in step["events"]),
                      tuple(Wait(**w) for w in step["waits"]),
                      tuple(decode_event(e) for e in step["compensation"])) for step in data)


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
