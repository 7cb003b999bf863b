"""Tests of the event registry and the canonical envelope codec, golden files included."""

import re
from pathlib import Path

import cbor2
import pytest
from hypothesis import given, settings

from appliance.model import codec, events
from appliance.model.codec import Envelope
from appliance.model.errors import UndecodableEvent
from tests.event_samples import envelopes, golden_name, sample_envelope

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "events"


def test_type_numbers_are_unique_and_names_past_tense():
    """Every event has its own type number and a past-tense name."""
    numbers = [cls.TYPE for cls in events.REGISTRY.values()]
    assert len(numbers) == len(set(numbers))
    for cls in events.REGISTRY.values():
        words = re.findall(r"[A-Z][a-z]*", cls.__name__)
        assert any(w.endswith("ed") or w in ("Set", "Grown", "Run") for w in words[1:]), cls.__name__


def test_registering_a_used_number_fails():
    """A second event with a taken type number is refused at import time."""
    with pytest.raises(ValueError, match="already"):
        @events.event(events.ClusterInitialized.TYPE)
        @events.frozen
        class Duplicate:
            x: int


def test_every_event_has_a_golden_file():
    """Each (type, version) has a golden file under tests/data/events (write it with tests.write_golden)."""
    missing = [golden_name(cls) for cls in events.REGISTRY.values() if not (GOLDEN / golden_name(cls)).exists()]
    assert not missing, f"run 'python -m tests.write_golden' and commit: {missing}"


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.cbor")), ids=lambda p: p.stem)
def test_golden_files_still_decode(path):
    """Every golden file decodes, and a current-version one re-encodes to the same bytes."""
    data = path.read_bytes()
    envelope = codec.decode(data)
    assert f"-{envelope.type_name}-" in path.name
    if path.stem.endswith(f"-v{type(envelope.event).VERSION}"):
        assert codec.encode(envelope) == data


@given(envelopes)
@settings(max_examples=300, deadline=None)
def test_encode_decode_round_trip(envelope):
    """Any envelope of any event type decodes to itself and encodes canonically."""
    data = codec.encode(envelope)
    decoded = codec.decode(data)
    assert decoded == envelope
    assert codec.encode(decoded) == data


def test_unknown_type_stops_loudly():
    """An unknown event type raises UndecodableEvent naming the seq; nothing is skipped."""
    raw = codec.envelope_dict(sample_envelope(events.UserAdded))
    raw["type"] = 0x7FFF
    with pytest.raises(UndecodableEvent, match=r"seq 12.*unknown event type 0x7fff.*never skips"):
        codec.decode(cbor2.dumps(raw, canonical=True), seq=12)


def test_newer_version_stops_loudly():
    """An event version above what this node knows raises UndecodableEvent."""
    raw = codec.envelope_dict(sample_envelope(events.UserAdded))
    raw["version"] = 99
    with pytest.raises(UndecodableEvent, match="newer"):
        codec.decode(cbor2.dumps(raw, canonical=True))


def test_wrong_fields_stop_loudly():
    """A payload with a missing field raises UndecodableEvent."""
    raw = codec.envelope_dict(sample_envelope(events.UserAdded))
    del raw["payload"]["role"]
    with pytest.raises(UndecodableEvent, match="fields"):
        codec.decode(cbor2.dumps(raw, canonical=True))


def test_garbage_is_undecodable():
    """Bytes that are not CBOR raise UndecodableEvent."""
    with pytest.raises(UndecodableEvent):
        codec.decode(b"\xff\x00garbage")


def test_old_versions_are_upcast_on_read(monkeypatch):
    """A v1 payload is upcast to the current version when the class has moved on."""

    @events.frozen
    class Renamed:
        name: str
        role: str

        @staticmethod
        def upcast_v1_to_v2(payload):
            return {**payload, "role": "read-only"}

    Renamed.TYPE, Renamed.VERSION, Renamed.FIELDS = 0x7FF0, 2, ("name", "role")
    Renamed.FIELD_SET = frozenset(Renamed.FIELDS)
    monkeypatch.setitem(events.REGISTRY, 0x7FF0, Renamed)
    raw = {"event_id": bytes(16), "type": 0x7FF0, "version": 1, "payload": {"name": "eve"},
           "actor": "admin", "reason": "", "proposed_at": 0.0}
    envelope = codec.decode(cbor2.dumps(raw, canonical=True))
    assert envelope.event == Renamed("eve", "read-only")


def test_event_id_must_be_16_bytes():
    """Encoding refuses an event id of the wrong length."""
    with pytest.raises(ValueError, match="16 bytes"):
        codec.encode(Envelope(b"short", events.UserRemoved("x"), "admin", "", 0.0))


def test_json_export_form_names_who_and_why():
    """The JSON-ready form carries seq, name, actor and reason, with bytes as hex."""
    line = codec.to_json_ready(sample_envelope(events.UserAdded), seq=5)
    assert (line["seq"], line["name"], line["actor"]) == (5, "UserAdded", "admin")
    assert line["reason"].startswith("golden") and line["event_id"] == bytes(range(16)).hex()


def test_a_renamed_field_stops_loudly():
    """A payload with the right number of fields but a wrong name raises UndecodableEvent."""
    raw = codec.envelope_dict(sample_envelope(events.UserAdded))
    raw["payload"]["rank"] = raw["payload"].pop("role")
    with pytest.raises(UndecodableEvent, match="fields"):
        codec.decode(cbor2.dumps(raw, canonical=True))


def test_an_extra_envelope_key_stops_loudly():
    """An envelope with an unknown key instead of a known one is not a Cairn envelope."""
    raw = codec.envelope_dict(sample_envelope(events.UserAdded))
    raw["who"] = raw.pop("actor")
    with pytest.raises(UndecodableEvent, match="envelope"):
        codec.decode(cbor2.dumps(raw, canonical=True))
