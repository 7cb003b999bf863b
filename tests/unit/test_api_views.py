"""The API's rows: pure projections of a sandboxed cluster's state into the JSON of docs/api.md."""

import json

import pytest

from appliance.api import views
from appliance.api.auth import ApiError, Caller, authenticate, node_token, require
from appliance.model import events as ev
from appliance.model.errors import PrereqError
from tests.unit.api_support import NODES, RAFT_PASSWORD
from tests.unit.api_support import backend, tokens  # noqa: F401 (fixtures)


def status_of(backend, name="web1"):
    return views.instance_row(backend.state(), backend.state().instance_by_name(name))["status"]


def test_names_sort_nicely():
    """Digit runs compare as numbers: node2 comes before node10."""
    assert views.nice_sorted(["node10", "node2", "node1", "a", "node2b"]) == ["a", "node1", "node2", "node2b", "node10"]


def test_running_instance_row_has_ganeti_fields(backend):
    """A running instance reads 'running', names its nodes and shows its memory as oper_ram."""
    row = views.instance_rows(backend.state())[0]
    assert (row["name"], row["status"], row["pnode"], row["snodes"]) == ("web1", "running", NODES[0], [NODES[1]])
    assert (row["oper_state"], row["oper_ram"], row["be/maxmem"], row["disk.sizes"]) == (True, 1024, 1024, [2048])
    json.dumps(row)


def test_stopped_instance_reads_admin_down(backend):
    """An instance marked down and not running reads ADMIN_down, with no oper_ram."""
    row = views.instance_row(backend.state(), backend.state().instance_by_name("web2"))
    assert (row["status"], row["oper_ram"]) == ("ADMIN_down", None)


def test_instance_marked_up_but_stopped_reads_error_down(backend):
    """An instance marked up whose primary saw it stop reads ERROR_down."""
    web1 = backend.state().instance_by_name("web1")
    backend.commit(ev.InstanceObservedStopped(web1.id, web1.primary, 0, "crashed"))
    assert status_of(backend) == "ERROR_down"


def test_instance_shut_down_by_its_guest_reads_user_down(backend):
    """An instance marked up that its guest shut down reads USER_down."""
    web1 = backend.state().instance_by_name("web1")
    backend.commit(ev.InstanceObservedStopped(web1.id, web1.primary, 0, "guest"))
    assert status_of(backend) == "USER_down"


def test_instance_running_while_marked_down_reads_error_up(backend):
    """An instance marked down that still runs reads ERROR_up."""
    backend.box.run("instance_shutdown", instance="web1")
    assert status_of(backend) == "ERROR_up"


def test_instance_running_on_another_node_reads_error_wrongnode(backend):
    """An instance seen running away from its primary reads ERROR_wrongnode."""
    web1 = backend.state().instance_by_name("web1")
    backend.commit(ev.InstanceObservedRunning(web1.id, web1.secondary))
    assert status_of(backend) == "ERROR_wrongnode"


def test_instance_on_an_offline_primary_reads_error_nodeoffline(backend):
    """An instance whose primary node is offline reads ERROR_nodeoffline."""
    web1 = backend.state().instance_by_name("web1")
    backend.commit(ev.NodeModified(web1.primary, True, None, None, None, None))
    assert status_of(backend) == "ERROR_nodeoffline"


def test_node_row_counts_free_memory_and_disk_of_its_instances(backend):
    """mfree takes the primaries' memory; dfree takes the disks of primaries and secondaries."""
    rows = {row["name"]: row for row in views.node_rows(backend.state())}
    n1, n2 = rows[NODES[0]], rows[NODES[1]]
    assert (n1["mfree"], n1["dfree"], n1["pinst_list"]) == (4096 - 1024, 100_000 - 2048, ["web1"])
    assert (n2["mfree"], n2["dfree"], n2["sinst_list"]) == (4096, 100_000 - 2048, ["web1"])


def test_node_role_letters_follow_ganeti(backend):
    """The leader's node is M, an offline node O, a drained node D, a master-capable node C."""
    n2, n3 = (backend.state().node_by_name(name).id for name in NODES[1:])
    backend.commit(ev.NodeModified(n2, True, None, None, None, None))
    backend.commit(ev.NodeModified(n3, None, True, None, None, None))
    roles = [row["role"] for row in views.node_rows(backend.state())]
    assert roles == ["M", "O", "D"]
    backend.commit(ev.NodeModified(n3, None, False, False, None, None))
    assert views.node_rows(backend.state(), [NODES[2]])[0]["role"] == "R"


def test_unknown_name_is_refused_as_unknown_entity(backend):
    """Asking for a node that does not exist names it."""
    with pytest.raises(PrereqError) as info:
        views.node_rows(backend.state(), ["nope"])
    assert info.value.code == "unknown_entity" and "nope" in info.value.message


def test_job_row_names_ganeti_opcodes_and_redacts_credentials(backend):
    """A job's summary lists opcodes; its credential hash shows to admins only."""
    backend.commit(ev.JobSubmitted(({"op": "user_add", "params": {"name": "x", "credential_hash": "ab" * 32}},
                                    {"op": "instance_startup", "params": {"instance": "web2"}}), "r1"))
    job = backend.state().jobs[1]
    row = views.job_row(job, redact=True)
    assert row["summary"] == ["USER_ADD", "INSTANCE_STARTUP"]
    assert row["ops"][0]["params"]["credential_hash"] == views.REDACTED
    assert views.job_row(job, redact=False)["ops"][0]["params"]["credential_hash"] == "ab" * 32


def test_job_row_carries_its_log(backend):
    """Each progress message becomes an oplog entry [ts, message]."""
    backend.commit(ev.JobSubmitted(({"op": "instance_startup", "params": {"instance": "web2"}},), ""))
    backend.commit(ev.JobProgressed(1, 0, 0, "starting web2"))
    assert views.job_rows(backend.state())[0]["oplog"] == [[backend.box.now, "starting web2"]]


def test_event_line_redacts_credential_hash_for_non_admins(backend):
    """A CredentialAdded line hides the hash unless the caller is an admin."""
    record = next(r for r in backend.history if b"credential_hash" in r.payload)
    assert views.event_line(record.seq, record.payload, redact=True)["payload"]["credential_hash"] == views.REDACTED
    assert len(views.event_line(record.seq, record.payload, redact=False)["payload"]["credential_hash"]) == 64


def test_verify_finds_nothing_wrong_in_a_sound_cluster(backend):
    """A cluster built by operations has no problems."""
    assert views.verify(backend.state()) == []


def test_verify_reports_an_overcommitted_node(backend):
    """A node whose primaries need more memory than it has is a problem."""
    web1 = backend.state().instance_by_name("web1")
    backend.commit(ev.NodeCapacityDetected(web1.primary, 512, 100_000, 4))
    problems = views.verify(backend.state())
    assert len(problems) == 1 and "1024 MiB" in problems[0]


def test_cluster_object_says_who_leads(backend):
    """The cluster object names the master, this node and the seq it was read at."""
    state = backend.state()
    cluster = views.cluster_object(state, backend.log_status(), NODES[0], state.digest())
    assert (cluster["name"], cluster["master"], cluster["seq"], cluster["instance_count"]) == \
           ("c.example.com", NODES[0], state.seq, 2)


def test_tokens_authenticate_as_their_users(backend, tokens):
    """Each token maps to its user and role; the node token to the read-only cairn-node."""
    state, node_hash = backend.state(), backend.node_token_hash()
    assert authenticate(state, f"Bearer {tokens.operator}", node_hash) == Caller("oper", "operator")
    assert authenticate(state, f"bearer {tokens.node}", node_hash, node_certified=True) == Caller("cairn-node",
                                                                                                 "read-only")
    assert node_token(RAFT_PASSWORD) == tokens.node and len(tokens.node) == 64
    # Without a node certificate on the connection the node token is nobody (a removed node still knows it).
    for header in (None, "", "Bearer", f"Basic {tokens.admin}", f"Bearer {tokens.unknown}", f"Bearer {tokens.node}"):
        with pytest.raises(ApiError) as info:
            authenticate(state, header, node_hash)
        assert info.value.status == 401


def test_a_removed_users_token_no_longer_authenticates(backend, tokens):
    """Removing a user makes its token unknown."""
    backend.box.run("user_remove", name="viewer")
    with pytest.raises(ApiError):
        authenticate(backend.state(), f"Bearer {tokens.reader}", backend.node_token_hash())


def test_roles_are_ranked():
    """An operator may do what read-only may, not what admin may."""
    require(Caller("oper", "operator"), "read-only", "x")
    with pytest.raises(ApiError) as info:
        require(Caller("oper", "operator"), "admin", "node_add")
    assert info.value.status == 403 and "node_add" in info.value.message


def test_verify_reports_a_secondary_short_of_memory_for_failovers(backend):
    """The N+1 check: a secondary that could not take over its primary's instances is reported as Ganeti does."""
    web1 = backend.state().instance_by_name("web1")
    backend.commit(ev.NodeCapacityDetected(web1.secondary, 512, 100_000, 4))
    secondary = backend.state().nodes[web1.secondary].name
    primary = backend.state().nodes[web1.primary].name
    assert views.verify(backend.state()) == [
        f"node {secondary}: not enough memory to accommodate instance failovers should node {primary} fail "
        "(1024MiB needed, 512MiB available)"]


def test_verify_reports_a_disk_copy_that_is_not_uptodate(backend):
    """A replicated disk whose copy is recorded DEGRADED or SYNCING is reported (Ganeti's verify reports a
    degraded DRBD disk); once it is UPTODATE again, nothing is."""
    web1 = backend.state().instance_by_name("web1")
    secondary = backend.state().nodes[web1.secondary].name
    backend.commit(ev.DiskStateObserved(web1.id, 0, web1.secondary, "DEGRADED", 0.0))
    assert views.verify(backend.state()) == [f"instance web1: disk 0 on node {secondary} is DEGRADED; "
                                             "it is being synced again"]
    backend.commit(ev.DiskStateObserved(web1.id, 0, web1.secondary, "SYNCING", 42.0))
    assert views.verify(backend.state()) == [f"instance web1: disk 0 on node {secondary} is SYNCING (42%)"]
    backend.commit(ev.DiskStateObserved(web1.id, 0, web1.secondary, "UPTODATE", 100.0))
    assert views.verify(backend.state()) == []
