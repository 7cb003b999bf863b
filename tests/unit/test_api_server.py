"""Serving the API: addresses, the unix socket, connections closed when clients leave, and a clean shutdown."""

import http.client
import json
import os
import socket
import stat

import pytest
import trio

from appliance import clock
from appliance.api.app import build_app
from appliance.api.server import KEEP_ALIVE_TIMEOUT_S, serve_api
from tests.unit.api_support import Caller
from tests.unit.api_support import backend, tls, tokens  # noqa: F401 (fixtures)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def port_of(addresses: list[str]) -> int:
    return int(next(a for a in addresses if a.startswith("https://")).rsplit(":", 1)[1])


async def test_tls_and_unix_socket_are_served_together(backend, tls, tokens, tmp_path, nursery):
    """TLS on the TCP address (port 0 resolved) and plain HTTP on a fresh 0600 socket that replaced a stale one."""
    path = str(tmp_path / "api.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()
    shutdown = trio.Event()
    addresses = await nursery.start(serve_api, build_app(backend, shutdown), "127.0.0.1:0", tls.server_context(),
                                    path, shutdown)
    assert f"http://unix:{path}" in addresses and port_of(addresses) > 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    over_unix = await Caller(unix_path=path)("GET", "/api/v1/status", tokens.reader)
    over_tls = await Caller(port_of(addresses), tls.client_context())("GET", "/api/v1/status", tokens.reader)
    assert over_unix.json() == over_tls.json() and over_unix.json()["node"] == "n1.example.com"
    shutdown.set()


async def test_plain_http_serves_tcp_and_socket_without_tls(backend, tokens, tmp_path, nursery):
    """Without a TLS context both the TCP address and the socket answer plain HTTP."""
    path = str(tmp_path / "api.sock")
    shutdown = trio.Event()
    addresses = await nursery.start(serve_api, build_app(backend, shutdown), "127.0.0.1:0", None, path, shutdown)
    port = int(next(a for a in addresses if a.startswith("http://127")).rsplit(":", 1)[1])

    def get_status():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request("GET", "/api/v1/status", headers={"Authorization": f"Bearer {tokens.reader}"})
            return connection.getresponse().status
        finally:
            connection.close()

    assert await trio.to_thread.run_sync(get_status) == 200
    assert (await Caller(unix_path=path)("GET", "/api/v1/status", tokens.reader)).status == 200
    shutdown.set()


async def test_a_file_in_the_sockets_place_is_not_replaced(backend, tmp_path, nursery):
    """A regular file where the socket should be is left alone, and serving refuses to start."""
    path = tmp_path / "api.sock"
    path.write_text("mine")
    with pytest.raises(FileExistsError, match="not a socket"):
        await nursery.start(serve_api, build_app(backend), None, None, str(path), trio.Event())
    assert path.read_text() == "mine"


async def test_serving_needs_somewhere_to_listen(backend, nursery):
    """With neither an address nor a socket there is nothing to serve on."""
    with pytest.raises(ValueError, match="needs an address"):
        await nursery.start(serve_api, build_app(backend), None, None, None, trio.Event())


async def test_connections_close_as_soon_as_clients_leave(backend, tls, tokens, nursery):
    """Many short-lived keep-alive connections leave no descriptors behind, well before the keep-alive timeout."""
    shutdown = trio.Event()
    addresses = await nursery.start(serve_api, build_app(backend, shutdown), "127.0.0.1:0", tls.server_context(),
                                    None, shutdown)
    caller = Caller(port_of(addresses), tls.client_context())
    await caller("GET", "/api/v1/status", tokens.reader)
    await trio.sleep(0.1)
    baseline = open_fds()

    def many_connections():
        for _ in range(40):
            caller.request("GET", "/api/v1/status?stale=1", tokens.reader)

    started = clock.monotonic()
    await trio.to_thread.run_sync(many_connections)
    while open_fds() > baseline + 2 and clock.monotonic() - started < KEEP_ALIVE_TIMEOUT_S:
        await trio.sleep(0.05)
    assert open_fds() <= baseline + 2
    assert clock.monotonic() - started < 1.5
    shutdown.set()


async def test_shutdown_ends_a_tail_stream_cleanly(backend, tls, tokens, nursery):
    """Setting the shutdown event ends a live stream with a proper end of body, and the server stops promptly."""
    shutdown = trio.Event()
    stopped = trio.Event()

    async def serve(task_status=trio.TASK_STATUS_IGNORED):
        await serve_api(build_app(backend, shutdown), "127.0.0.1:0", tls.server_context(), None, shutdown,
                        task_status=task_status)
        stopped.set()

    caller = Caller(port_of(await nursery.start(serve)), tls.client_context())

    def tail_to_the_end():
        connection = caller.connection()
        try:
            connection.request("GET", "/api/v1/events/tail?since=12",
                               headers={"Authorization": f"Bearer {tokens.reader}"})
            return [json.loads(line) for line in connection.getresponse().read().splitlines()]
        finally:
            connection.close()

    async with trio.open_nursery() as inner:
        lines = []

        async def tail():
            lines.extend(await trio.to_thread.run_sync(tail_to_the_end))

        inner.start_soon(tail)
        await trio.sleep(0.2)
        started = clock.monotonic()
        shutdown.set()
        with trio.fail_after(2):
            await stopped.wait()
    assert [line["seq"] for line in lines] == [13, 14]
    assert clock.monotonic() - started < 0.9


async def test_node_certificates_are_checked_after_the_handshake(backend, tls, tokens, nursery):
    """The node token counts only with a node certificate; a revoked certificate's connection is closed."""
    from cryptography import x509

    serial = x509.load_pem_x509_certificate(tls.cert.read_bytes()).serial_number
    revoked: set[int] = set()

    def refuse(der: bytes) -> str | None:
        return "revoked" if x509.load_der_x509_certificate(der).serial_number in revoked else None

    shutdown = trio.Event()
    addresses = await nursery.start(serve_api, build_app(backend, shutdown), "127.0.0.1:0", tls.server_context(),
                                    None, shutdown, refuse)
    port = port_of(addresses)
    assert (await Caller(port, tls.client_context(node=True))("GET", "/api/v1/status", tokens.node)).status == 200
    assert (await Caller(port, tls.client_context(node=False))("GET", "/api/v1/status", tokens.node)).status == 401
    # A user's token works without a certificate (the CLI has none).
    assert (await Caller(port, tls.client_context(node=False))("GET", "/api/v1/status", tokens.reader)).status == 200
    revoked.add(serial)
    with pytest.raises((OSError, http.client.HTTPException)):
        await Caller(port, tls.client_context(node=True))("GET", "/api/v1/status", tokens.node)
    shutdown.set()
