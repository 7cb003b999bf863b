"""A small fake of the cluster API for the client and CLI tests: canned answers over real HTTPS (no tests here).

`FakeApi` serves routes from a dict on 127.0.0.1 with a certificate from a
test CA (appliance.pki), or plain HTTP on a unix socket, in a thread, and
records every request it gets. `refused_address()` is an address nobody
listens on.
"""

from __future__ import annotations

import http.server
import json
import socket
import socketserver
import ssl
import threading
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from appliance import pki
from appliance.clock import now
from appliance.client.config import write_client_config

TOKEN = "test-token-0123456789"
NOW = now()  # certificates are valid from shortly before now


class Reply:
    """A JSON answer."""

    def __init__(self, status: int, body=None, headers: dict | None = None, close_after: bool = False) -> None:
        self.status, self.body, self.headers, self.close_after = status, body, headers or {}, close_after


class Stream:
    """An NDJSON answer, one chunk per line."""

    def __init__(self, lines: list, status: int = 200) -> None:
        self.lines, self.status = lines, status


class Raw:
    """Bytes as they are, in chunks."""

    def __init__(self, chunks: list[bytes], content_type: str = "application/octet-stream") -> None:
        self.chunks, self.content_type = chunks, content_type


class Request:
    """One request the fake got."""

    def __init__(self, method: str, path: str, query: dict, body, headers: dict, peer) -> None:
        self.method, self.path, self.query, self.body = method, path, query, body
        self.headers, self.peer = headers, peer


class Tls:
    """A test CA and a certificate for 127.0.0.1 signed by it, as files."""

    def __init__(self, directory: Path, name: str = "test") -> None:
        ca = pki.create_ca(name, NOW)
        node = pki.issue_node_certificate(ca, "node1", ["127.0.0.1", "localhost"], NOW)
        self.ca_pem = ca.cert_pem.decode("ascii")
        directory.mkdir(parents=True, exist_ok=True)
        self.cert_file, self.key_file = directory / "node.crt", directory / "node.key"
        self.cert_file.write_bytes(node.cert_pem)
        self.key_file.write_bytes(node.key_pem)

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context


def _handler_class(fake: FakeApi):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            request = Request(self.command, parts.path, dict(parse_qsl(parts.query)), body, dict(self.headers),
                              self.client_address)
            fake.requests.append(request)
            if fake.token is not None and self.headers.get("Authorization") != f"Bearer {fake.token}":
                self._json(Reply(401, {"error": "unauthenticated", "message": "unknown token"}))
                return
            answer = fake.routes.get((self.command, parts.path))
            if callable(answer):
                answer = answer(request)
            if answer is None:
                answer = Reply(404, {"error": "not_found", "message": f"no route {self.command} {parts.path}"})
            if isinstance(answer, Reply):
                self._json(answer)
            else:
                self._chunked(answer)

        do_GET = do_POST = _serve

        def _json(self, reply: Reply) -> None:
            data = json.dumps(reply.body).encode() if reply.body is not None else b""
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in reply.headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
            if reply.close_after:
                self.close_connection = True  # without telling the client: its kept-alive connection goes stale

        def _chunked(self, answer) -> None:
            chunks = ([(json.dumps(line) + "\n").encode() for line in answer.lines] if isinstance(answer, Stream)
                      else answer.chunks)
            self.send_response(getattr(answer, "status", 200))
            self.send_header("Content-Type", "application/x-ndjson" if isinstance(answer, Stream)
                             else answer.content_type)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in chunks:
                self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")

    return Handler


class _TcpServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        request, _ = super().get_request()
        return request, ("local", 0)


class FakeApi:
    """A fake node: `routes[(method, path)]` is a Reply, Stream, Raw or a function of the Request giving one."""

    def __init__(self, tls: Tls | None = None, socket_path: str | None = None, token: str | None = TOKEN) -> None:
        self.routes: dict = {}
        self.requests: list[Request] = []
        self.token = token
        handler = _handler_class(self)
        if socket_path is not None:
            self.server = _UnixServer(socket_path, handler)
            self.address = f"unix:{socket_path}"
        else:
            self.server = _TcpServer(("127.0.0.1", 0), handler)
            self.server.socket = tls.server_context().wrap_socket(self.server.socket, server_side=True)
            self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> FakeApi:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()

    def seen(self, method: str, path: str) -> list[Request]:
        """The requests for one route."""
        return [r for r in self.requests if r.method == method and r.path == path]


def refused_address() -> str:
    """A 127.0.0.1 address where nothing listens (the port was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"127.0.0.1:{port}"


@pytest.fixture(scope="session")
def tls(tmp_path_factory) -> Tls:
    """A CA and a node certificate for 127.0.0.1, shared by the tests of a run."""
    return Tls(tmp_path_factory.mktemp("tls"))


def client_config(directory: Path, tls: Tls, nodes: list[str], token: str = TOKEN) -> str:
    """A client config naming `nodes` with the test CA and token; its path."""
    path = str(directory / "client.toml")
    write_client_config(path, "test", nodes, tls.ca_pem, token)
    return path


def job_row(job_id: int, status: str = "success", **fields) -> dict:
    """A job row as the API gives it."""
    return {"id": job_id, "status": status, "summary": [], "ops": [], "oplog": [], "opresult": [],
            "error_code": "", "error_message": "", **fields}


class Cairn:
    """Runs `cairn ...` in process (typer's CliRunner) against one fake node, with a config holding the test CA."""

    def __init__(self, api: FakeApi, config_path: str) -> None:
        from typer.testing import CliRunner

        self.api, self.config_path = api, config_path
        self.runner = CliRunner(env={"CAIRN_API": None, "CAIRN_TOKEN": None, "CAIRN_CONFIG": None})

    def __call__(self, *args: str, api: bool = True):
        from appliance.cli import app

        where = ["--api", self.api.address] if api else []
        return self.runner.invoke(app, [*args, *where, "--config", self.config_path])

    def accept_jobs(self, first_id: int = 1, rows: dict | None = None) -> list:
        """Answer job submissions with ids from `first_id`, and each watch with its row from `rows`
        (default: success); the submitted bodies are returned as they come."""
        bodies = []

        def submitted(request: Request) -> Reply:
            bodies.append(request.body)
            return Reply(201, {"job": first_id + len(bodies) - 1})

        def watched(request: Request) -> Stream:
            job_id = int(request.path.split("/")[4])
            row = (rows or {}).get(job_id) or job_row(job_id)
            return Stream([[1.0, f"job {job_id} running"], row])

        self.api.routes[("POST", "/api/v1/jobs")] = submitted
        for job_id in range(first_id, first_id + 20):
            self.api.routes[("GET", f"/api/v1/jobs/{job_id}/watch")] = watched
        return bodies


@pytest.fixture
def cairn(tls, tmp_path):
    """A fake node and a `cairn` runner aimed at it."""
    with FakeApi(tls) as api:
        yield Cairn(api, client_config(tmp_path, tls, [api.address]))
