"""The native API's routes: `build_app(backend)` makes the Starlette app every daemon serves (docs/api.md).

Every endpoint is a plain async function behind one wrapper that
authenticates the bearer token, checks the route's role, refuses unknown
query parameters and turns refusals into JSON errors, so a bad request never
gets a 500. Reads wait for the backend's ReadIndex barrier unless `?stale=1`
and say the seq they were read at in `X-Cairn-Seq`. The route table is data
(`schema.Endpoint`); the OpenAPI document is generated from the same table.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route, websocket_session
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from appliance.api import views
from appliance.api.auth import NODE_ACTOR, ApiError, Caller, authenticate, require
from appliance.api.backend import Refused, Unavailable
from appliance.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, ApiMetrics, RequestTimer
from appliance.api.server import PEER_SERIAL
from appliance.api.schema import (
    MEDIA_JSON, MEDIA_NDJSON, MEDIA_PROMETHEUS, MEDIA_RECORDS, Endpoint, Query, fits, openapi, params_schema,
)
from appliance.api.streams import LiveStream, event_chunks, ndjson_line, record_frames
from appliance.model import codec
from appliance.model.errors import PrereqError
from appliance.model.state import JOB_FINISHED, ClusterState
from ops import base, registry

API = "/api/v1"
MAX_BODY_BYTES = 1 << 20
WAIT_DEFAULT_S = 60.0
WAIT_MAX_S = 3600.0
MAX_REQUEST_ID = 200
MAX_REASON = 4096
EVENT_FORMATS = ("jsonl", "cbor")
JOIN_ROLE = "join-token"
DEFAULT_JOIN_TTL_S = 3600
MAX_JOIN_TTL_S = 7 * 86400
CONSOLE_PATH = f"{API}/instances/{{name}}/console"
CONSOLE_MESSAGE_BYTES = 64 * 1024    # the most a console client may send at once (a paste); 1009 beyond
CONSOLE_READ_BYTES = 16 * 1024       # the most console output sent in one message
CLOSE_REASON_BYTES = 123             # what a WebSocket close frame holds
STATUS_BY_CODE = {"wrong_input": 400, "unauthenticated": 401, "permission_denied": 403, "unknown_entity": 404,
                  "not_found": 404, "already_exists": 409, "wrong_state": 409, "unavailable": 503}
REFUSAL_STATUS = 422
# Every GET takes it (a caller may add it to any read); only reads of the state wait for the barrier without it.
STALE = Query("stale", "boolean", "1: answer from this node's state without waiting for the read barrier")
# The least role any operation needs: a caller below it may submit nothing at all.
SUBMIT_ROLE = min((op.ROLE for op in registry.OPERATIONS.values()), key=base.ROLE_RANK.__getitem__)
_STOPPED = object()
_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False, "": False}


def wrong_input(message: str) -> ApiError:
    return ApiError(400, "wrong_input", message)


def encode_json(data: Any) -> bytes:
    """JSON bytes, encoded once (large listings are served pre-encoded)."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def json_response(data: Any, status: int = 200, seq: int | None = None) -> Response:
    headers = {"X-Cairn-Seq": str(seq)} if seq is not None else None
    return Response(encode_json(data), status_code=status, headers=headers, media_type=MEDIA_JSON)


def error_response(status: int, code: str, message: str) -> Response:
    response = json_response({"error": code, "message": message}, status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="cairn"'
    return response


# --- request parsing ----------------------------------------------------------------

def query_int(request: Request, name: str, default: int | None = None) -> int | None:
    """A query parameter that must be a whole number >= 0 (400 otherwise)."""
    text = request.query_params.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit():
        raise wrong_input(f"query parameter {name} must be a whole number >= 0, got {text!r}")
    return int(text)


def query_flag(request: Request, name: str) -> bool:
    text = request.query_params.get(name)
    if text is None:
        return False
    if text.lower() not in _FLAGS:
        raise wrong_input(f"query parameter {name} must be 1 or 0, got {text!r}")
    return _FLAGS[text.lower()]


def query_names(request: Request) -> list[str] | None:
    """The names of `?names=a,b` (None when not given: everything)."""
    text = request.query_params.get("names")
    if text is None:
        return None
    return [name.strip() for name in text.split(",") if name.strip()]


def path_job_id(request: Request) -> int:
    text = request.path_params["id"]
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        raise wrong_input(f"job id must be a whole number, got {text!r}; 'cairn job list' shows the jobs")
    return int(text)


async def json_body(request: Request) -> Any:
    """The request body as JSON; 400 naming the fault for anything else, 413 past MAX_BODY_BYTES (never read whole)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
    data = b"".join(chunks)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as error:
        raise wrong_input(f"the body is not JSON ({str(error)[:200]}); send a JSON object such as "
                          '{"operations": [{"op": "instance_startup", "params": {"instance": "web1"}}]}') from None


def _too_large() -> ApiError:
    return ApiError(413, "wrong_input", f"the body is larger than {MAX_BODY_BYTES} bytes; a job body is much smaller")


def fields_of(body: Any, required: dict, optional: dict, unauthenticated: bool = False) -> dict:
    """A small JSON object body with these fields of these types (400 naming the fault; 401 when the body is what
    authenticates the request and it is not even well formed)."""
    status, code = (401, "unauthenticated") if unauthenticated else (400, "wrong_input")
    if not isinstance(body, dict):
        raise ApiError(status, code, f"the body must be a JSON object with {', '.join(required)}")
    missing = sorted(set(required) - set(body))
    unknown = sorted(set(body) - set(required) - set(optional))
    if missing or unknown:
        raise ApiError(status, code, f"the body needs {', '.join(required)}" +
                       (f" and may have {', '.join(optional)}" if optional else "") +
                       (f"; missing {', '.join(missing)}" if missing else "") +
                       (f"; unknown {', '.join(unknown)}" if unknown else ""))
    for name, value in body.items():
        kind = {**required, **optional}[name]
        if type(value) is not kind:
            raise ApiError(400, "wrong_input", f"field {name} must be {kind.__name__}, got {json.dumps(value)[:80]}")
    return body


def job_body(body: Any) -> tuple[list[tuple[Any, dict]], str, str]:
    """The operations (module, params), reason and request id of a job body, checked for shape (400 if wrong)."""
    if not isinstance(body, dict):
        raise wrong_input(f"the job body must be a JSON object, not {type(body).__name__}; "
                          'send {"operations": [{"op": NAME, "params": {...}}]}')
    unknown = sorted(set(body) - {"operations", "reason", "request_id"})
    if unknown:
        raise wrong_input(f"the job body takes no field {', '.join(unknown)}; its fields are operations, reason, "
                          "request_id")
    operations = body.get("operations")
    if not isinstance(operations, list) or not operations:
        raise wrong_input('the job body needs "operations": a non-empty list of {"op": NAME, "params": {...}}')
    reason, request_id = body.get("reason", ""), body.get("request_id", "")
    for name, value, limit in (("reason", reason, MAX_REASON), ("request_id", request_id, MAX_REQUEST_ID)):
        if not isinstance(value, str) or len(value) > limit:
            raise wrong_input(f"{name} must be a string of at most {limit} characters")
    return [job_operation(position, entry) for position, entry in enumerate(operations)], reason, request_id


def job_operation(position: int, entry: Any) -> tuple[Any, dict]:
    if not isinstance(entry, dict) or set(entry) != {"op", "params"}:
        raise wrong_input(f'operation {position} must be an object with exactly "op" and "params"')
    name, params = entry["op"], entry["params"]
    if not isinstance(name, str) or name not in registry.OPERATIONS:
        raise wrong_input(f"operation {position}: unknown operation {name!r}; known: "
                          f"{', '.join(sorted(registry.OPERATIONS))}")
    if not isinstance(params, dict):
        raise wrong_input(f'operation {position} ({name}): "params" must be an object of its fields')
    return registry.OPERATIONS[name], params


def checked_params(op: Any, params: dict) -> dict:
    """An operation's params, refused (400) for an unknown or missing field or a value of the wrong type."""
    base.params_from(op, params)
    fields = params_schema(op)["properties"]
    for name, value in params.items():
        if not fits(fields[name], value):
            wanted = fields[name]["type"]
            wanted = " or ".join(wanted) if isinstance(wanted, list) else wanted
            raise wrong_input(f"{op.NAME}: field {name} must be {wanted}, got {json.dumps(value)[:80]}")
    # Lists become tuples, as committing and decoding the job would make them.
    return codec.freeze(params)


# --- the app ----------------------------------------------------------------------------

class _Api:
    """The endpoints over one backend; `shutdown` ends watch and tail streams when the server stops."""

    def __init__(self, backend: Any, shutdown: trio.Event) -> None:
        self.backend = backend
        self.shutdown = shutdown
        self.metrics = ApiMetrics(backend)
        self.digests: dict[int, str] = {}
        self.sessions = {CONSOLE_PATH: self.console}   # routes that are WebSockets too: path -> session handler
        self.consoles: dict[str, str] = {}              # instance id -> the user attached to its console
        self.endpoints = (self._read_endpoints() + self._job_endpoints() + self._join_endpoints()
                          + self._other_endpoints())
        self.schema = encode_json(openapi(self.endpoints, registry.OPERATIONS))

    def _read_endpoints(self) -> list[Endpoint]:
        names = Query("names", "string", "comma-separated names: only these, in this order")
        return [
            Endpoint("GET", f"{API}/cluster", "read-only", "The cluster object", self.cluster,
                     (Query("at", "integer", "the state as it was at this seq, replayed from history"), STALE)),
            Endpoint("GET", f"{API}/cluster/master", "read-only", "The master node", self.master, (STALE,)),
            Endpoint("GET", f"{API}/cluster/verify", "read-only", "Check the state for problems", self.verify,
                     (STALE,)),
            Endpoint("GET", f"{API}/cluster/htools", "read-only", "The cluster in htools text format (for "
                     "cairn balance and capacity)", self.htools, (STALE,)),
            Endpoint("GET", f"{API}/status", "read-only", "This member's view of the log", self.status,
                     (STALE,)),
            Endpoint("GET", f"{API}/nodes", "read-only", "Node rows", self.nodes, (names, STALE)),
            Endpoint("GET", f"{API}/nodes/{{name}}", "read-only", "One node row", self.node, (STALE,)),
            Endpoint("GET", f"{API}/instances", "read-only", "Instance rows", self.instances, (names, STALE)),
            Endpoint("GET", f"{API}/instances/{{name}}", "read-only", "One instance row", self.instance, (STALE,)),
            Endpoint("GET", CONSOLE_PATH, "operator", "The instance's serial console, as a WebSocket (binary "
                     "messages both ways), on the node running it only (409 elsewhere, naming that node)",
                     self.console_upgrade, (STALE,), media=MEDIA_RECORDS, status=101),
            Endpoint("GET", f"{API}/groups", "read-only", "Node groups", self.groups, (STALE,)),
            Endpoint("GET", f"{API}/users", "admin", "Users and their roles", self.users, (STALE,)),
        ]

    def _job_endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("GET", f"{API}/jobs", "read-only", "Job rows, newest last", self.jobs,
                     (Query("status", "string", "only jobs with this status"), STALE)),
            Endpoint("POST", f"{API}/jobs", SUBMIT_ROLE, "Submit a job (each operation needs its own role)",
                     self.submit, status=201, body=True),
            Endpoint("GET", f"{API}/jobs/{{id}}", "read-only", "One job row", self.job, (STALE,)),
            Endpoint("GET", f"{API}/jobs/{{id}}/watch", "read-only", "The job's log lines as they come, then its row",
                     self.watch, (STALE,), media=MEDIA_NDJSON),
            Endpoint("GET", f"{API}/jobs/{{id}}/wait", "read-only", "The job row once the job ended", self.wait,
                     (Query("timeout_s", "number", f"give up (503) after this long; default {WAIT_DEFAULT_S:g}"),
                      STALE)),
            Endpoint("POST", f"{API}/jobs/{{id}}/cancel", "operator", "Ask for a job to be canceled", self.cancel),
        ]

    def _join_endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("POST", f"{API}/nodes/join-tokens", "admin", "Issue a one-time join token for a new node",
                     self.issue_join_token, status=201),
            Endpoint("POST", f"{API}/join/ca", JOIN_ROLE, "The cluster CA certificate, for a caller naming an open "
                     "join token by its hash (so it can check the CA's fingerprint before it sends the token)",
                     self.join_ca),
            Endpoint("POST", f"{API}/join", JOIN_ROLE, "Join the cluster with a join token (leader only): "
                     "certify the new node's key, add it, hand it the cluster's secrets", self.join),
            Endpoint("POST", f"{API}/lease", "read-only", "A member's lease (leader only; members only, with their "
                     "node certificate and the node token): granted for the fencing interval, or refused with "
                     "the reason", self.lease),
            Endpoint("POST", f"{API}/node/incoming", "read-only", "Start the destination of a live migration on "
                     "this node (members only: the source's node, with its node certificate and the node token); "
                     "answers where to send the machine", self.incoming),
            Endpoint("POST", f"{API}/node/incoming/abort", "read-only", "End the destination of a live migration "
                     "that failed or was cancelled (members only)", self.incoming_abort),
            Endpoint("POST", f"{API}/node/export", "read-only", "Export this node's copy of a replicated disk to "
                     "the instance's primary, which mirrors into it (members only); answers the export's address",
                     self.export_disk),
        ]

    def _other_endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("GET", f"{API}/openapi.json", "read-only", "This document", self.openapi, (STALE,)),
            Endpoint("GET", f"{API}/events", "read-only", "The history after a seq", self.events,
                     (Query("since", "integer", "the seq to start after; default 0"),
                      Query("format", "string", "jsonl (event lines) or cbor (the record stream)"), STALE),
                     media=MEDIA_NDJSON),
            Endpoint("GET", f"{API}/events/tail", "read-only", "Event lines, following the live log", self.tail,
                     (Query("since", "integer", "the seq to start after; default: the seq read now"), STALE),
                     media=MEDIA_NDJSON),
            Endpoint("GET", "/metrics", "read-only", "Prometheus metrics", self.prometheus, (STALE,),
                     media=MEDIA_PROMETHEUS),
        ]

    def route(self, endpoint: Endpoint) -> Route:
        allowed = frozenset(query.name for query in endpoint.query)
        what = f"{endpoint.method} {endpoint.path}"

        def admit(connection: Request | WebSocket) -> Caller | None:
            """The caller, authenticated and allowed the route; ApiError (401, 403, 400) otherwise."""
            if endpoint.role == JOIN_ROLE:
                caller = None     # the body's join token authenticates the request (the handler checks it)
            else:
                caller = authenticate(self.backend.state(), connection.headers.get("authorization"),
                                      self.backend.node_token_hash(), PEER_SERIAL.get() is not None)
                require(caller, endpoint.role, what)
            unknown = sorted(set(connection.query_params) - allowed)
            if unknown:
                raise wrong_input(f"{what} takes no query parameter {', '.join(unknown)}"
                                  + (f"; it takes {', '.join(sorted(allowed))}" if allowed else ""))
            return caller

        async def serve(request: Request) -> Response:
            try:
                return await endpoint.handler(request, admit(request))
            except REFUSALS as error:
                return refusal_response(error)

        name = f"{endpoint.method} {endpoint.path}"
        session = self.sessions.get(endpoint.path)
        if session is None:
            return Route(endpoint.path, serve, methods=[endpoint.method], name=name)

        async def attach(websocket: WebSocket) -> None:
            try:
                await session(websocket, admit(websocket))
            except REFUSALS as error:
                await refuse_websocket(websocket, refusal_response(error))

        return SessionRoute(endpoint.path, serve, attach, methods=[endpoint.method], name=name)

    # --- reads ------------------------------------------------------------------

    async def read(self, request: Request) -> ClusterState:
        """The state to answer from: after the read barrier, or as it is with ?stale=1."""
        if not query_flag(request, "stale"):
            await self.backend.barrier()
        return self.backend.state()

    def digest(self, state: ClusterState) -> str:
        """The state's digest, remembered per seq (two states of one node at one seq are the same state)."""
        found = self.digests.get(state.seq)
        if found is None:
            if len(self.digests) >= 16:
                self.digests.clear()
            found = self.digests[state.seq] = state.digest()
        return found

    async def openapi(self, request: Request, caller: Caller) -> Response:
        return Response(self.schema, media_type=MEDIA_JSON)

    async def cluster(self, request: Request, caller: Caller) -> Response:
        at = query_int(request, "at")
        state = await self.read(request)
        if at is not None:
            state = self.backend.state_at(at)
        body = views.cluster_object(state, self.backend.log_status(), self.backend.node_name, self.digest(state), at)
        return json_response(body, seq=state.seq)

    async def master(self, request: Request, caller: Caller) -> Response:
        state = await self.read(request)
        return json_response({"master": state.leader_node or None}, seq=state.seq)

    async def verify(self, request: Request, caller: Caller) -> Response:
        state = await self.read(request)
        problems = views.verify(state)
        return json_response({"ok": not problems, "problems": problems, "seq": state.seq,
                              "digest": self.digest(state)}, seq=state.seq)

    async def htools(self, request: Request, caller: Caller) -> Response:
        from appliance.allocator import htools_text

        state = await self.read(request)
        return json_response({"text": htools_text(state), "seq": state.seq}, seq=state.seq)

    async def status(self, request: Request, caller: Caller) -> Response:
        # The member's own view, without a barrier: it must answer when there is no leader to ask.
        status = {"node": self.backend.node_name, **self.backend.log_status(), "lease": self.backend.lease_status()}
        return json_response(status, seq=status.get("applied_seq"))

    def with_liveness(self, rows: list[dict]) -> list[dict]:
        """Node rows with the leader's view of each node's liveness (not in the log: leases)."""
        table = self.backend.liveness()
        for row in rows:
            entry = table.get(row["name"], {})
            row["liveness"] = entry.get("liveness", "unknown")
            row["lease_age_s"] = entry.get("lease_age_s")
        return rows

    async def nodes(self, request: Request, caller: Caller) -> Response:
        state = await self.read(request)
        return json_response(self.with_liveness(views.node_rows(state, query_names(request))), seq=state.seq)

    async def node(self, request: Request, caller: Caller) -> Response:
        state = await self.read(request)
        row = views.node_row(state, views.find_node(state, request.path_params["name"]))
        return json_response(self.with_liveness([row])[0], seq=state.seq)

    async def instances(self, request: Request, caller: Caller) -> Response:
        state = await self.read(request)
        return json_response(views.instance_rows(state, query_names(request)), seq=state.seq)

    async def instance(self, request: Request, caller: Caller) -> Response:
        state = await self.read(request)
        found = views.find_instance(state, request.path_params["name"])
        return json_response(views.instance_row(state, found), seq=state.seq)

    # --- the serial console -------------------------------------------------------

    async def console_upgrade(self, request: Request, caller: Caller) -> Response:
        name = request.path_params["name"]
        raise wrong_input(f"{CONSOLE_PATH} is a WebSocket: ask for it with 'Upgrade: websocket' (as "
                          f"'cairn instance console {name}' does)")

    async def console(self, websocket: WebSocket, caller: Caller) -> None:
        """Bridge the WebSocket and the instance's console socket on this node, refused (an HTTP error answer,
        before accepting) unless the instance runs here and nobody else is attached."""
        state = await self.read(websocket)
        instance = views.find_instance(state, websocket.path_params["name"])
        here = self.backend.node_name
        primary = state.nodes.get(instance.primary)
        if primary is None or primary.name != here:
            where = f"node {primary.name} ({primary.address})" if primary is not None else "no known node"
            raise ApiError(409, "wrong_state", f"instance {instance.name} runs on {where}, not on {here}; attach "
                                               f"there ('cairn instance console {instance.name}' finds the node)")
        if instance.observed_state != "running":
            raise ApiError(409, "wrong_state", f"instance {instance.name} is not running (status "
                                               f"{views.instance_status(state, instance)}); start it with "
                                               f"'cairn instance startup {instance.name}'")
        holder = self.consoles.get(instance.id)
        if holder is not None:
            raise ApiError(409, "wrong_state", f"user {holder} is attached to the console of instance "
                                               f"{instance.name}; one session at a time: ask them to detach (Ctrl-])")
        self.consoles[instance.id] = caller.name
        try:
            path = await self.backend.console_path(instance.name)
            try:
                stream = await trio.open_unix_socket(path)
            except OSError as error:
                raise Refused("wrong_state", f"the console of instance {instance.name} on node {here} does not "
                                             f"answer ({error.strerror or error}); 'cairn instance info "
                                             f"{instance.name}' shows its state") from None
            async with stream:
                await websocket.accept()
                await self.console_bridge(websocket, stream)
        finally:
            del self.consoles[instance.id]

    async def console_bridge(self, websocket: WebSocket, stream: trio.SocketStream) -> None:
        """Pass bytes both ways until the client leaves, the console closes or the server stops; then say why."""
        ending: list[tuple[int, str]] = []

        async def upstream(cancel: trio.CancelScope) -> None:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("bytes") or (message.get("text") or "").encode("utf-8")
                if len(data) > CONSOLE_MESSAGE_BYTES:
                    ending.append((1009, f"a message may hold at most {CONSOLE_MESSAGE_BYTES} bytes"))
                    break
                try:
                    await stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    ending.append((1000, "the console closed: the instance stopped or moved"))
                    break
            cancel.cancel()

        async def downstream(cancel: trio.CancelScope) -> None:
            try:
                while data := await stream.receive_some(CONSOLE_READ_BYTES):
                    await websocket.send_bytes(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            except WebSocketDisconnect:
                cancel.cancel()
                return
            ending.append((1000, "the console closed: the instance stopped or moved"))
            cancel.cancel()

        async def stopping(cancel: trio.CancelScope) -> None:
            await self.shutdown.wait()
            ending.append((1001, f"node {self.backend.node_name} is stopping; attach again in a moment"))
            cancel.cancel()

        async with trio.open_nursery() as nursery:
            for task in (upstream, downstream, stopping):
                nursery.start_soon(task, nursery.cancel_scope)
        if ending and websocket.client_state == websocket.application_state == WebSocketState.CONNECTED:
            code, reason = ending[0]
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await websocket.close(code, reason.encode("utf-8")[:CLOSE_REASON_BYTES].decode("utf-8", "ignore"))

    async def groups(self, request: Request, caller: Caller) -> Response:
        state = await self.read(request)
        return json_response(views.group_rows(state), seq=state.seq)

    async def users(self, request: Request, caller: Caller) -> Response:
        state = await self.read(request)
        return json_response(views.user_rows(state), seq=state.seq)

    async def prometheus(self, request: Request, caller: Caller) -> Response:
        return Response(self.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    # --- jobs -------------------------------------------------------------------

    async def jobs(self, request: Request, caller: Caller) -> Response:
        status = request.query_params.get("status")
        if status is not None and status not in views.JOB_STATUSES:
            raise wrong_input(f"unknown job status {status!r}; use one of {', '.join(views.JOB_STATUSES)}")
        state = await self.read(request)
        return json_response(views.job_rows(state, status, redact=not caller.is_admin), seq=state.seq)

    async def job(self, request: Request, caller: Caller) -> Response:
        job_id = path_job_id(request)
        state = await self.read(request)
        return json_response(views.job_row(views.find_job(state, job_id), redact=not caller.is_admin), seq=state.seq)

    async def submit(self, request: Request, caller: Caller) -> Response:
        operations, reason, request_id = job_body(await json_body(request))
        for op, _ in operations:
            require(caller, op.ROLE, f"operation {op.NAME}")
        entries = [{"op": op.NAME, "params": checked_params(op, params)} for op, params in operations]
        job_id = await self.backend.submit(entries, caller.name, reason, request_id)
        return json_response({"job": job_id}, status=201)

    async def issue_join_token(self, request: Request, caller: Caller) -> Response:
        body = fields_of(await json_body(request), {"node": str, "address": str}, {"ttl_s": int})
        ttl_s = body.get("ttl_s", DEFAULT_JOIN_TTL_S)
        if not 0 < ttl_s <= MAX_JOIN_TTL_S:
            raise wrong_input(f"ttl_s must be between 1 and {MAX_JOIN_TTL_S} seconds, got {ttl_s}")
        answer = await self.backend.issue_join_token(body["node"], body["address"], ttl_s, caller.name)
        return json_response(answer, status=201)

    @staticmethod
    async def token_body(request: Request, required: dict, optional: dict) -> dict:
        """The body of a route a join token authenticates: anything unreadable is unauthenticated (401)."""
        try:
            body = await json_body(request)
        except ApiError as error:
            raise ApiError(401, "unauthenticated", f"this route needs a join token in a JSON body: {error.message}")
        return fields_of(body, required, optional, unauthenticated=True)

    async def join_ca(self, request: Request, caller: None) -> Response:
        body = await self.token_body(request, {"token_hash": str}, {})
        return json_response({"ca_pem": self.backend.join_ca(body["token_hash"])})

    async def join(self, request: Request, caller: None) -> Response:
        body = await self.token_body(request, {"token": str, "address": str, "public_key_pem": str,
                                               "memory_mib": int, "disk_mib": int, "cpus": int},
                                     {"master_capable": bool})
        for name in ("memory_mib", "disk_mib", "cpus"):
            if body[name] < 1:
                raise wrong_input(f"{name} must be at least 1, got {body[name]}")
        return json_response(await self.backend.join(body))

    async def lease(self, request: Request, caller: Caller) -> Response:
        self.members_only(caller, "ask for leases")
        body = fields_of(await json_body(request), {"node": str, "applied_seq": int, "running": int},
                         {"armed": bool})
        recorded = self.backend.state().certificates.get(body["node"])
        serial = PEER_SERIAL.get()
        if recorded is not None and serial is not None and int(recorded, 16) != serial:
            raise ApiError(403, "permission_denied", f"The certificate presented is not node {body['node']}'s; "
                                                      "a member asks for its own lease only")
        return json_response(self.backend.grant_lease(body["node"], body))

    async def incoming(self, request: Request, caller: Caller) -> Response:
        self.members_only(caller, "start a migration's destination")
        body = fields_of(await json_body(request), {"instance": str, "hypervisor": str, "runtime": dict}, {})
        return json_response(await self.backend.accept_incoming(body["instance"], body["hypervisor"],
                                                                body["runtime"]))

    async def export_disk(self, request: Request, caller: Caller) -> Response:
        self.members_only(caller, "ask for a disk copy's export")
        body = fields_of(await json_body(request), {"instance": str, "index": int}, {})
        return json_response(await self.backend.export_disk(body["instance"], body["index"]))

    async def incoming_abort(self, request: Request, caller: Caller) -> Response:
        self.members_only(caller, "end a migration's destination")
        body = fields_of(await json_body(request), {"instance": str, "hypervisor": str}, {})
        await self.backend.abort_incoming(body["instance"], body["hypervisor"])
        return json_response({"instance": body["instance"]})

    @staticmethod
    def members_only(caller: Caller, what: str) -> None:
        if caller.name != NODE_ACTOR:
            raise ApiError(403, "permission_denied", f"Only cluster members {what}, with their node certificate "
                                                      "and the node token")

    async def cancel(self, request: Request, caller: Caller) -> Response:
        job_id = path_job_id(request)
        await self.backend.cancel(job_id, caller.name)
        return json_response({"job": job_id})

    async def wait(self, request: Request, caller: Caller) -> Response:
        job_id = path_job_id(request)
        timeout_s = self._timeout(request)
        state = await self.read(request)
        if views.find_job(state, job_id).status not in JOB_FINISHED:
            ended = _STOPPED
            with trio.move_on_after(timeout_s):
                ended = await self.unless_stopping(partial(self.backend.wait_job, job_id))
            if ended is _STOPPED:
                raise Unavailable(f"job {job_id} has not ended after {timeout_s:g} s (or this node is stopping); "
                                  f"wait again, or follow it with 'cairn job watch {job_id}'")
            state = self.backend.state()
        return json_response(views.job_row(views.find_job(state, job_id), redact=not caller.is_admin), seq=state.seq)

    def _timeout(self, request: Request) -> float:
        text = request.query_params.get("timeout_s")
        if text is None:
            return WAIT_DEFAULT_S
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not 0 < value <= WAIT_MAX_S:
            raise wrong_input(f"timeout_s must be a number of seconds above 0 and at most {WAIT_MAX_S:g}, got {text!r}")
        return value

    async def watch(self, request: Request, caller: Caller) -> Response:
        job_id = path_job_id(request)
        state = await self.read(request)
        views.find_job(state, job_id)
        return LiveStream(partial(self.watch_lines, job_id, not caller.is_admin), self.shutdown,
                          headers={"X-Cairn-Seq": str(state.seq)})

    async def watch_lines(self, job_id: int, redact: bool, out: trio.MemorySendChannel) -> None:
        """`{"ts", "message"}` for each job log line as it commits, then the job row once the job ended."""
        sent = 0
        while True:
            state = self.backend.state()
            job = state.jobs.get(job_id)
            if job is None:
                return
            if len(job.log) > sent:
                await out.send(b"".join(ndjson_line({"ts": ts, "message": message})
                                        for ts, message in job.log[sent:]))
                sent = len(job.log)
            if job.status in JOB_FINISHED:
                await out.send(ndjson_line(views.job_row(job, redact)))
                return
            await self.backend.changed(state.seq)

    # --- events -------------------------------------------------------------------

    async def events(self, request: Request, caller: Caller) -> Response:
        since = query_int(request, "since", 0)
        fmt = request.query_params.get("format", "jsonl")
        if fmt not in EVENT_FORMATS:
            raise wrong_input(f"unknown format {fmt!r}; use jsonl or cbor")
        state = await self.read(request)
        records = iter(self.backend.records(since + 1, state.seq)) if since < state.seq else iter(())
        # The first record is read now, so a refusal (history not kept here, say) is an error answer, not a cut stream.
        first = next(records, None)
        records = iter(()) if first is None else itertools.chain((first,), records)
        headers = {"X-Cairn-Seq": str(state.seq)}
        if fmt == "cbor":
            return StreamingResponse(record_frames(records), media_type=MEDIA_RECORDS, headers=headers)
        return StreamingResponse(event_chunks(records, not caller.is_admin), media_type=MEDIA_NDJSON, headers=headers)

    async def tail(self, request: Request, caller: Caller) -> Response:
        since = query_int(request, "since")
        state = await self.read(request)
        after = state.seq if since is None else since
        return LiveStream(partial(self.tail_lines, after, not caller.is_admin), self.shutdown,
                          headers={"X-Cairn-Seq": str(after)})

    async def tail_lines(self, after: int, redact: bool, out: trio.MemorySendChannel) -> None:
        """Event lines of every record committed after `after`, until the caller leaves or the server stops."""
        async for record in self.backend.committed(after):
            await out.send(ndjson_line(views.event_line(record.seq, record.payload, redact)))

    async def unless_stopping(self, wait: Callable[[], Awaitable[Any]]) -> Any:
        """`await wait()`, or _STOPPED when the server shuts down first (an error of `wait` is raised as it is)."""
        outcome: list = []
        async with trio.open_nursery() as nursery:
            async def run() -> None:
                try:
                    outcome.append((True, await wait()))
                except Exception as error:
                    outcome.append((False, error))
                nursery.cancel_scope.cancel()

            async def stop() -> None:
                await self.shutdown.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(run)
            nursery.start_soon(stop)
        if not outcome:
            return _STOPPED
        ok, value = outcome[0]
        if not ok:
            raise value
        return value


REFUSALS = (ApiError, Refused, PrereqError, Unavailable)


def refusal_response(error: Exception) -> Response:
    """The JSON error answer of a request refused by the API (ApiError), the backend (Refused, Unavailable) or
    the model (PrereqError)."""
    if isinstance(error, ApiError):
        return error_response(error.status, error.code, error.message)
    if isinstance(error, Unavailable):
        return error_response(503, "unavailable", str(error) or "this node cannot answer now; try another")
    return error_response(STATUS_BY_CODE.get(error.code, REFUSAL_STATUS), error.code, error.message)


async def refuse_websocket(websocket: WebSocket, response: Response) -> None:
    """Refuse a WebSocket with an error answer: as HTTP before it is accepted (hypercorn and Starlette speak
    the denial-response extension), else as a close frame (policy violation) saying why."""
    if websocket.application_state == WebSocketState.CONNECTING and "websocket.http.response" in \
            websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
        return
    reason = json.loads(response.body).get("message", "refused").encode("utf-8")[:CLOSE_REASON_BYTES]
    with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
        await websocket.close(1008, reason.decode("utf-8", "ignore"))


class SessionRoute(Route):
    """A route that answers HTTP requests with `endpoint` and WebSocket sessions (same path) with `session`."""

    def __init__(self, path: str, endpoint: Callable, session: Callable[[WebSocket], Awaitable[None]],
                 **options: Any) -> None:
        super().__init__(path, endpoint, **options)
        self.session_app = websocket_session(session)

    def matches(self, scope: dict) -> tuple[Any, dict]:
        if scope["type"] == "websocket":
            return super().matches({**scope, "type": "http", "method": "GET"})
        return super().matches(scope)

    async def handle(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await self.session_app(scope, receive, send)
        else:
            await super().handle(scope, receive, send)


async def _http_error(request: Request, error: HTTPException) -> Response:
    if error.status_code == 404:
        return error_response(404, "not_found", f"no route {request.method} {request.url.path}; "
                                                f"GET {API}/openapi.json lists the routes")
    if error.status_code == 405:
        return error_response(405, "method_not_allowed", f"{request.url.path} does not take {request.method}; "
                                                         f"GET {API}/openapi.json lists the routes")
    return error_response(error.status_code, "wrong_input", str(error.detail))


async def _internal_error(request: Request, error: Exception) -> Response:
    return error_response(500, "internal", "the node failed to answer (see its log); try again or ask another node")


def build_app(backend: Any, shutdown_event: trio.Event | None = None) -> Starlette:
    """The API app over a backend (appliance.api.backend.Backend).

    `shutdown_event`, when given, is the one serve_api stops on: watch and
    tail streams end themselves when it is set, instead of being cut off
    after hypercorn's graceful timeout.
    """
    api = _Api(backend, shutdown_event if shutdown_event is not None else trio.Event())
    app = Starlette(
        routes=[api.route(endpoint) for endpoint in api.endpoints],
        middleware=[Middleware(RequestTimer, metrics=api.metrics)],
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    app.state.endpoints = api.endpoints
    app.state.schema = api.schema
    app.state.metrics = api.metrics
    return app
