"""A real 3-node cluster from `cairn up`: instances end to end, migration, failover, export and replay, auth.

One cluster serves the tests of this module (they leave it as they found it:
every node up); the leader-kill tests have their own (test_cluster_failover.py).
"""

import json
import subprocess

import pytest

from tests.integration.cluster_support import LocalCluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()


def instance(cluster, name):
    rows = cluster.json("instance", "list", name)
    assert len(rows) == 1
    return rows[0]


def test_up_gives_three_nodes_and_one_master(cluster):
    """`cairn up` leaves 3 nodes known to every node, one master, and the client configuration 0600."""
    nodes = cluster.json("node", "list")
    assert sorted(n["name"] for n in nodes) == cluster.names()
    masters = [n["name"] for n in nodes if n["master"]]
    assert len(masters) == 1
    out = cluster.run("cluster", "master").stdout
    assert out.splitlines() == masters
    for node in cluster.names():
        assert cluster.master(via=node) == masters[0]
    assert (cluster.directory / "client.toml").stat().st_mode & 0o777 == 0o600
    # Running it again starts nothing and changes nothing.
    again = cluster.up()
    assert "Started" not in again.stderr
    info = cluster.json("cluster", "info")
    assert info["leader"] == masters[0] and info["seq"] > 0 and len(info["digest"]) == 64


def test_instance_lifecycle(cluster):
    """add, list, shutdown, startup, reboot, info, remove: each ends as Ganeti says, on a real process."""
    cluster.run("instance", "add", "-t", "diskless", "-n", "node1", "--no-install", "-B", "memory=128M", "life1")
    row = instance(cluster, "life1")
    assert row["status"] == "running" and row["pnode"] == "node1" and row["be/maxmem"] == 128
    listing = cluster.run("instance", "list").stdout.splitlines()
    assert listing[0].split() == ["Instance", "Hypervisor", "OS", "Primary_node", "Status", "Memory"]
    assert any(line.startswith("life1") and "running" in line for line in listing[1:])
    cluster.run("instance", "shutdown", "life1")
    assert instance(cluster, "life1")["status"] == "ADMIN_down"
    assert instance(cluster, "life1")["oper_ram"] is None
    cluster.run("instance", "startup", "life1")
    assert instance(cluster, "life1")["status"] == "running"
    cluster.run("instance", "reboot", "life1")
    assert instance(cluster, "life1")["status"] == "running"
    info = cluster.json("instance", "info", "life1")
    assert info["name"] == "life1"
    cluster.run("instance", "remove", "-f", "life1")
    assert cluster.json("instance", "list") == [] or all(r["name"] != "life1" for r in cluster.json("instance", "list"))


def test_a_refused_job_says_why_and_exits_1(cluster):
    """An add on an unknown node fails with Ganeti's prerequisite text and exit code 1."""
    result = cluster.run("instance", "add", "-t", "diskless", "-n", "nosuchnode", "--no-install", "bad1",
                         check=False)
    assert result.returncode == 1
    assert "Failure: prerequisites not met for this operation" in result.stderr + result.stdout
    assert "nosuchnode" in result.stderr + result.stdout


def test_submit_prints_the_job_id_and_returns(cluster):
    """--submit prints `JobID: N` and returns at once; job wait then follows it to the end."""
    result = cluster.run("instance", "add", "-t", "diskless", "-n", "node2", "--no-install", "--submit", "sub1")
    line = result.stdout.strip()
    assert line.startswith("JobID: ")
    job = line.split()[1]
    cluster.run("job", "wait", job)
    assert cluster.json("job", "info", job)["status"] == "success"
    assert instance(cluster, "sub1")["status"] == "running"
    cluster.run("instance", "remove", "-f", "sub1")


def test_live_migration_and_failover(cluster):
    """A running replicated instance moves live to its secondary, keeping its memory, then fails over back."""
    cluster.run("instance", "add", "-t", "replicated", "-n", "node1:node2", "-s", "1G", "--no-install", "mig1")
    row = instance(cluster, "mig1")
    assert (row["pnode"], row["snodes"], row["status"]) == ("node1", ["node2"], "running")
    cluster.run("instance", "migrate", "mig1")
    row = instance(cluster, "mig1")
    assert (row["pnode"], row["snodes"], row["status"]) == ("node2", ["node1"], "running")
    cluster.run("instance", "failover", "mig1")
    row = instance(cluster, "mig1")
    assert (row["pnode"], row["snodes"], row["status"]) == ("node1", ["node2"], "running")
    cluster.run("instance", "remove", "-f", "mig1")


def test_reads_after_a_write_on_any_node(cluster):
    """A list right after an add shows the instance, asked of any node (the read barrier)."""
    cluster.run("instance", "add", "-t", "diskless", "-n", "node3", "--no-install", "rd1")
    for node in cluster.names():
        rows = json.loads(cluster.run("instance", "list", "--api", cluster.address(node), "--output", "json",
                                      "rd1").stdout)
        assert rows[0]["name"] == "rd1"
    cluster.run("instance", "remove", "-f", "rd1")


def test_export_replay_and_digest(cluster, tmp_path):
    """A CBOR export of the whole history verifies, and replays to the digest `cluster info --at` reports."""
    export = tmp_path / "history.cbor"
    with export.open("wb") as out:
        subprocess.run([*cluster_cmd(cluster), "events", "export", "--format", "cbor"], stdout=out, check=True,
                       env=cluster.env, timeout=120)
    verify = json.loads(cluster.run("events", "verify", str(export), "--output", "json").stdout)
    assert verify["ok"] and verify["first_seq"] == 1
    replayed = cluster.run("events", "replay", str(export), "--output", "json")
    summary = json.loads(replayed.stdout)
    at = cluster.json("cluster", "info", "--at", str(summary["seq"]))
    assert at["digest"] == summary["digest"]


def cluster_cmd(cluster):
    from tests.integration.cluster_support import CAIRN

    return [CAIRN]


# --- authentication and validation against a real daemon ------------------------------------------

def api_call(cluster, method, path, token=None, body=None, node="node2"):
    """One raw HTTPS request to a node (no client library in between): (status, decoded JSON or text)."""
    import http.client

    from appliance.client.config import resolve_target
    from appliance.client.http import tls_context

    target = resolve_target(config=str(cluster.directory / "client.toml"), environ={})
    host, _, port = cluster.address(node).rpartition(":")
    connection = http.client.HTTPSConnection(host, int(port), timeout=30, context=tls_context(target.ca_pem))
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    payload = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    try:
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, data.decode(errors="replace")


def admin_token(cluster):
    from appliance.client.config import resolve_target

    return resolve_target(config=str(cluster.directory / "client.toml"), environ={}).token


def schema_operations(cluster):
    status, schema = api_call(cluster, "GET", "/api/v1/openapi.json", admin_token(cluster))
    assert status == 200
    for path, methods in schema["paths"].items():
        concrete = path.replace("{id}", "1").replace("{name}", "node1")
        for method in methods:
            yield method.upper(), path, concrete


def test_every_route_refuses_an_unauthenticated_request(cluster):
    """Every route of the OpenAPI schema (the schema and /metrics included) answers 401 without a token."""
    seen = []
    for method, path, concrete in schema_operations(cluster):
        for token in (None, "not-a-token"):
            status, answer = api_call(cluster, method, concrete, token, body=b"{}" if method == "POST" else None)
            assert status == 401, (method, path, token, status, answer)
        seen.append(path)
    assert "/api/v1/openapi.json" in seen and "/metrics" in seen and "/api/v1/jobs" in seen
    assert api_call(cluster, "GET", "/api/v1/openapi.json")[0] == 401


def test_a_read_only_user_is_refused_every_write(cluster):
    """A read-only user reads, and gets 403 on every write route; nothing is submitted."""
    token = cluster.run("user", "add", "--role", "read-only", "viewer").stdout.strip().splitlines()[-1]
    assert api_call(cluster, "GET", "/api/v1/instances", token)[0] == 200
    jobs_before = len(cluster.json("job", "list"))
    writes = [(m, p, c) for m, p, c in schema_operations(cluster) if m in ("POST", "PUT", "PATCH", "DELETE")]
    assert writes
    body = {"operations": [{"op": "instance_startup", "params": {"instance": "x"}}]}
    for method, path, concrete in writes:
        if path.startswith("/api/v1/join"):
            continue   # authenticated by a join token, not by a user
        status, answer = api_call(cluster, method, concrete, token, body=body)
        assert status == 403, (method, path, status, answer)
    assert len(cluster.json("job", "list")) == jobs_before


def test_malformed_bodies_get_4xx_with_a_message(cluster):
    """Bad job bodies are refused with a 4xx and a message that says what is wrong; never a 500."""
    token = admin_token(cluster)
    bad = [b"not json", b"[]", b"{}", {"operations": []}, {"operations": "x"},
           {"operations": [{"op": "no_such_op", "params": {}}]},
           {"operations": [{"op": "instance_startup", "params": {"instance": "x", "bogus": 1}}]},
           {"operations": [{"op": "instance_startup", "params": {"instance": 5}}]},
           {"operations": [{"op": "instance_startup", "params": {"instance": "x"}}], "request_id": 7}]
    for body in bad:
        status, answer = api_call(cluster, "POST", "/api/v1/jobs", token, body=body)
        assert 400 <= status < 500, (body, status, answer)
        assert isinstance(answer, dict) and answer.get("message"), (body, answer)
    assert api_call(cluster, "GET", "/api/v1/cluster?at=notanumber", token)[0] == 400


def test_events_tail_follows_the_live_log_with_who_and_why(cluster):
    """`cairn events tail` prints each new event as it commits, with its actor and reason."""
    import signal as signals
    import time

    from tests.integration.cluster_support import CAIRN

    tail = subprocess.Popen([CAIRN, "events", "tail", "--output", "json"], stdout=subprocess.PIPE, text=True,
                            env=cluster.env)
    try:
        time.sleep(1.0)
        cluster.run("instance", "add", "-t", "diskless", "-n", "node2", "--no-install", "--reason", "tail check",
                    "tail1")
        time.sleep(1.0)
    finally:
        tail.send_signal(signals.SIGINT)
        try:
            out, _ = tail.communicate(timeout=20)
        finally:
            tail.kill()
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    added = [e for e in events if e["name"] == "InstanceAdded"]
    assert added and added[0]["payload"]["name"] == "tail1" and added[0]["actor"] == "admin"
    assert any(e["name"] == "JobSubmitted" and e["reason"] == "tail check" for e in events)
    cluster.run("instance", "remove", "-f", "tail1")


def test_metrics_need_a_token_and_speak_prometheus(cluster):
    """/metrics answers the read-only role with Prometheus text: commit seq, leader, jobs, API latency."""
    assert api_call(cluster, "GET", "/api/v1/cluster", admin_token(cluster))[0] == 200
    status, text = api_call(cluster, "GET", "/metrics", admin_token(cluster))
    assert status == 200
    for name in ("cairn_commit_seq", "cairn_applied_seq", "cairn_is_leader", "cairn_term", "cairn_jobs",
                 "cairn_api_request_seconds_bucket"):
        assert f"\n{name}" in "\n" + text, name
