"""`Client`: the cluster API over `http.client`, kept alive, trying the next node when one does not answer.

Every node serves the same API, so a node that refuses the connection, drops
it, times out or answers 503 (no leader, no quorum, catching up) is skipped
for the next address, and the one that answered is tried first next time.
Anything else a node answers is the cluster's answer: an HTTP error becomes
`ApiError(status, code, message)` at once. A retried POST resends the same
body, so a job body carrying a `request_id` is never submitted twice.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Iterator
from urllib.parse import quote, urlencode

from appliance.client.config import split_address

DEFAULT_TIMEOUT_S = 30.0
# A watch or tail may stay quiet for a long time; after this long without a byte the caller reconnects.
DEFAULT_STREAM_TIMEOUT_S = 60.0
CHUNK_BYTES = 64 * 1024


class ApiError(Exception):
    """An error answer of the API (or, as `Unreachable`, of no node at all)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class Unreachable(ApiError):
    """No node answered (each refused, dropped the connection, timed out or answered 503)."""

    def __init__(self, failures: list[str], answered: int = 0) -> None:
        super().__init__(503, "unavailable", "no node of the cluster could answer: " + "; ".join(failures))
        self.failures = failures
        self.answered = answered  # how many nodes answered, with 503


class StreamBroken(Exception):
    """A stream stopped before its end (the node went away or stayed silent too long); the caller may reconnect."""


class UnixHTTPConnection(http.client.HTTPConnection):
    """Plain HTTP over a unix socket (the local node's `api.sock`)."""

    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def tls_context(ca_pem: str) -> ssl.SSLContext:
    """A client context that trusts the cluster CA and nothing else, TLS 1.3 only, host names checked."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname on
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    try:
        context.load_verify_locations(cadata=ca_pem)
    except (ssl.SSLError, ValueError) as error:
        raise ValueError(f"the cluster CA is not a usable PEM certificate ({error})") from None
    return context


def _describe(error: BaseException) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return (f"its TLS certificate is not trusted ({error.verify_message}); check that the CA in the client "
                "config is this cluster's")
    if isinstance(error, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, FileNotFoundError):
        return "no such socket"
    if isinstance(error, http.client.RemoteDisconnected):
        return "closed the connection without answering"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return str(error) or type(error).__name__


# What "this node does not answer" looks like; ssl.SSLError and socket.timeout are OSErrors.
NOT_ANSWERING = (OSError, http.client.HTTPException)
# What a kept-alive connection the server has meanwhile closed looks like on its next use.
STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


class Client:
    """The cluster API: `get`, `post`, `stream` (NDJSON) and `raw` (bytes), with failover between nodes."""

    def __init__(self, addresses: list[str], ca_pem: str | None, token: str, socket_path: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, stream_timeout_s: float | None = DEFAULT_STREAM_TIMEOUT_S):
        self.endpoints: list[str] = ([f"unix:{socket_path}"] if socket_path else []) + list(addresses)
        if not self.endpoints:
            raise ValueError("the client needs at least one API address or a socket")
        for address in addresses:
            split_address(address)
        self._ca_pem, self._token = ca_pem, token
        self.timeout_s, self.stream_timeout_s = timeout_s, stream_timeout_s
        # Made now, so that a bad CA is reported as such rather than as every node failing.
        self._context = tls_context(ca_pem) if ca_pem and addresses else None
        self._connections: dict[int, http.client.HTTPConnection] = {}
        self._current = 0
        # The seq the last read was answered at (the X-Cairn-Seq header), and who answered.
        self.last_seq: int | None = None
        self.answered_by: str | None = None

    # -- connections

    def _connection(self, index: int) -> http.client.HTTPConnection:
        connection = self._connections.get(index)
        if connection is None:
            endpoint = self.endpoints[index]
            if endpoint.startswith("unix:"):
                connection = UnixHTTPConnection(endpoint[len("unix:"):], self.timeout_s)
            else:
                if self._context is None:
                    if not self._ca_pem:
                        raise ValueError(f"no CA to check {endpoint}'s certificate against; give the cluster CA")
                    self._context = tls_context(self._ca_pem)
                host, port = split_address(endpoint)
                # http.client passes the host as server_hostname: the certificate must name it (an IP SAN for IPs).
                connection = http.client.HTTPSConnection(host, port, timeout=self.timeout_s, context=self._context)
            self._connections[index] = connection
        return connection

    def _drop(self, index: int) -> None:
        connection = self._connections.pop(index, None)
        if connection is not None:
            connection.close()

    def close(self) -> None:
        """Close every open connection."""
        for index in list(self._connections):
            self._drop(index)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _headers(self, body: bytes | None) -> dict:
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json",
                   "User-Agent": "cairn-cli"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        return headers

    def _send(self, index: int, method: str, target: str, body: bytes | None) -> http.client.HTTPResponse:
        reused = index in self._connections
        connection = self._connection(index)
        try:
            connection.request(method, target, body=body, headers=self._headers(body))
            return connection.getresponse()
        except STALE:
            if not reused:
                raise
        # The node closed the idle kept-alive connection: one fresh connection to the same node.
        self._drop(index)
        connection = self._connection(index)
        connection.request(method, target, body=body, headers=self._headers(body))
        return connection.getresponse()

    def _open(self, method: str, target: str, body: bytes | None = None) -> http.client.HTTPResponse:
        """The first answer that is not a 503, trying each node once from the last one that answered."""
        failures = []
        answered = 0
        count = len(self.endpoints)
        for step in range(count):
            index = (self._current + step) % count
            try:
                response = self._send(index, method, target, body)
            except NOT_ANSWERING as error:
                self._drop(index)
                failures.append(f"{self.endpoints[index]}: {_describe(error)}")
                continue
            if response.status == 503:
                answered += 1
                failures.append(f"{self.endpoints[index]}: {self._error_of(response, response.read()).message}")
                continue
            self._current = index
            self.answered_by = self.endpoints[index]
            seq = response.getheader("X-Cairn-Seq")
            self.last_seq = int(seq) if seq and seq.isdigit() else None
            return response
        raise Unreachable(failures, answered)

    # -- requests

    @staticmethod
    def target(path: str, query: dict | None = None) -> str:
        """The request target: `path` (quoted, slashes kept) and the query without None values, booleans as 1/0."""
        items = {k: (int(v) if isinstance(v, bool) else v) for k, v in (query or {}).items() if v is not None}
        return quote(path, safe="/:@!$&'()*+,;=-._~") + (f"?{urlencode(items)}" if items else "")

    def _json(self, method: str, target: str, body: bytes | None):
        try:
            response = self._open(method, target, body)
            data = response.read()
        except NOT_ANSWERING as error:
            # The node went away between the answer's head and its body; the caller may retry.
            self._drop(self._current)
            raise Unreachable([f"{self.endpoints[self._current]}: {_describe(error)} while answering"]) from None
        if response.status >= 400:
            raise self._error_of(response, data)
        try:
            return response.status, (json.loads(data) if data else None)
        except ValueError:
            raise ApiError(response.status, "bad_answer",
                           f"{self.answered_by} answered {target} with something that is not JSON") from None

    @staticmethod
    def _error_of(response: http.client.HTTPResponse, data: bytes) -> ApiError:
        try:
            document = json.loads(data)
            return ApiError(response.status, str(document["error"]), str(document.get("message", "")))
        except (ValueError, TypeError, KeyError):
            text = data.decode("utf-8", "replace").strip() or response.reason or f"HTTP {response.status}"
            return ApiError(response.status, (response.reason or "error").lower().replace(" ", "_"), text)

    def get(self, path: str, **query) -> tuple[int, object]:
        """GET `path` with `query`; the status and the decoded JSON answer."""
        return self._json("GET", self.target(path, query), None)

    def post(self, path: str, body: object) -> tuple[int, object]:
        """POST `body` as JSON to `path`; the status and the decoded JSON answer."""
        return self._json("POST", self.target(path), json.dumps(body).encode("utf-8"))

    def raw(self, path: str, **query) -> Iterator[bytes]:
        """GET `path` and yield the answer's bytes as they come; StreamBroken when the node goes away."""
        for _response, _index, chunk in self._pieces(path, query, lambda response: response.read1(CHUNK_BYTES)):
            yield chunk

    def stream(self, path: str, **query) -> Iterator[object]:
        """GET `path` and yield each NDJSON line, decoded, as it comes; StreamBroken when the node goes away."""
        for response, index, line in self._pieces(path, query, lambda response: response.readline()):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError:
                    raise ApiError(response.status, "bad_answer",
                                   f"{self.endpoints[index]} sent a line that is not JSON: {line[:80]!r}") from None

    def _pieces(self, path: str, query: dict, read) -> Iterator[tuple]:
        """GET `path`; yield (response, node index, piece) for each non-empty `read(response)` until the end."""
        response = self._stream_response(path, query)
        index = self._current
        finished = False
        try:
            while True:
                try:
                    piece = read(response)
                except NOT_ANSWERING as error:
                    raise StreamBroken(f"{self.endpoints[index]}: {_describe(error)}") from None
                if not piece:
                    finished = True
                    return
                yield response, index, piece
        finally:
            self._end_stream(index, finished)

    def _end_stream(self, index: int, finished: bool) -> None:
        if not finished:
            self._drop(index)  # a half-read answer leaves the connection unusable
            return
        connection = self._connections.get(index)
        if connection is not None and connection.sock is not None:
            connection.sock.settimeout(self.timeout_s)

    def _stream_response(self, path: str, query: dict) -> http.client.HTTPResponse:
        response = self._open("GET", self.target(path, query))
        if response.status >= 400:
            raise self._error_of(response, response.read())
        connection = self._connections.get(self._current)
        if connection is not None and connection.sock is not None:
            connection.sock.settimeout(self.stream_timeout_s)
        return response
