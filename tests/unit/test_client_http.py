"""The API client against real HTTPS servers in threads: answers, keep-alive, failover, errors, streams, TLS."""

import pytest

from appliance.client.http import ApiError, Client, Unreachable
from appliance.client.jobs import follow, job_body, submit
from tests.unit.test_client_support import (
    TOKEN, FakeApi, Raw, Reply, Stream, Tls, job_row, refused_address, tls,  # noqa: F401 (tls is a fixture)
)


def make_client(tls, *addresses, **kwargs) -> Client:
    return Client(list(addresses), tls.ca_pem, TOKEN, **kwargs)


def test_get_returns_the_status_and_json_and_sends_the_token(tls):
    """A GET answers (status, decoded JSON), carries the bearer token and records X-Cairn-Seq."""
    with FakeApi(tls) as api:
        api.routes[("GET", "/api/v1/cluster/master")] = Reply(200, {"master": "node1"}, {"X-Cairn-Seq": "42"})
        with make_client(tls, api.address) as client:
            assert client.get("/api/v1/cluster/master") == (200, {"master": "node1"})
            assert client.last_seq == 42
    assert api.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_query_arguments_drop_none_and_write_booleans_as_1(tls):
    """Query values of None are left out and True is sent as 1."""
    with FakeApi(tls) as api:
        api.routes[("GET", "/api/v1/cluster")] = Reply(200, {})
        with make_client(tls, api.address) as client:
            client.get("/api/v1/cluster", at=None, stale=True)
    assert api.requests[0].query == {"stale": "1"}


def test_calls_reuse_one_connection(tls):
    """Two calls go over the same kept-alive connection (same client port)."""
    with FakeApi(tls) as api:
        api.routes[("GET", "/api/v1/nodes")] = Reply(200, [])
        with make_client(tls, api.address) as client:
            client.get("/api/v1/nodes")
            client.get("/api/v1/nodes")
    assert api.requests[0].peer == api.requests[1].peer


def test_a_connection_the_server_closed_is_replaced_transparently(tls):
    """When the node closed the idle kept-alive connection, the next call opens a new one and succeeds."""
    with FakeApi(tls) as api:
        api.routes[("GET", "/api/v1/nodes")] = Reply(200, [], close_after=True)
        with make_client(tls, api.address) as client:
            client.get("/api/v1/nodes")
            assert client.get("/api/v1/nodes") == (200, [])
    assert len(api.requests) == 2


def test_a_refused_connection_fails_over_to_the_next_node_and_sticks_to_it(tls):
    """The first address refuses; the second answers, and later calls go to it first."""
    dead = refused_address()
    with FakeApi(tls) as api:
        api.routes[("GET", "/api/v1/cluster/master")] = Reply(200, {"master": "node2"})
        with make_client(tls, dead, api.address) as client:
            assert client.get("/api/v1/cluster/master")[1] == {"master": "node2"}
            assert client.answered_by == api.address
            client.get("/api/v1/cluster/master")
            assert client.endpoints[client._current] == api.address


def test_503_tries_the_next_node(tls):
    """A node answering 503 (no quorum) is skipped for the next one."""
    with FakeApi(tls) as first, FakeApi(tls) as second:
        first.routes[("GET", "/api/v1/nodes")] = Reply(503, {"error": "unavailable", "message": "no leader"})
        second.routes[("GET", "/api/v1/nodes")] = Reply(200, [{"name": "node1"}])
        with make_client(tls, first.address, second.address) as client:
            assert client.get("/api/v1/nodes") == (200, [{"name": "node1"}])
    assert len(first.requests) == 1 and len(second.requests) == 1


def test_no_node_answering_names_each_node_and_why(tls):
    """When every node refuses or answers 503, Unreachable says what each did."""
    dead = refused_address()
    with FakeApi(tls) as busy:
        busy.routes[("GET", "/api/v1/nodes")] = Reply(503, {"error": "unavailable", "message": "catching up"})
        with make_client(tls, dead, busy.address) as client:
            with pytest.raises(Unreachable) as caught:
                client.get("/api/v1/nodes")
    assert f"{dead}: connection refused" in caught.value.message
    assert f"{busy.address}: catching up" in caught.value.message
    assert caught.value.answered == 1


def test_401_is_an_error_at_once_without_trying_other_nodes(tls):
    """A refused token is the cluster's answer: ApiError 401 unauthenticated, the next node is not asked."""
    with FakeApi(tls, token="another") as first, FakeApi(tls) as second:
        with make_client(tls, first.address, second.address) as client:
            with pytest.raises(ApiError) as caught:
                client.get("/api/v1/nodes")
    assert (caught.value.status, caught.value.code) == (401, "unauthenticated")
    assert not second.requests


def test_an_error_answer_carries_the_code_and_message(tls):
    """A 404 with the API's error JSON becomes ApiError(404, code, message)."""
    with FakeApi(tls) as api:
        api.routes[("GET", "/api/v1/instances/x")] = Reply(404, {"error": "unknown_entity",
                                                                 "message": "Instance 'x' not known"})
        with make_client(tls, api.address) as client:
            with pytest.raises(ApiError) as caught:
                client.get("/api/v1/instances/x")
    assert (caught.value.status, caught.value.code, caught.value.message) == (404, "unknown_entity",
                                                                              "Instance 'x' not known")


def test_a_job_retried_on_another_node_keeps_its_request_id(tls):
    """After a 503, the job body goes to the next node unchanged: the same request_id, so it is submitted once."""
    with FakeApi(tls) as first, FakeApi(tls) as second:
        first.routes[("POST", "/api/v1/jobs")] = Reply(503, {"error": "unavailable", "message": "election"})
        second.routes[("POST", "/api/v1/jobs")] = Reply(201, {"job": 7})
        with make_client(tls, first.address, second.address) as client:
            assert submit(client, [{"op": "instance_startup", "params": {"instance": "web1"}}], "test") == 7
    sent = [first.requests[0].body, second.requests[0].body]
    assert sent[0] == sent[1] and len(sent[0]["request_id"]) == 16 and sent[0]["reason"] == "test"


def test_job_bodies_get_fresh_request_ids():
    """Two job bodies never share a request id."""
    assert job_body([])["request_id"] != job_body([])["request_id"]


def test_stream_yields_each_ndjson_line_and_raw_yields_the_bytes(tls):
    """stream() decodes NDJSON lines as they come; raw() passes the bytes through."""
    with FakeApi(tls) as api:
        api.routes[("GET", "/api/v1/events/tail")] = Stream([{"seq": 1}, {"seq": 2}])
        api.routes[("GET", "/api/v1/events")] = Raw([b"\x81\x00", b"\xff"])
        api.routes[("GET", "/api/v1/status")] = Reply(200, {"node": "node1"})
        with make_client(tls, api.address) as client:
            assert list(client.stream("/api/v1/events/tail")) == [{"seq": 1}, {"seq": 2}]
            assert b"".join(client.raw("/api/v1/events", format="cbor")) == b"\x81\x00\xff"
            assert client.get("/api/v1/status")[1] == {"node": "node1"}  # the connection is still usable
    assert len({request.peer for request in api.requests}) == 1


def test_follow_shows_the_log_and_returns_the_final_row(tls):
    """follow() hands each log line to the caller and returns the job row the watch ends with."""
    with FakeApi(tls) as api:
        api.routes[("GET", "/api/v1/jobs/5/watch")] = Stream([[1.0, "one"], {"log": [2.0, "two"]}, job_row(5)])
        with make_client(tls, api.address) as client:
            lines = []
            row = follow(client, 5, lambda ts, message: lines.append((ts, message)))
    assert lines == [(1.0, "one"), (2.0, "two")] and row["status"] == "success"


def test_follow_resumes_on_the_job_row_when_the_stream_ends_early(tls):
    """A watch that ends without the row: the job row is read, and only the log lines not yet shown are shown."""
    with FakeApi(tls) as api:
        api.routes[("GET", "/api/v1/jobs/5/watch")] = Stream([[1.0, "one"]])
        api.routes[("GET", "/api/v1/jobs/5")] = Reply(200, job_row(5, oplog=[[1.0, "one"], [2.0, "two"]]))
        with make_client(tls, api.address) as client:
            lines = []
            follow(client, 5, lambda ts, message: lines.append(message))
    assert lines == ["one", "two"]


def test_a_certificate_from_another_ca_is_not_trusted(tls, tmp_path):
    """A node whose certificate another CA signed does not answer for this client: the reason names the CA."""
    stranger = Tls(tmp_path / "other", "other")
    with FakeApi(stranger) as api:
        with make_client(tls, api.address) as client:
            with pytest.raises(Unreachable) as caught:
                client.get("/api/v1/nodes")
    assert "not trusted" in caught.value.message


def test_the_unix_socket_speaks_plain_http(tmp_path):
    """With a socket path, the client calls the local node over AF_UNIX, token and all."""
    path = str(tmp_path / "api.sock")
    with FakeApi(socket_path=path) as api:
        api.routes[("GET", "/api/v1/cluster/master")] = Reply(200, {"master": "node1"})
        with Client([], None, TOKEN, socket_path=path) as client:
            assert client.get("/api/v1/cluster/master") == (200, {"master": "node1"})
    assert api.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_a_ca_that_is_not_pem_is_refused_when_the_client_is_made():
    """A broken CA in the config is reported as such, not as every node failing."""
    with pytest.raises(ValueError, match="not a usable PEM certificate"):
        Client(["127.0.0.1:7001"], "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n", TOKEN)


def test_wait_asks_again_while_the_server_says_the_job_still_runs(tls):
    """GET .../wait answered 503 (still running) is asked again until the job row comes."""
    from appliance.client.jobs import wait

    answers = [Reply(503, {"error": "unavailable", "message": "job 3 still running"}), Reply(200, job_row(3))]
    with FakeApi(tls) as api:
        api.routes[("GET", "/api/v1/jobs/3/wait")] = lambda request: answers.pop(0)
        with make_client(tls, api.address) as client:
            assert wait(client, 3)["status"] == "success"
    assert int(api.requests[0].query["timeout_s"]) < client.timeout_s
