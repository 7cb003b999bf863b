"""The canonical CBOR envelope of an event: the payload of a committed record.

Envelope keys: `event_id` (16 bytes; a retry reuses it), `type`, `version`,
`payload`, `actor` and `reason` (the audit trail), `proposed_at` (seconds since
the epoch, as the proposer's clock read it) and `job` (the job that caused the
event, 0 for none; envelopes written before it existed have no such key and
read as 0). Encoding is canonical (sorted keys, shortest forms) so every node
writes identical bytes. Decoding upcasts old versions and refuses, loudly,
what it does not know.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from operator import itemgetter

import cbor2

from appliance.model import events
from appliance.model.errors import UndecodableEvent
from appliance.model.ids import EVENT_ID_BYTES

ENVELOPE_KEYS = frozenset({"event_id", "type", "version", "payload", "actor", "reason", "proposed_at", "job"})
# The envelope before `job` was added: still read, as job 0, never written.
ENVELOPE_KEYS_V1 = ENVELOPE_KEYS - {"job"}


class Envelope(NamedTuple):
    """An event with who proposed it, why, and when (a named tuple: one is built per record replayed)."""

    event_id: bytes
    event: Any
    actor: str
    reason: str
    proposed_at: float
    job: int = 0          # the job that caused the event; 0 when no job did

    @property
    def type_name(self) -> str:
        return type(self.event).__name__


def freeze(value: Any) -> Any:
    """Lists become tuples (recursively), so decoded events compare equal to built ones.

    Only ever called on freshly decoded data, which nothing else holds: a dict
    without lists or dicts in it is returned as it is, not copied.
    """
    kind = type(value)
    if kind is list:
        return tuple([freeze(v) if type(v) in _CONTAINERS else v for v in value])
    if kind is dict:
        for v in value.values():
            if type(v) in _CONTAINERS:
                return {k: freeze(v) if type(v) in _CONTAINERS else v for k, v in value.items()}
        return value
    return value


_CONTAINERS = (list, dict)
_tuple_new = tuple.__new__
_loads = cbor2.loads


def envelope_dict(envelope: Envelope) -> dict[str, Any]:
    """The envelope as plain data, as it is encoded."""
    cls = type(envelope.event)
    return {
        "event_id": envelope.event_id,
        "type": cls.TYPE,
        "version": cls.VERSION,
        "payload": events.payload_of(envelope.event),
        "actor": envelope.actor,
        "reason": envelope.reason,
        "proposed_at": envelope.proposed_at,
        "job": envelope.job,
    }


def encode(envelope: Envelope) -> bytes:
    """Canonical CBOR bytes of an envelope."""
    if len(envelope.event_id) != EVENT_ID_BYTES:
        raise ValueError(f"event_id must be {EVENT_ID_BYTES} bytes, got {len(envelope.event_id)}")
    return cbor2.dumps(envelope_dict(envelope), canonical=True)


# Per type number: the class, its current version, its field count, its getter and container fields.
_FAST = {number: (cls, cls.VERSION, len(cls.FIELDS), cls.GETTER, cls.CONTAINER_INDEXES)
         for number, cls in events.REGISTRY.items()}
_ENVELOPE_SIZE = len(ENVELOPE_KEYS)
_ENVELOPE = itemgetter("event_id", "type", "version", "payload", "actor", "reason", "proposed_at", "job")


def decode(data: bytes, seq: int | None = None) -> Envelope:
    """Decode an envelope; raise UndecodableEvent for anything this version cannot read."""
    try:
        raw = _loads(data)
    except Exception as error:
        raise UndecodableEvent(f"payload is not valid CBOR ({error})", seq) from None
    # The fast path: a current-version event with exactly its fields (what replay meets nearly always).
    # Missing keys raise KeyError and wrong shapes fall through to the checked path, which names the fault.
    if type(raw) is dict and len(raw) == _ENVELOPE_SIZE:
        try:
            event_id, type_number, version, payload, actor, reason, proposed_at, job = _ENVELOPE(raw)
            cls, current, size, getter, containers = _FAST[type_number]
            if (version == current and type(payload) is dict and len(payload) == size
                    and type(event_id) is bytes and len(event_id) == EVENT_ID_BYTES and type(job) is int and job >= 0):
                values = getter(payload)
                if containers:
                    values = list(values)
                    for index in containers:
                        if type(values[index]) in _CONTAINERS:
                            values[index] = freeze(values[index])
                return _tuple_new(Envelope, (event_id, _tuple_new(cls, values), actor, reason, proposed_at, job))
        except (KeyError, TypeError):
            pass
    if not isinstance(raw, dict) or (raw.keys() != ENVELOPE_KEYS and raw.keys() != ENVELOPE_KEYS_V1):
        raise UndecodableEvent("payload is not a Cairn event envelope", seq)
    return from_dict(raw, seq)


def from_dict(raw: dict[str, Any], seq: int | None = None) -> Envelope:
    """Build an envelope from its decoded plain-data form, checking everything."""
    return _from_dict_checked(raw, seq)


def _from_dict_checked(raw: dict[str, Any], seq: int | None) -> Envelope:
    type_number, version = raw["type"], raw["version"]
    cls = events.REGISTRY.get(type_number)
    if cls is None:
        raise UndecodableEvent(f"unknown event type {type_number:#06x}" if isinstance(type_number, int)
                               else f"event type {type_number!r} is not a number", seq)
    if not isinstance(version, int) or version < 1 or version > cls.VERSION:
        raise UndecodableEvent(f"{cls.__name__} version {version} is newer than this node knows (v{cls.VERSION})", seq)
    payload = raw["payload"]
    if not isinstance(payload, dict):
        raise UndecodableEvent(f"{cls.__name__} payload is not a map", seq)
    if version < cls.VERSION:
        try:
            payload = events.upcast(cls, version, payload)
        except UndecodableEvent as error:
            raise UndecodableEvent(f"{cls.__name__} v{version} cannot be upcast: {error.message}", seq) from None
        except ValueError as error:
            raise UndecodableEvent(f"{cls.__name__} v{version} cannot be upcast: {error}", seq) from None
    if payload.keys() != cls.FIELD_SET:
        raise UndecodableEvent(f"{cls.__name__} v{version} payload has fields {sorted(payload)}, "
                               f"expected {sorted(cls.FIELDS)}", seq)
    event_id = raw["event_id"]
    if not isinstance(event_id, bytes) or len(event_id) != EVENT_ID_BYTES:
        raise UndecodableEvent("event_id is not 16 bytes", seq)
    job = raw.get("job", 0)
    if type(job) is not int or job < 0:
        raise UndecodableEvent(f"envelope job {job!r} is not a job id (a non-negative integer)", seq)
    try:
        event_value = cls(**{k: freeze(v) for k, v in payload.items()})
    except TypeError as error:
        raise UndecodableEvent(f"{cls.__name__} payload does not fit ({error})", seq) from None
    return Envelope(event_id, event_value, str(raw["actor"]), str(raw["reason"]), float(raw["proposed_at"]), job)


def to_json_ready(envelope: Envelope, seq: int | None = None) -> dict[str, Any]:
    """The envelope as JSON-ready data (bytes as hex), for `cairn events export --format jsonl`."""
    line = {
        "seq": seq,
        "event_id": envelope.event_id.hex(),
        "type": f"{type(envelope.event).TYPE:#06x}",
        "name": envelope.type_name,
        "version": type(envelope.event).VERSION,
        "actor": envelope.actor,
        "reason": envelope.reason,
        "proposed_at": envelope.proposed_at,
        "job": envelope.job,
        "payload": _json_value(events.payload_of(envelope.event)),
    }
    return line


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return value
