"""Serving the API from the daemon's Trio loop: hypercorn's trio worker, TLS on the node address, HTTP on a unix socket.

`serve_api` runs inside the caller's nursery (`await nursery.start(...)`
returns the bound addresses, port 0 resolved) and stops when the caller's
shutdown event is set. The findings of shared/reference/http-on-trio.md shape
the configuration: the node's own SSLContext is used as it is (hypercorn
would build its own from file paths), the unix socket is plain HTTP made
with mode 0600, the keep-alive request limit is lifted, the graceful timeout
is short (watch and tail streams end themselves on the same event), and a
connection whose client hung up is closed at once rather than after the
keep-alive timeout (hypercorn 0.18 keeps it until then).
"""

from __future__ import annotations

import contextvars
import logging
import os
import ssl
import stat
from functools import partial
from pathlib import Path

import trio
from cryptography import x509
from hypercorn.config import Config
from hypercorn.trio import run as hypercorn_run
from hypercorn.trio import serve
from hypercorn.trio.tcp_server import TCPServer

KEEP_ALIVE_TIMEOUT_S = 5
WEBSOCKET_MAX_MESSAGE_BYTES = 128 * 1024   # the console's WebSocket: keystrokes and pastes
GRACEFUL_TIMEOUT_S = 1.0
# hypercorn drops a connection after this many requests (default 1000), failing requests in flight on HTTP/2.
KEEP_ALIVE_MAX_REQUESTS = 1 << 40
SOCKET_MODE = 0o600
log = logging.getLogger("cairn.api")


# The serial of the certificate the client presented on this connection (None: it presented none, or the
# connection is the unix socket). Set before the connection's tasks start, so every request of it sees it.
PEER_SERIAL: contextvars.ContextVar[int | None] = contextvars.ContextVar("cairn_peer_serial", default=None)


class ApiConfig(Config):
    """hypercorn's Config with the node's own TLS context (or none) instead of one built from file paths, and
    the check every client certificate passes after the handshake (`refuse_peer(der)`: a reason, or None)."""

    def __init__(self, ssl_context: ssl.SSLContext | None, refuse_peer=None) -> None:
        super().__init__()
        self._ssl_context = ssl_context
        self.refuse_peer = refuse_peer

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return self._ssl_context

    @property
    def ssl_enabled(self) -> bool:
        return self._ssl_context is not None


class PromptCloseTCPServer(TCPServer):
    """hypercorn's trio connection handler, closing the connection as soon as the client has closed it.

    In hypercorn 0.18 the idle timer of a keep-alive connection outlives the
    client's EOF: the connection (a file descriptor and ~36 KiB) stays until
    keep_alive_timeout, and a burst of short-lived connections piles them up.
    Stopping the timer once reading has ended lets the connection close now.
    """

    async def run(self) -> None:
        """Finish the TLS handshake here, refuse a revoked client certificate, remember the serial of a good one."""
        if isinstance(self.stream, trio.SSLStream):
            try:
                with trio.fail_after(self.config.ssl_handshake_timeout):
                    await self.stream.do_handshake()
            except (trio.BrokenResourceError, trio.TooSlowError):
                await self._close()
                return
            der = self.stream.getpeercert(binary_form=True)
            if der:
                reason = getattr(self.config, "refuse_peer", None) and self.config.refuse_peer(der)
                if reason:
                    log.warning("refused a connection: %s", reason)
                    await self._close()
                    return
                PEER_SERIAL.set(x509.load_der_x509_certificate(der).serial_number)
        await super().run()

    async def _read_data(self) -> None:
        await super()._read_data()
        await self.idle_task.stop()


def _close_connections_on_peer_eof() -> None:
    """Have hypercorn's trio worker use PromptCloseTCPServer (it names its handler class at module level)."""
    if getattr(hypercorn_run, "TCPServer", None) is TCPServer:
        hypercorn_run.TCPServer = PromptCloseTCPServer


def api_config(bind: str | None, ssl_context: ssl.SSLContext | None, unix_path: str | None,
               refuse_peer=None) -> ApiConfig:
    """The hypercorn configuration: TLS on `bind` (plain without a context), plain HTTP on the unix socket."""
    config = ApiConfig(ssl_context, refuse_peer)
    tcp = [bind] if bind else []
    unix = [f"unix:{unix_path}"] if unix_path else []
    if ssl_context is not None:
        ssl_context.set_alpn_protocols(config.alpn_protocols)
        # With TLS, every `bind` address is TLS-wrapped; the unix socket is plain HTTP, so it goes here.
        config.bind, config.insecure_bind = tcp, unix
    else:
        config.bind, config.insecure_bind = tcp + unix, []
    # The socket file is made while this umask holds, so it is never open to others, not even briefly.
    config.umask = 0o777 & ~SOCKET_MODE
    config.keep_alive_timeout = KEEP_ALIVE_TIMEOUT_S
    config.keep_alive_max_requests = KEEP_ALIVE_MAX_REQUESTS
    config.graceful_timeout = GRACEFUL_TIMEOUT_S
    # The only WebSocket is the serial console, whose messages are keystrokes and pastes: refuse a huge one at
    # the protocol level (hypercorn's default lets 16 MiB through before the route's own 64 KiB check).
    config.websocket_max_message_size = WEBSOCKET_MAX_MESSAGE_BYTES
    config.accesslog = None
    config.errorlog = log
    config.include_server_header = False
    return config


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file a previous run left; refuse to replace anything that is not a socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket; move it away so the API can listen there")
    os.unlink(path)


async def serve_api(app, bind: str | None, ssl_context: ssl.SSLContext | None, unix_path: str | None,
                    shutdown_event: trio.Event, refuse_peer=None, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve `app` until `shutdown_event` is set; started, it reports the bound addresses (port 0 resolved).

    `bind` is HOST:PORT ("[::1]:PORT" for IPv6) or None for the unix socket
    only; `ssl_context` (appliance.pki.server_context) makes it HTTPS, and it
    is given the ALPN protocols h2 and http/1.1; `unix_path` adds plain HTTP
    on a socket file of mode 0600 (a stale one is removed first). With a
    context that asks for client certificates (CERT_OPTIONAL), each one
    presented is passed to `refuse_peer(der)` after the handshake: a reason
    closes the connection (a revoked node), None lets it in with its serial
    in PEER_SERIAL.
    """
    if not bind and not unix_path:
        raise ValueError("serve_api needs an address to bind, a unix socket path, or both")
    _close_connections_on_peer_eof()
    if unix_path:
        _remove_stale_socket(unix_path)
    config = api_config(bind, ssl_context, unix_path, refuse_peer)
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(partial(serve, app, config, shutdown_trigger=shutdown_event.wait))
        if unix_path:
            # The umask made it so; say so explicitly for a reader of the file system.
            Path(unix_path).chmod(SOCKET_MODE)
        task_status.started(addresses)
