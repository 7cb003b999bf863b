"""`cairn cluster|node|job|user|group|tags|events ...` against fake nodes: requests, output, errors, failover."""

import hashlib
import json

import pytest

from appliance.clock import now
from tests.unit.test_client_support import (  # noqa: F401 (cairn and tls are fixtures)
    Cairn, FakeApi, Raw, Reply, Stream, cairn, client_config, job_row, refused_address, tls,
)

CLUSTER = {"name": "c1", "master": "node1", "leader": "node1", "term": 3, "seq": 42, "digest": "ab12",
           "node": "node1", "applied_seq": 42, "enabled_hypervisors": ["kvm"], "modes": []}


def test_cluster_master_prints_one_line(cairn):
    """`cluster master` prints exactly the master's name."""
    cairn.api.routes[("GET", "/api/v1/cluster/master")] = Reply(200, {"master": "node1"})
    result = cairn("cluster", "master")
    assert (result.exit_code, result.stdout) == (0, "node1\n")


def test_cluster_info_json_is_the_cluster_object_and_at_asks_for_a_seq(cairn):
    """`cluster info --output json --at 7` prints the cluster object read with at=7."""
    cairn.api.routes[("GET", "/api/v1/cluster")] = Reply(200, CLUSTER)
    result = cairn("cluster", "info", "--output", "json", "--at", "7")
    assert json.loads(result.stdout) == CLUSTER and cairn.api.requests[0].query == {"at": "7"}


def test_cluster_info_text_has_key_value_lines(cairn):
    """`cluster info` prints Ganeti-style `key: value` lines."""
    cairn.api.routes[("GET", "/api/v1/cluster")] = Reply(200, CLUSTER)
    lines = cairn("cluster", "info").stdout.splitlines()
    assert lines[:3] == ["Cluster name: c1", "Master node: node1", "Raft leader: node1"]
    assert "State digest: ab12" in lines


def test_cluster_verify_prints_problems_and_exits_1(cairn):
    """verify lists each problem as an ERROR line and exits 1 when there is one."""
    cairn.api.routes[("GET", "/api/v1/cluster/verify")] = Reply(200, {"ok": False, "problems": ["node2 is down"]})
    result = cairn("cluster", "verify")
    assert result.exit_code == 1 and "  - ERROR: node2 is down" in result.stdout


def test_queue_drain_and_watcher_pause_submit_cluster_mode(cairn):
    """drain/undrain and watcher pause/continue switch the replicated modes; pause sets an expiry."""
    bodies = cairn.accept_jobs()
    before = now()
    for args in (["queue", "drain"], ["queue", "undrain"], ["watcher", "pause", "1h"], ["watcher", "continue"]):
        assert cairn("cluster", *args).exit_code == 0
    params = [b["operations"][0]["params"] for b in bodies]
    assert params[0] == {"mode": "queue_drained", "on": True} and params[1] == {"mode": "queue_drained", "on": False}
    assert params[2]["mode"] == "watcher_paused" and before + 3600 <= params[2]["until"] <= now() + 3600
    assert params[3] == {"mode": "watcher_paused", "on": False}


def test_queue_info_reads_the_modes(cairn):
    """queue info says whether the drain flag is set, from the cluster's modes."""
    cairn.api.routes[("GET", "/api/v1/cluster")] = Reply(200, {**CLUSTER, "modes": [
        {"mode": "queue_drained", "target": "", "until": None}]})
    assert cairn("cluster", "queue", "info").stdout == "The drain flag is set\n"


def test_cluster_modify_sends_lists_and_intervals(cairn):
    """modify turns comma lists into lists and maps the interval options to the _s fields."""
    bodies = cairn.accept_jobs()
    result = cairn("cluster", "modify", "--enabled-hypervisors", "kvm,fake", "--fencing-interval", "30")
    assert result.exit_code == 0, result.output
    assert bodies[0]["operations"][0] == {"op": "cluster_modify", "params": {
        "enabled_hypervisors": ["kvm", "fake"], "fencing_interval_s": 30}}


def test_node_list_and_modify(cairn):
    """node list prints Ganeti's node table; modify --offline yes sends offline true."""
    cairn.api.routes[("GET", "/api/v1/nodes")] = Reply(200, [{"name": "node1", "dtotal": 2048, "dfree": 1024,
                                                              "mtotal": 4096, "mnode": 300, "mfree": 3000,
                                                              "pinst_cnt": 2, "sinst_cnt": 1,
                                                              "liveness": "alive"}])
    assert cairn("node", "list").stdout.splitlines() == [
        "Node  DTotal DFree MTotal MNode MFree Pinst Sinst Liveness",
        "node1   2.0G  1.0G   4.0G  300M  2.9G     2     1 alive"]
    bodies = cairn.accept_jobs()
    assert cairn("node", "modify", "node1", "--offline", "yes").exit_code == 0
    assert bodies[0]["operations"][0] == {"op": "node_modify", "params": {"node": "node1", "offline": True}}


def test_node_modify_with_a_bad_yes_no_is_a_usage_error(cairn):
    """--offline maybe is refused as a usage error (exit 2) before anything is sent."""
    result = cairn("node", "modify", "node1", "--offline", "maybe")
    assert result.exit_code == 2 and not cairn.api.requests


def test_node_failover_submits_one_failover_job_per_primary_instance(cairn):
    """node failover reads the node's primary instances and fails each over in its own job."""
    cairn.api.routes[("GET", "/api/v1/nodes/node1")] = Reply(200, {"name": "node1", "pinst_list": ["a", "b"]})
    bodies = cairn.accept_jobs()
    result = cairn("node", "failover", "node1", "--submit")
    assert result.stdout == "JobID: 1\nJobID: 2\n"
    assert [b["operations"][0]["params"]["instance"] for b in bodies] == ["a", "b"]
    assert bodies[0]["request_id"] != bodies[1]["request_id"]


def test_node_add_prints_a_join_token_and_migrate_sends_its_op(cairn):
    """node add asks for a join token and prints it alone on stdout; node migrate sends the node."""
    cairn.api.routes[("POST", "/api/v1/nodes/join-tokens")] = Reply(201, {
        "token": "cairn-join-v1.abc", "node": "node4", "address": "10.0.0.4:7001", "expires_at": 2_000_000_000})
    added = cairn("node", "add", "node4", "--address", "10.0.0.4:7001")
    assert added.exit_code == 0 and added.stdout == "cairn-join-v1.abc\n"
    assert "cairn node join TOKEN --address 10.0.0.4:7001" in added.stderr
    assert [r.body for r in cairn.api.seen("POST", "/api/v1/nodes/join-tokens")] == [
        {"node": "node4", "address": "10.0.0.4:7001", "ttl_s": 3600}]
    bodies = cairn.accept_jobs()
    assert cairn("node", "migrate", "node1").exit_code == 0
    assert [b["operations"][0] for b in bodies] == [{"op": "node_migrate", "params": {"node": "node1"}}]


def test_job_list_and_wait_failure(cairn):
    """job list prints ID Status Summary; job wait on a failed job prints `Job N failed:` and exits 1."""
    cairn.api.routes[("GET", "/api/v1/jobs")] = Reply(200, [job_row(9, summary=["INSTANCE_CREATE(web1)"]),
                                                            job_row(10, "running", summary=["NODE_ADD(n4)"])])
    assert cairn("job", "list").stdout.splitlines() == ["ID Status  Summary", " 9 success INSTANCE_CREATE(web1)",
                                                        "10 running NODE_ADD(n4)"]
    assert cairn("job", "list", "--running", "--no-headers").stdout == "10 running NODE_ADD(n4)\n"
    cairn.api.routes[("GET", "/api/v1/jobs/9/wait")] = Reply(200, job_row(9, "error", error_code="wrong_state",
                                                                            error_message="busy"))
    result = cairn("job", "wait", "9")
    assert result.exit_code == 1 and result.stderr.startswith("Job 9 failed: Failure: prerequisites not met")


def test_job_watch_prints_the_log_on_stdout(cairn):
    """job watch prints the job's log lines on stdout and exits 0 when the job succeeded."""
    cairn.api.routes[("GET", "/api/v1/jobs/3/watch")] = Stream([{"log": [None, "adding instance"]}, job_row(3)])
    result = cairn("job", "watch", "3")
    assert result.exit_code == 0 and result.stdout.splitlines()[-1] == "adding instance"


def test_job_cancel_posts_the_cancel(cairn):
    """job cancel POSTs to the job's cancel route."""
    cairn.api.routes[("POST", "/api/v1/jobs/4/cancel")] = Reply(200, {"job": 4})
    assert cairn("job", "cancel", "4").exit_code == 0 and cairn.api.seen("POST", "/api/v1/jobs/4/cancel")


def test_user_add_sends_only_the_hash_and_prints_the_token_once(cairn):
    """user add makes a 256-bit token, sends its SHA-256 and prints the token on its own last line."""
    bodies = cairn.accept_jobs()
    result = cairn("user", "add", "alice", "--role", "operator")
    assert result.exit_code == 0, result.output
    token = result.stdout.splitlines()[-1]
    assert len(token) == 43 and "keep it safe" in result.stdout and result.stdout.count(token) == 1
    assert bodies[0]["operations"][0]["params"] == {
        "name": "alice", "role": "operator", "credential_hash": hashlib.sha256(token.encode()).hexdigest()}
    assert token not in json.dumps(bodies)


def test_group_and_tags_commands_send_their_ops(cairn):
    """group assign-nodes and tags add/remove send their operations' fields."""
    bodies = cairn.accept_jobs()
    for args in (["group", "assign-nodes", "rack2", "node3", "node4"], ["tags", "add", "instance", "web1", "a", "b"],
                 ["tags", "remove", "cluster", "old"]):
        assert cairn(*args).exit_code == 0
    assert [b["operations"][0] for b in bodies] == [
        {"op": "group_assign_nodes", "params": {"group": "rack2", "nodes": ["node3", "node4"]}},
        {"op": "tags_add", "params": {"kind": "instance", "target": "web1", "tags": ["a", "b"]}},
        {"op": "tags_remove", "params": {"kind": "cluster", "tags": ["old"]}}]


def test_events_export_copies_the_clusters_bytes(cairn):
    """events export without --file writes what GET /api/v1/events sends, bytes as they are."""
    cairn.api.routes[("GET", "/api/v1/events")] = Raw([b"\x81\xa1", b"\x00"])
    result = cairn("events", "export", "--format", "cbor", "--since", "5")
    assert result.exit_code == 0 and result.stdout_bytes == b"\x81\xa1\x00"
    assert cairn.api.requests[0].query == {"since": "5", "format": "cbor"}


def test_events_tail_prints_a_line_per_event_and_resumes_after_the_last_seq(cairn):
    """tail prints seq, type, actor and reason, and reconnects with since= the last seq it saw."""
    answers = [Stream([{"seq": 8, "type": "InstanceAdded", "actor": "alice", "reason": "ticket 1"}]),
               Reply(403, {"error": "permission_denied", "message": "stop here"})]
    cairn.api.routes[("GET", "/api/v1/events/tail")] = lambda request: answers.pop(0)
    result = cairn("events", "tail")
    assert result.stdout == "8 InstanceAdded alice ticket 1\n"
    assert [r.query for r in cairn.api.requests] == [{}, {"since": "8"}]


def test_a_refused_token_says_what_to_check(cairn):
    """A 401 answer tells the user to check CAIRN_TOKEN or the config's token, exit 1."""
    cairn.api.token = "another"
    result = cairn("cluster", "master")
    assert result.exit_code == 1 and "did not accept the API token" in result.stderr
    assert "CAIRN_TOKEN" in result.stderr


def test_the_cli_fails_over_to_the_second_node_of_the_config(tls, tmp_path):
    """With the config's first node down, the command is answered by the second."""
    with FakeApi(tls) as api:
        api.routes[("GET", "/api/v1/cluster/master")] = Reply(200, {"master": "node2"})
        run = Cairn(api, client_config(tmp_path, tls, [refused_address(), api.address]))
        result = run("cluster", "master", api=False)
    assert (result.exit_code, result.stdout) == (0, "node2\n")


def test_a_job_is_submitted_once_across_a_failover(tls, tmp_path):
    """A 503 on the first node sends the same job body (same request_id) to the second, and only that."""
    with FakeApi(tls) as first, FakeApi(tls) as second:
        first.routes[("POST", "/api/v1/jobs")] = Reply(503, {"error": "unavailable", "message": "no leader"})
        run = Cairn(second, client_config(tmp_path, tls, [first.address, second.address]))
        bodies = run.accept_jobs()
        result = run("instance", "startup", "web1", "--submit", api=False)
    assert result.stdout == "JobID: 1\n"
    assert first.requests[0].body == bodies[0] and len(bodies) == 1


def test_no_node_answering_is_a_clear_error(tls, tmp_path):
    """When no node answers, the message names each address and says to check the daemons."""
    dead = refused_address()
    with FakeApi(tls) as unused:
        result = Cairn(unused, client_config(tmp_path, tls, [dead]))("node", "list", api=False)
    assert result.exit_code == 1 and f"{dead}: connection refused" in result.stderr and "cairn up" in result.stderr


@pytest.mark.parametrize("args", [["cluster", "master"], ["instance", "startup", "x"]])
def test_no_config_tells_the_user_to_run_cairn_up(tmp_path, args):
    """Without a config the command says to run 'cairn up' or pass --config, exit 1."""
    from typer.testing import CliRunner

    from appliance.cli import app

    runner = CliRunner(env={"XDG_CONFIG_HOME": str(tmp_path), "CAIRN_API": None, "CAIRN_CONFIG": None})
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "cairn up" in result.stderr and "--config" in result.stderr


def test_tags_list_prints_an_objects_tags_one_per_line(cairn):
    """tags list instance NAME prints the instance row's tags, one per line."""
    cairn.api.routes[("GET", "/api/v1/instances/web1")] = Reply(200, {"name": "web1", "tags": ["a", "b"]})
    assert cairn("tags", "list", "instance", "web1").stdout == "a\nb\n"


def test_job_list_with_ids_keeps_their_order(cairn):
    """job list 10 9 prints those jobs in that order."""
    cairn.api.routes[("GET", "/api/v1/jobs")] = Reply(200, [job_row(9), job_row(10)])
    assert cairn("job", "list", "--no-headers", "-o", "id", "10", "9").stdout.split() == ["10", "9"]


def test_recovery_and_maintenance_send_cluster_mode(cairn):
    """recovery disarm/arm and node maintenance on/off submit cluster_mode with the mode and target."""
    bodies = cairn.accept_jobs()
    assert cairn("cluster", "recovery", "disarm").exit_code == 0
    assert cairn("cluster", "recovery", "arm").exit_code == 0
    assert cairn("node", "maintenance", "node2", "on").exit_code == 0
    assert cairn("node", "maintenance", "node2", "off").exit_code == 0
    assert [b["operations"][0]["params"] for b in bodies] == [
        {"mode": "recovery_disarmed", "on": True}, {"mode": "recovery_disarmed", "on": False},
        {"mode": "maintenance", "on": True, "target": "node2"}, {"mode": "maintenance", "on": False, "target": "node2"}]
    assert cairn("node", "maintenance", "node2", "maybe").exit_code == 2


def test_node_evacuate_follows_the_parent_and_its_follow_up_jobs(cairn):
    """node evacuate submits node_evacuate, then follows each follow-up job it names."""
    bodies = cairn.accept_jobs(rows={1: job_row(1, opresult=[{"summary": "2 instance(s)", "jobs": [2, 3]}])})
    result = cairn("node", "evacuate", "node1")
    assert result.exit_code == 0, result.output
    assert bodies[0]["operations"] == [{"op": "node_evacuate", "params": {"node": "node1", "mode": "all"}}]
    assert cairn.api.seen("GET", "/api/v1/jobs/2/watch") and cairn.api.seen("GET", "/api/v1/jobs/3/watch")
    assert "All instances evacuated successfully." in result.stderr


def test_node_evacuate_reports_a_failed_move(cairn):
    """A failed follow-up job makes node evacuate exit 1 naming it."""
    cairn.accept_jobs(rows={1: job_row(1, opresult=[{"summary": "1", "jobs": [2]}]),
                            2: job_row(2, "error", error_code="wrong_state", error_message="node gone")})
    result = cairn("node", "evacuate", "node1", "--secondary-only", "-n", "node4")
    assert result.exit_code == 1 and "There were 1 errors during the evacuation" in result.stderr
    assert "job 2:" in result.stderr and "node gone" in result.stderr


def test_node_evacuate_option_errors(cairn):
    """Both mode flags, -I with -n, or -n without --secondary-only are parameter errors."""
    for args, phrase in ((["-p", "-s"], "Only one of the --primary-only and --secondary-only options"),
                         (["-I", "hail", "-n", "node4", "-s"], "give either -I hail or -n NODE"),
                         (["-n", "node4"], "add --secondary-only")):
        result = cairn("node", "evacuate", "node1", *args)
        assert result.exit_code == 1 and phrase in result.stderr, result.output
    assert not cairn.api.requests
