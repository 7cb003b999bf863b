"""The API's routes served for real (hypercorn over TLS on 127.0.0.1) and called with http.client, as the CLI does."""

import json

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from appliance import eventfile
from appliance.api.app import build_app
from appliance.api.backend import Refused, Unavailable
from appliance.api.server import serve_api
from appliance.model import events as ev
from tests.unit.api_support import Caller
from tests.unit.api_support import backend, tls, tokens  # noqa: F401 (fixtures)

STARTUP = {"operations": [{"op": "instance_startup", "params": {"instance": "web2"}}]}


@pytest.fixture
async def api(backend, tls, nursery):
    shutdown = trio.Event()
    addresses = await nursery.start(serve_api, build_app(backend, shutdown), "127.0.0.1:0", tls.server_context(),
                                    None, shutdown)
    yield Caller(int(addresses[0].rsplit(":", 1)[1]), tls.client_context())
    shutdown.set()


def schema_of(backend) -> dict:
    return json.loads(build_app(backend).state.schema)


def schema_routes(backend) -> list[tuple[str, str]]:
    return [(method.upper(), path) for path, methods in schema_of(backend)["paths"].items() for method in methods]


def concrete(path: str) -> str:
    return path.replace("{name}", "web1").replace("{id}", "1")


def assert_error(answer, status: int, code: str) -> None:
    assert answer.status == status, answer.body
    found = answer.json()
    assert found["error"] == code and found["message"], found


# --- the route table and the schema ---------------------------------------------

def test_every_route_of_the_app_is_in_the_schema(backend):
    """The OpenAPI document lists exactly the routes the app serves."""
    app = build_app(backend)
    served = sorted((method, route.path) for route in app.routes for method in route.methods if method != "HEAD")
    assert served == sorted(schema_routes(backend))
    assert ("POST", "/api/v1/jobs") in served and ("GET", "/metrics") in served


def test_schema_has_one_job_body_schema_per_operation(backend):
    """Each operation's params schema lists its fields and which are required."""
    schemas = schema_of(backend)["components"]["schemas"]
    params = schemas["op.instance_add"]["properties"]["params"]
    assert params["required"] == ["name", "disk_template", "os"]  # the nodes, or an iallocator (-I) to choose them
    assert params["properties"]["memory_mib"] == {"type": "integer", "default": 512}
    assert schemas["op.node_modify"]["properties"]["params"]["properties"]["offline"]["type"] == ["boolean", "null"]


# --- authentication and roles ---------------------------------------------------------

async def test_every_route_refuses_an_unauthenticated_request(api, backend, tokens):
    """No token, or one the cluster does not know, gets 401 on every route of the schema."""
    for method, path in schema_routes(backend):
        answer = await api(method, concrete(path))
        assert_error(answer, 401, "unauthenticated")
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert_error(await api(method, concrete(path), tokens.unknown, STARTUP), 401, "unauthenticated")
    assert backend.submitted == [] and backend.canceled == []


async def test_read_only_user_is_refused_every_write_route(api, backend, tokens):
    """A read-only user (and the node token) gets 403 on every POST, and nothing reaches the backend."""
    backend.commit(ev.JobSubmitted(({"op": "instance_startup", "params": {"instance": "web2"}},), ""))
    # The join routes are authenticated by a join token, not a user: a user's token means nothing there.
    writes = [(method, path) for method, path in schema_routes(backend)
              if method != "GET" and not path.startswith(("/api/v1/join", "/api/v1/node/")) and path != "/api/v1/lease"]
    assert len(writes) == 3
    for token in (tokens.reader, tokens.node):
        for method, path in writes:
            assert_error(await api(method, concrete(path), token, STARTUP), 403, "permission_denied")
    assert backend.submitted == [] and backend.canceled == []


async def test_join_routes_need_an_open_join_token(api, backend, tokens):
    """The join routes refuse a missing, malformed or unknown join token with 401, whatever bearer comes along."""
    for token in (None, tokens.admin):
        assert_error(await api("POST", "/api/v1/join/ca", token, {"token_hash": "ab" * 32}), 401, "unauthenticated")
        assert_error(await api("POST", "/api/v1/join", token, {"token": "cairn-join-v1.x"}), 401, "unauthenticated")


async def test_operator_is_refused_an_admin_operation(api, backend, tokens):
    """A job with one operation above the caller's role is refused whole, before anything is proposed."""
    body = {"operations": [STARTUP["operations"][0], {"op": "node_remove", "params": {"node": "n3.example.com"}}]}
    answer = await api("POST", "/api/v1/jobs", tokens.operator, body)
    assert_error(answer, 403, "permission_denied")
    assert "node_remove" in answer.json()["message"] and backend.submitted == []


async def test_users_are_listed_to_admins_only(api, tokens):
    """GET /users needs the admin role."""
    assert_error(await api("GET", "/api/v1/users", tokens.operator), 403, "permission_denied")
    answer = await api("GET", "/api/v1/users", tokens.admin)
    assert [user["name"] for user in answer.json()] == ["admin", "oper", "viewer"]


async def test_node_token_reads(api, tokens):
    """Members read each other's state with the node token."""
    answer = await api("GET", "/api/v1/status", tokens.node)
    assert answer.status == 200 and answer.json()["leader"] == "n1.example.com"


async def test_only_members_start_or_end_a_migration_destination(api, backend, tokens):
    """The data-plane routes of a live migration answer a member (node token) only; a user, even an admin, gets
    403 and nothing reaches the backend; a refusal of the backend comes back with its reason."""
    body = {"instance": "i-1", "hypervisor": "kvm", "runtime": {"argv": ["qemu"]}}
    for token in (tokens.reader, tokens.admin):
        assert_error(await api("POST", "/api/v1/node/incoming", token, body), 403, "permission_denied")
        assert_error(await api("POST", "/api/v1/node/incoming/abort", token, body), 403, "permission_denied")
    assert getattr(backend, "incoming", []) == []
    assert_error(await api("POST", "/api/v1/node/incoming", tokens.node, {"instance": "i-1"}), 400, "wrong_input")
    answer = await api("POST", "/api/v1/node/incoming", tokens.node, body)
    assert answer.status == 200 and answer.json() == {"uri": "tcp:127.0.0.1:4444"}
    answer = await api("POST", "/api/v1/node/incoming/abort", tokens.node, {"instance": "i-1", "hypervisor": "kvm"})
    assert answer.status == 200
    assert backend.incoming == [("accept", "i-1", "kvm", {"argv": ["qemu"]}), ("abort", "i-1", "kvm", None)]
    refused = await api("POST", "/api/v1/node/incoming", tokens.node, {**body, "hypervisor": "xen"})
    assert_error(refused, 409, "wrong_state")
    assert "xen" in refused.json()["message"]


async def test_only_members_ask_for_leases(api, backend, tokens):
    """POST /lease answers a member (node token) with the backend's grant; a user, even an admin, gets 403, and a
    body without the member's applied seq and running count gets 400 naming the fields."""
    body = {"node": "n2.example.com", "applied_seq": 7, "running": 0}
    for token in (tokens.reader, tokens.admin):
        assert_error(await api("POST", "/api/v1/lease", token, body), 403, "permission_denied")
    assert getattr(backend, "leases", []) == []
    assert_error(await api("POST", "/api/v1/lease", tokens.node, {"node": "n2.example.com"}), 400, "wrong_input")
    answer = await api("POST", "/api/v1/lease", tokens.node, body)
    assert answer.status == 200 and answer.json()["granted"] is True and answer.json()["lease_s"] == 5
    assert backend.leases == [("n2.example.com", body)]


async def test_node_rows_carry_the_leaders_liveness(api, tokens):
    """Node rows (list and one) say each node's liveness as the leader sees it, with its lease age."""
    rows = (await api("GET", "/api/v1/nodes", tokens.reader)).json()
    assert rows and all(row["liveness"] == "alive" and row["lease_age_s"] == 0.2 for row in rows)
    one = (await api("GET", f"/api/v1/nodes/{rows[0]['name']}", tokens.reader)).json()
    assert one["liveness"] == "alive"


# --- jobs ---------------------------------------------------------------------------

async def test_submitted_job_reaches_the_backend_as_the_caller(api, backend, tokens):
    """POST /jobs answers 201 with the job id; the backend got the operations with the caller as actor."""
    body = {**STARTUP, "reason": "maintenance over", "request_id": "req-1"}
    answer = await api("POST", "/api/v1/jobs", tokens.operator, body)
    assert (answer.status, answer.json()) == (201, {"job": 1})
    assert backend.submitted == [{"operations": [{"op": "instance_startup", "params": {"instance": "web2"}}],
                                  "actor": "oper", "reason": "maintenance over", "request_id": "req-1"}]
    row = (await api("GET", "/api/v1/jobs/1", tokens.reader)).json()
    assert (row["actor"], row["summary"], row["request_id"]) == ("oper", ["INSTANCE_STARTUP"], "req-1")


async def test_submitted_params_are_frozen_like_committed_ones(api, backend, tokens):
    """Lists in params reach the backend as tuples, as decoding the committed job would give them."""
    body = {"operations": [{"op": "tags_add", "params": {"kind": "instance", "target": "web1", "tags": ["a", "b"]}}]}
    assert (await api("POST", "/api/v1/jobs", tokens.operator, body)).status == 201
    assert backend.submitted[0]["operations"][0]["params"]["tags"] == ("a", "b")


MALFORMED = [
    pytest.param(b"not json", id="not-json"),
    pytest.param(b"\xff\xfe{", id="not-utf8"),
    pytest.param(b"[" * 100_000, id="deeply-nested"),
    pytest.param(json.dumps([STARTUP]).encode(), id="array"),
    pytest.param(b"{}", id="no-operations"),
    pytest.param(b'{"operations": []}', id="empty-operations"),
    pytest.param(b'{"operations": {"op": "instance_startup"}}', id="operations-not-list"),
    pytest.param(json.dumps({**STARTUP, "extra": 1}).encode(), id="unknown-body-field"),
    pytest.param(b'{"operations": [{"op": "nope", "params": {}}]}', id="unknown-op"),
    pytest.param(b'{"operations": [{"op": 5, "params": {}}]}', id="op-not-string"),
    pytest.param(b'{"operations": [{"op": "instance_startup", "params": []}]}', id="params-not-object"),
    pytest.param(b'{"operations": [{"op": "instance_startup"}]}', id="params-missing"),
    pytest.param(b'{"operations": ["instance_startup"]}', id="operation-not-object"),
    pytest.param(b'{"operations": [{"op": "instance_startup", "params": {"instance": "web2", "bogus": 1}}]}',
                 id="unknown-param"),
    pytest.param(b'{"operations": [{"op": "instance_startup", "params": {}}]}', id="missing-param"),
    pytest.param(b'{"operations": [{"op": "instance_startup", "params": {"instance": "w", "timeout_s": "x"}}]}',
                 id="param-wrong-type"),
    pytest.param(b'{"operations": [{"op": "instance_startup", "params": {"instance": "w", "timeout_s": true}}]}',
                 id="param-bool-for-int"),
    pytest.param(json.dumps({**STARTUP, "request_id": 5}).encode(), id="request-id-not-string"),
    pytest.param(json.dumps({**STARTUP, "reason": ["x"]}).encode(), id="reason-not-string"),
    pytest.param(json.dumps({**STARTUP, "request_id": "x" * 1000}).encode(), id="request-id-too-long"),
]


@pytest.mark.parametrize("raw", MALFORMED)
async def test_malformed_job_body_is_refused_with_400(api, backend, tokens, raw):
    """A malformed job body gets 400 with a message saying what is wrong, never a 500, and submits nothing."""
    assert_error(await api("POST", "/api/v1/jobs", tokens.admin, raw=raw), 400, "wrong_input")
    assert backend.submitted == []


async def test_oversized_body_is_refused(api, backend, tokens):
    """A body over the limit is refused with a JSON error, not read whole."""
    def post_declaring_a_large_body():
        connection = api.connection()
        try:
            connection.request("POST", "/api/v1/jobs", body=b"{}", headers={
                "Authorization": f"Bearer {tokens.admin}", "Content-Length": str(2 << 20)})
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    status, answer = await trio.to_thread.run_sync(post_declaring_a_large_body)
    assert status == 413 and "larger than" in answer["message"]
    assert backend.submitted == []


@pytest.mark.parametrize(("refusal", "status"), [
    (Refused("queue_drained", "The job queue is drained"), 422),
    (Refused("already_exists", "exists"), 409),
    (Refused("wrong_input", "bad"), 400),
    (Unavailable("no leader"), 503),
])
async def test_backend_refusals_map_to_statuses(api, backend, tokens, refusal, status):
    """A refusal of the backend keeps its code and message and gets the status of docs/api.md."""
    backend.refusal = refusal
    answer = await api("POST", "/api/v1/jobs", tokens.operator, STARTUP)
    assert answer.status == status and answer.json()["message"]


async def test_cancel_reaches_the_backend_as_the_caller(api, backend, tokens):
    """POST /jobs/ID/cancel asks the backend to cancel, as the operator who asked."""
    job = (await api("POST", "/api/v1/jobs", tokens.operator, STARTUP)).json()["job"]
    answer = await api("POST", f"/api/v1/jobs/{job}/cancel", tokens.operator)
    assert (answer.status, answer.json(), backend.canceled) == (200, {"job": job}, [(job, "oper")])
    assert_error(await api("POST", "/api/v1/jobs/99/cancel", tokens.operator), 404, "unknown_entity")


async def test_watch_streams_log_lines_then_the_job_row(api, backend, tokens):
    """The watch stream sends each log line as it commits and ends with the finished job's row."""
    job = (await api("POST", "/api/v1/jobs", tokens.operator, STARTUP)).json()["job"]
    backend.commit(ev.JobProgressed(job, 0, 0, "starting web2"))
    async with trio.open_nursery() as nursery:
        answers = []

        async def watch():
            answers.append(await api("GET", f"/api/v1/jobs/{job}/watch", tokens.reader))

        nursery.start_soon(watch)
        await trio.sleep(0.2)
        backend.commit(ev.JobProgressed(job, 0, 1, "web2 runs"))
        backend.commit(ev.JobSucceeded(job, (None,)))
    lines = answers[0].lines()
    assert [line.get("message") for line in lines[:2]] == ["starting web2", "web2 runs"]
    assert (lines[2]["id"], lines[2]["status"], len(lines)) == (job, "success", 3)


async def test_wait_answers_the_row_once_the_job_ended(api, backend, tokens):
    """GET /jobs/ID/wait answers when the job ends, and 503 when it is still running at the timeout."""
    job = (await api("POST", "/api/v1/jobs", tokens.operator, STARTUP)).json()["job"]
    assert_error(await api("GET", f"/api/v1/jobs/{job}/wait?timeout_s=0.1", tokens.reader), 503, "unavailable")
    async with trio.open_nursery() as nursery:
        answers = []

        async def wait():
            answers.append(await api("GET", f"/api/v1/jobs/{job}/wait?timeout_s=5", tokens.reader))

        nursery.start_soon(wait)
        await trio.sleep(0.1)
        backend.commit(ev.JobFailed(job, "wrong_state", "web2 cannot start"))
    assert answers[0].json()["error_message"] == "web2 cannot start"


# --- reads ----------------------------------------------------------------------------

async def test_reads_wait_for_the_barrier_and_say_their_seq(api, backend, tokens):
    """A read passes the barrier and carries X-Cairn-Seq; ?stale=1 skips the barrier."""
    answer = await api("GET", "/api/v1/nodes", tokens.reader)
    assert [row["name"] for row in answer.json()] == ["n1.example.com", "n2.example.com", "n3.example.com"]
    assert (answer.headers["x-cairn-seq"], backend.barriers) == (str(backend.state().seq), 1)
    answer = await api("GET", "/api/v1/instances/web1?stale=1", tokens.reader)
    assert (answer.json()["status"], backend.barriers) == ("running", 1)


async def test_a_node_that_cannot_catch_up_answers_503(api, backend, tokens):
    """When the barrier fails the read gets 503, unless it asked for a stale answer."""
    backend.unavailable = "this node is behind"
    assert_error(await api("GET", "/api/v1/instances", tokens.reader), 503, "unavailable")
    assert (await api("GET", "/api/v1/instances?stale=1", tokens.reader)).status == 200


@pytest.mark.parametrize("path", [
    "/api/v1/events?since=abc", "/api/v1/events?since=-1", "/api/v1/events?format=xml", "/api/v1/jobs/abc",
    "/api/v1/jobs/1/wait?timeout_s=0", "/api/v1/jobs/1/wait?timeout_s=nan", "/api/v1/cluster?at=x",
    "/api/v1/cluster?at=9999", "/api/v1/jobs?status=bogus", "/api/v1/nodes?stale=maybe", "/api/v1/nodes?nmes=a",
])
async def test_bad_query_or_path_values_get_400(api, tokens, path):
    """A value that is not what the route takes is a 400 naming it, never a 500."""
    assert_error(await api("GET", path, tokens.reader), 400, "wrong_input")


async def test_unknown_routes_and_entities_get_404(api, tokens):
    """An unknown route, node, instance or job is a JSON 404; a wrong method a JSON 405."""
    assert_error(await api("GET", "/api/v1/nope", tokens.reader), 404, "not_found")
    assert_error(await api("GET", "/api/v1/nodes/nope", tokens.reader), 404, "unknown_entity")
    assert_error(await api("GET", "/api/v1/instances?names=web1,nope", tokens.reader), 404, "unknown_entity")
    assert_error(await api("GET", "/api/v1/jobs/99", tokens.reader), 404, "unknown_entity")
    assert_error(await api("DELETE", "/api/v1/jobs", tokens.admin), 405, "method_not_allowed")


async def test_cluster_can_be_read_at_a_past_seq(api, backend, tokens):
    """GET /cluster?at=SEQ answers the state replayed to that seq."""
    now = (await api("GET", "/api/v1/cluster", tokens.reader)).json()
    past = (await api("GET", "/api/v1/cluster?at=5", tokens.reader)).json()
    assert (now["node_count"], now["at"], now["digest"]) == (3, None, backend.state().digest())
    assert (past["seq"], past["node_count"], past["at"]) == (5, 2, 5)


async def test_cluster_htools_is_the_allocators_text_of_the_state(api, backend, tokens):
    """The htools route answers the text appliance.allocator writes for the node's state."""
    from appliance.allocator import htools_text

    answer = (await api("GET", "/api/v1/cluster/htools", tokens.reader)).json()
    assert answer["text"] == htools_text(backend.state()) and "web1" in answer["text"]


async def test_cluster_verify_and_master(api, tokens):
    """The verify route finds a sound cluster sound; the master route names the leader's node."""
    assert (await api("GET", "/api/v1/cluster/verify", tokens.reader)).json()["ok"] is True
    assert (await api("GET", "/api/v1/cluster/master", tokens.reader)).json() == {"master": "n1.example.com"}
    groups = (await api("GET", "/api/v1/groups", tokens.reader)).json()
    assert groups == [{"name": "default", "node_cnt": 3, "pinst_cnt": 2, "tags": []}]


# --- events -------------------------------------------------------------------------------

async def test_event_history_redacts_credentials_for_non_admins(api, backend, tokens):
    """Event lines hide credential hashes from an operator and show them to an admin."""
    seen = {}
    for name in ("operator", "admin"):
        lines = (await api("GET", "/api/v1/events", getattr(tokens, name))).lines()
        assert [line["seq"] for line in lines] == list(range(1, len(backend.history) + 1))
        seen[name] = {line["payload"]["credential_hash"] for line in lines if line["name"] == "CredentialAdded"}
    assert seen["operator"] == {"<redacted>"}
    assert len(seen["admin"]) == 3 and all(len(digest) == 64 for digest in seen["admin"])


async def test_event_history_starts_after_since(api, backend, tokens):
    """?since=SEQ gives the records after SEQ."""
    lines = (await api("GET", "/api/v1/events?since=10", tokens.reader)).lines()
    assert lines[0]["seq"] == 11 and lines[-1]["seq"] == len(backend.history)
    assert (await api("GET", "/api/v1/events?since=999", tokens.reader)).lines() == []


async def test_cbor_export_is_a_verifiable_record_stream(api, backend, tokens, tmp_path):
    """The CBOR export is the sealed record format, so `cairn events verify` checks a saved copy."""
    for since in (0, 5):
        answer = await api("GET", f"/api/v1/events?format=cbor&since={since}", tokens.reader)
        saved = tmp_path / f"export-{since}.events"
        saved.write_bytes(answer.body)
        summary = eventfile.verify(saved)
        assert (summary.count, summary.last_seq) == (len(backend.history) - since, len(backend.history))


async def test_tail_follows_the_live_log(api, backend, tokens):
    """The tail stream sends each event as it commits, after the seq read when it started."""
    def read_two_lines():
        connection = api.connection()
        try:
            connection.request("GET", "/api/v1/events/tail", headers={"Authorization": f"Bearer {tokens.reader}"})
            response = connection.getresponse()
            return [json.loads(response.readline()) for _ in range(2)]
        finally:
            connection.close()

    async with trio.open_nursery() as nursery:
        lines = []

        async def tail():
            lines.extend(await trio.to_thread.run_sync(read_two_lines))

        nursery.start_soon(tail)
        await trio.sleep(0.2)
        head = backend.state().seq
        backend.commit(ev.TagsAdded("cluster", "", ("a",)))
        backend.commit(ev.TagsAdded("cluster", "", ("b",)))
    assert [(line["seq"], line["name"]) for line in lines] == [(head + 1, "TagsAdded"), (head + 2, "TagsAdded")]


# --- metrics ---------------------------------------------------------------------------

async def test_metrics_are_prometheus_text(api, backend, tokens):
    """/metrics parses as Prometheus text, with the log, job, instance and request series."""
    await api("GET", "/api/v1/nodes", tokens.reader)
    answer = await api("GET", "/metrics", tokens.reader)
    families = {family.name: family for family in text_string_to_metric_families(answer.body.decode())}
    for name in ("cairn_commit_seq", "cairn_applied_seq", "cairn_apply_lag", "cairn_is_leader", "cairn_term",
                 "cairn_jobs", "cairn_instances", "cairn_api_request_seconds"):
        assert name in families, sorted(families)
    running = [s.value for s in families["cairn_instances"].samples if s.labels["status"] == "running"]
    assert running == [1.0]
    routes = {s.labels.get("route") for s in families["cairn_api_request_seconds"].samples}
    assert "/api/v1/nodes" in routes
