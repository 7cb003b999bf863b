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
# Golden files that must be refused: version 1 samples whose open `changes` map holds a key ("key") that no
# field of version 2 has. They were written before payloads were typed and are kept to prove the refusal.
REFUSED_GOLDEN = {"0102-ClusterModified-v1", "0403-NodeModified-v1"}


def undecodable(raw: dict, seq: int | None = None):
    """The UndecodableEvent that decoding an envelope given as plain data raises."""
    with pytest.raises(UndecodableEvent) as info:
        codec.decode(cbor2.dumps(raw, canonical=True), seq)
    return info.value


def golden(stem: str) -> bytes:
    return (GOLDEN / f"{stem}.cbor").read_bytes()


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


@pytest.mark.parametrize("path", [p for p in sorted(GOLDEN.glob("*.cbor")) if p.stem not in REFUSED_GOLDEN],
                         ids=lambda p: p.stem)
def test_golden_files_still_decode(path):
    """Every golden file decodes, and a current-version one re-encodes to the same bytes (less `job` if it had none)."""
    data = path.read_bytes()
    envelope = codec.decode(data)
    assert f"-{envelope.type_name}-" in path.name
    if path.stem.endswith(f"-v{type(envelope.event).VERSION}"):
        if "job" in cbor2.loads(data):
            assert codec.encode(envelope) == data
        else:
            assert envelope.job == 0
            written = {k: v for k, v in codec.envelope_dict(envelope).items() if k != "job"}
            assert cbor2.dumps(written, canonical=True) == data


@pytest.mark.parametrize("stem", sorted(REFUSED_GOLDEN))
def test_v1_golden_with_an_unknown_change_is_refused(stem):
    """A v1 ClusterModified or NodeModified golden whose changes hold 'key' is refused, naming the key and seq."""
    with pytest.raises(UndecodableEvent, match=r"seq 9: .*v1 cannot be upcast: .*change 'key' is not one of"):
        codec.decode(golden(stem), seq=9)


def test_observed_running_v1_upcasts_to_seen_at_seq_zero():
    """The v1 InstanceObservedRunning golden decodes with seen_at_seq 0."""
    assert codec.decode(golden("0510-InstanceObservedRunning-v1")).event == \
        events.InstanceObservedRunning("example", "example", 0)


def test_observed_stopped_v1_upcasts_to_a_shutdown_seen_at_seq_zero():
    """The v1 InstanceObservedStopped golden decodes with seen_at_seq 0 and cause shutdown."""
    assert codec.decode(golden("0511-InstanceObservedStopped-v1")).event == \
        events.InstanceObservedStopped("example", "example", 0, "shutdown")


def test_job_admitted_v1_upcasts_to_one_claim_holding_its_reservations_and_macs():
    """The v1 JobAdmitted golden decodes to a single V1_HOLDINGS claim carrying its reservations and MACs."""
    event = codec.decode(golden("0602-JobAdmitted-v1")).event
    assert event == events.JobAdmitted(7, ({events.V1_HOLDINGS: True, "reservations": ("a", "b"),
                                            "macs": ("a", "b")},))


def test_cluster_modified_v1_with_known_keys_upcasts_to_typed_fields():
    """A v1 ClusterModified whose changes are all cluster parameters becomes v2 with the rest None."""
    raw = codec.envelope_dict(sample_envelope(events.UserAdded))
    raw.update(type=events.ClusterModified.TYPE, version=1,
               payload={"changes": {"mac_prefix": "aa:11:22", "enabled_hypervisors": ["kvm"], "feature_level": 2}})
    event = codec.decode(cbor2.dumps(raw, canonical=True)).event
    assert event == events.ClusterModified(("kvm",), None, None, None, "aa:11:22", 2, None, None)


def test_node_modified_v1_with_known_keys_upcasts_to_typed_fields():
    """A v1 NodeModified whose changes are all node flags becomes v2 with the rest None."""
    raw = codec.envelope_dict(sample_envelope(events.UserAdded))
    raw.update(type=events.NodeModified.TYPE, version=1,
               payload={"node": "node-1", "changes": {"offline": True, "role": "non-voter"}})
    event = codec.decode(cbor2.dumps(raw, canonical=True)).event
    assert event == events.NodeModified("node-1", True, None, None, None, "non-voter")


def test_v1_without_a_changes_map_is_refused():
    """A v1 NodeModified whose changes are not a map is refused with the seq."""
    raw = codec.envelope_dict(sample_envelope(events.UserAdded))
    raw.update(type=events.NodeModified.TYPE, version=1, payload={"node": "node-1", "changes": ["offline"]})
    assert undecodable(raw, seq=4).seq == 4


def test_an_upcaster_error_becomes_undecodable_with_the_seq(monkeypatch):
    """A ValueError raised by an upcaster is reported as UndecodableEvent naming the event and the seq."""

    def broken(payload):
        raise ValueError("no such thing")

    monkeypatch.setattr(events.InstanceObservedRunning, "upcast_v1_to_v2", staticmethod(broken))
    with pytest.raises(UndecodableEvent, match=r"seq 5: InstanceObservedRunning v1 cannot be upcast: no such thing"):
        codec.decode(golden("0510-InstanceObservedRunning-v1"), seq=5)


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
    """The JSON-ready form carries seq, name, actor, reason and job, with bytes as hex."""
    line = codec.to_json_ready(sample_envelope(events.UserAdded), seq=5)
    assert (line["seq"], line["name"], line["actor"], line["job"]) == (5, "UserAdded", "admin", 42)
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


def test_an_envelope_built_without_a_job_has_job_zero():
    """An Envelope built without a job was caused by no job (job 0), and is encoded with job 0."""
    envelope = Envelope(bytes(16), events.UserRemoved("x"), "admin", "", 0.0)
    assert envelope.job == 0 and codec.envelope_dict(envelope)["job"] == 0


def test_envelope_carries_the_job():
    """The job that caused an event survives encoding and decoding."""
    envelope = sample_envelope(events.UserAdded)._replace(job=12345)
    assert codec.decode(codec.encode(envelope)).job == 12345


def test_an_envelope_without_job_reads_as_job_zero():
    """The seven-key envelope written before `job` existed decodes, as caused by no job."""
    raw = codec.envelope_dict(sample_envelope(events.UserAdded))
    del raw["job"]
    envelope = codec.decode(cbor2.dumps(raw, canonical=True))
    assert envelope.job == 0 and envelope.event == events.UserAdded("example", "example")


@pytest.mark.parametrize("job", [-1, "7", 1.5, None, True])
def test_an_envelope_job_that_is_no_job_id_stops_loudly(job):
    """A job that is not a non-negative integer is refused."""
    raw = codec.envelope_dict(sample_envelope(events.UserAdded))
    raw["job"] = job
    assert "is not a job id" in str(undecodable(raw))


def test_an_envelope_with_one_key_too_many_stops_loudly():
    """Nine keys is neither the old envelope nor the new one."""
    raw = codec.envelope_dict(sample_envelope(events.UserAdded))
    raw["extra"] = 1
    assert "envelope" in str(undecodable(raw))


def test_a_v1_job_admitted_without_its_reservations_is_refused():
    """A v1 JobAdmitted payload missing a field it must carry is refused rather than filled in."""
    raw = codec.envelope_dict(sample_envelope(events.UserAdded))
    raw.update(type=events.JobAdmitted.TYPE, version=1, payload={"job": 3, "macs": []})
    assert "lacks reservations" in str(undecodable(raw))


def test_a_v1_node_modified_without_its_node_is_refused():
    """Upcasting keeps every other v1 field, so one missing is still refused by the field check."""
    raw = codec.envelope_dict(sample_envelope(events.UserAdded))
    raw.update(type=events.NodeModified.TYPE, version=1, payload={"changes": {"offline": True}})
    assert "fields" in str(undecodable(raw))
