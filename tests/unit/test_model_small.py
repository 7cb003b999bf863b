"""Tests of the small model modules: ids, errors, the clock, the sandbox driver and the memory log."""

import pytest
import trio

from appliance import clock
from appliance.demo import Demo
from appliance.model import codec, ids, replay
from appliance.model.errors import CODES, PrereqError, UndecodableEvent
from appliance.sandbox import Sandbox
from consensus.memory_log import MemoryLog


@pytest.mark.parametrize("name", ["web1", "web1.example.com", "a-b.c"])
def test_hostnames_accept_lower_case_dns_names(name):
    """Lower-case DNS names are valid host names."""
    assert ids.is_hostname(name)


@pytest.mark.parametrize("name", ["bad_name!", "Web1", "-a", "a..b", "", "a" * 64])
def test_hostnames_refuse_everything_else(name):
    """Upper case, underscores, empty labels and over-long labels are refused."""
    assert not ids.is_hostname(name)


def test_mac_from_int_keeps_the_prefix():
    """Generated MACs carry the cluster prefix and are valid."""
    mac = ids.mac_from_int("aa:00:00", 0x123456)
    assert mac == "aa:00:00:12:34:56" and ids.is_mac(mac)
    assert ids.is_mac_prefix("aa:00:00") and not ids.is_mac_prefix("aa:00")


def test_prereq_error_speaks_ganeti():
    """A PrereqError prints in Ganeti's three-line form with its code."""
    error = PrereqError("already_exists", "Instance 'x' is already in the cluster")
    assert error.ganeti_text().splitlines()[1] == "error type: already_exists, error details:"
    assert "wrong_input" in CODES


def test_prereq_error_refuses_unknown_codes():
    """Codes are a closed set, so scripts can rely on them."""
    with pytest.raises(ValueError):
        PrereqError("oops", "x")


def test_undecodable_event_says_what_to_do():
    """The stop message says the node never skips and to upgrade."""
    assert "Upgrade cairn" in str(UndecodableEvent("unknown event type 0x7fff", seq=3))


def test_clock_moves_forward():
    """The monotonic clock never goes backwards and wall time is an epoch float."""
    first = clock.monotonic()
    assert clock.monotonic() >= first and clock.now() > 1.7e9


def test_sandbox_plan_applies_nothing():
    """Planning an operation leaves the state unchanged; running it applies the plan."""
    box = Sandbox(2)
    box.run("cluster_init", name="c.example.com")
    before = box.state
    plan = box.plan("node_add", name="n1.example.com", memory_mib=1024, disk_mib=1024, cpus=1)
    assert box.state is before and plan.events
    box.apply_plan(plan, "admin", "test")
    assert box.state.node_by_name("n1.example.com") is not None


def test_sandbox_refusal_applies_nothing():
    """A refused operation raises PrereqError and leaves no event behind."""
    box = Sandbox(2)
    box.run("cluster_init", name="c.example.com")
    count = len(box.envelopes)
    with pytest.raises(PrereqError):
        box.run("node_remove", node="nosuch.example.com")
    assert len(box.envelopes) == count


async def test_model_runs_end_to_end_over_the_memory_log():
    """The demo's committed envelopes, proposed to the memory log and folded from its stream, give the node's digest."""
    envelopes = []
    demo = Demo(9, envelopes.append)
    demo.setup()
    for _ in range(300):
        demo.step()
    log = MemoryLog()
    for envelope in envelopes:
        await log.propose(codec.encode(envelope))
    state = None
    with trio.fail_after(30):
        async for record in log.committed():
            state = replay.apply(state if state is not None else replay.ClusterState(),
                                 codec.decode(record.payload, record.seq), record.seq)
            if record.seq == len(envelopes):
                break
    assert state.digest() == demo.state.digest()
    await log.aclose()
