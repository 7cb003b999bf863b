"""The console route served for real (TLS and the unix socket) over a console socket made here, and its client."""

import os
import shutil
import tempfile
from functools import partial
from pathlib import Path

import pytest
import trio
from wsproto.events import BytesMessage

from appliance.api.app import CONSOLE_MESSAGE_BYTES, build_app
from appliance.api.backend import Refused
from appliance.api.server import serve_api
from appliance.client import console
from appliance.client.http import ApiError
from appliance.core.io import op
from appliance.drivers.base import DriverError
from appliance.drivers.hypervisors import HypervisorSet
from tests.unit.api_support import NODES, Caller
from tests.unit.api_support import backend, tls, tokens  # noqa: F401 (fixtures)
from tests.unit.test_daemon_shell import one_node, ready

HANG_UP = b"quit"


class FakeConsole:
    """A serial console on a unix socket: greets each client, echoes its input upper-cased, hangs up on 'quit'."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.connections = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        async with stream:
            await stream.send_all(b"login: ")
            async for data in stream:
                self.received += data
                await stream.send_all(data.upper())
                if HANG_UP in data:
                    return


class Served:
    """The API served over TLS and a unix socket, with its shutdown event."""

    def __init__(self, port: int, unix_path: str, ca_pem: str, shutdown: trio.Event) -> None:
        self.address = f"127.0.0.1:{port}"
        self.unix = f"unix:{unix_path}"
        self.ca_pem = ca_pem
        self.shutdown = shutdown
        self.caller = Caller(unix_path=unix_path)


@pytest.fixture
def short_dir():
    # Socket paths must stay under 108 bytes; pytest's tmp_path can be longer.
    directory = tempfile.mkdtemp(prefix="cairn-console-", dir="/tmp")
    yield Path(directory)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def fake_console(backend, short_dir, nursery):
    fake = FakeConsole()
    path = str(short_dir / "console.sock")
    listener = trio.socket.socket(trio.socket.AF_UNIX)
    await listener.bind(path)
    listener.listen()
    nursery.start_soon(trio.serve_listeners, fake.handle, [trio.SocketListener(listener)])
    backend.console_sockets = {"web1": path}
    return fake


@pytest.fixture
async def served(backend, tls, short_dir, nursery):
    shutdown = trio.Event()
    unix_path = str(short_dir / "api.sock")
    addresses = await nursery.start(serve_api, build_app(backend, shutdown), "127.0.0.1:0", tls.server_context(),
                                    unix_path, shutdown)
    port = int(next(a for a in addresses if a.startswith("https://")).rsplit(":", 1)[1])
    yield Served(port, unix_path, tls.ca_pem.decode(), shutdown)
    shutdown.set()


def attach(endpoint: str, ca_pem: str | None, token: str, data: bytes, name: str = "web1", escape: bytes | None = None,
           drain_s: float | None = None, stdin_open=None, before=None) -> tuple[console.Ending, bytes]:
    """A whole session from a thread, as the CLI runs it: `data` on stdin (left open when `stdin_open` is a list,
    which gets its write end), and the ending and everything written to stdout."""
    link = console.connect(endpoint, f"/api/v1/instances/{name}/console", token, ca_pem)
    stdin_read, stdin_write = os.pipe()
    output_read, output_write = os.pipe()
    try:
        os.write(stdin_write, data)
        if stdin_open is None:
            os.close(stdin_write)
        else:
            stdin_open.append(stdin_write)
        with link:
            if before is not None:
                before(link)
            ending = link.attach(stdin_read, output_write, escape, drain_s)
        os.close(output_write)
        output_write = None
        with os.fdopen(output_read, "rb") as output:
            output_read = None
            return ending, output.read()
    finally:
        for fd in (stdin_read, output_read, output_write):
            if fd is not None:
                os.close(fd)


async def session(*args, **options) -> tuple[console.Ending, bytes]:
    return await trio.to_thread.run_sync(partial(attach, *args, **options))


async def refused(served: Served, token: str, name: str = "web1") -> ApiError:
    with pytest.raises(ApiError) as caught:
        await session(served.address, served.ca_pem, token, b"", name=name)
    return caught.value


async def wait_for(predicate, what: str, timeout_s: float = 10.0) -> None:
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.01)


# --- the route ------------------------------------------------------------------------

async def test_console_bytes_pass_both_ways_over_tls(served, fake_console, tokens):
    """An operator's input reaches the console socket and the console's output comes back, until it hangs up."""
    ending, output = await session(served.address, served.ca_pem, tokens.operator, b"hello\nquit\n")
    assert fake_console.received == b"hello\nquit\n"
    assert output == b"login: HELLO\nQUIT\n"
    assert ending.by == "server" and ending.code == 1000 and "stopped or moved" in ending.reason


async def test_console_is_served_on_the_unix_socket(served, fake_console, tokens):
    """The local socket serves the console as well, without TLS."""
    ending, output = await session(served.unix, None, tokens.admin, b"quit")
    assert output == b"login: QUIT" and ending.by == "server"


async def test_read_only_user_is_refused_the_console(served, fake_console, tokens):
    """A read-only token gets 403 naming the role needed, and nothing reaches the console."""
    error = await refused(served, tokens.reader)
    assert (error.status, error.code) == (403, "permission_denied") and "role operator" in error.message
    assert fake_console.connections == 0


async def test_unknown_token_is_refused_the_console(served, fake_console, tokens):
    """A token the cluster does not know gets 401."""
    error = await refused(served, tokens.unknown)
    assert (error.status, error.code) == (401, "unauthenticated")


async def test_unknown_instance_is_refused(served, fake_console, tokens):
    """An instance the cluster does not know gets 404 naming it."""
    error = await refused(served, tokens.operator, "nosuch")
    assert (error.status, error.code) == (404, "unknown_entity") and "nosuch" in error.message


async def test_an_instance_of_another_node_is_refused_naming_that_node(served, fake_console, tokens):
    """This node (n1) refuses the console of web2, whose primary is n3, and says to go there."""
    error = await refused(served, tokens.operator, "web2")
    assert (error.status, error.code) == (409, "wrong_state")
    assert NODES[2] in error.message and "cairn instance console web2" in error.message


async def test_a_stopped_instance_is_refused(served, backend, fake_console, tokens):
    """An instance of this node that is not running gets 409 with its status and how to start it."""
    backend.box.run("instance_add", name="web3", primary=NODES[0], disk_template="diskless", os="debian-12",
                    memory_mib=512, start=False)
    error = await refused(served, tokens.operator, "web3")
    assert (error.status, error.code) == (409, "wrong_state")
    assert "ADMIN_down" in error.message and "cairn instance startup web3" in error.message


async def test_the_backends_refusal_is_the_answer(served, backend, fake_console, tokens):
    """When the node's driver has no console for the instance, the backend's refusal is passed on (409)."""
    backend.console_sockets = {}
    error = await refused(served, tokens.operator)
    assert (error.status, error.code) == (409, "wrong_state") and "no console" in error.message


async def test_a_second_session_is_refused_while_one_is_attached(served, fake_console, tokens, nursery):
    """One session per console: a second caller gets 409 naming who is attached, and may attach once it left."""
    held: list[int] = []
    done = trio.Event()
    results = []

    async def first() -> None:
        results.append(await session(served.address, served.ca_pem, tokens.operator, b"", escape=console.ESCAPE,
                                     stdin_open=held))
        done.set()

    nursery.start_soon(first)
    await wait_for(lambda: fake_console.connections == 1, "the first session")
    error = await refused(served, tokens.admin)
    assert (error.status, error.code) == (409, "wrong_state") and "user oper" in error.message
    os.write(held[0], console.ESCAPE)
    await done.wait()
    os.close(held[0])
    assert results[0][0].by == "escape"
    ending, output = await session(served.address, served.ca_pem, tokens.admin, b"quit")
    assert output == b"login: QUIT"


async def test_an_oversized_message_closes_the_session(served, fake_console, tokens):
    """A message larger than the limit ends the session with 1009, and none of it reaches the console."""
    def too_big(link: console.ConsoleLink) -> None:
        link.sock.sendall(link.connection.send(BytesMessage(data=b"x" * (CONSOLE_MESSAGE_BYTES + 1))))

    held: list[int] = []
    ending, _ = await session(served.address, served.ca_pem, tokens.operator, b"", stdin_open=held, before=too_big)
    os.close(held[0])
    assert ending.by == "server" and ending.code == 1009
    assert fake_console.received == b""


async def test_a_stopping_server_ends_the_session(served, fake_console, tokens, nursery):
    """When the node stops, the session is closed with 1001 saying so, instead of being cut."""
    held: list[int] = []
    results = []
    done = trio.Event()

    async def attached() -> None:
        results.append(await session(served.address, served.ca_pem, tokens.operator, b"", stdin_open=held))
        done.set()

    nursery.start_soon(attached)
    await wait_for(lambda: fake_console.connections == 1, "the session")
    served.shutdown.set()
    await done.wait()
    os.close(held[0])
    ending, _ = results[0]
    assert ending.by == "server" and ending.code == 1001 and "stopping" in ending.reason


async def test_a_plain_get_says_the_route_is_a_websocket(served, tokens):
    """Without an upgrade the route answers 400 saying how to ask for it."""
    answer = await served.caller("GET", "/api/v1/instances/web1/console", tokens.operator)
    assert answer.status == 400 and "WebSocket" in answer.json()["message"]


# --- the client ------------------------------------------------------------------------

async def test_stdin_end_detaches_after_the_drain_time(served, fake_console, tokens):
    """Without a terminal, the session ends by itself once stdin ended and the drain time passed."""
    ending, output = await session(served.address, served.ca_pem, tokens.operator, b"uname\n", drain_s=1.0)
    assert ending.by == "stdin"
    assert output == b"login: UNAME\n" and fake_console.received == b"uname\n"


async def test_the_escape_byte_detaches_and_is_not_sent(served, fake_console, tokens):
    """Ctrl-] ends the session; the input before it is sent, the rest is not."""
    ending, _ = await session(served.address, served.ca_pem, tokens.operator, b"ab" + console.ESCAPE + b"cd",
                              escape=console.ESCAPE)
    assert ending.by == "escape"
    await wait_for(lambda: fake_console.received == b"ab", "the input before the escape")
    await trio.sleep(0.1)
    assert fake_console.received == b"ab"


def test_a_refusal_is_read_from_the_apis_json_error():
    """A refused handshake becomes the API's error, or the answer's text when it is not JSON."""
    error = console.refusal(409, b'{"error": "wrong_state", "message": "runs on n3"}')
    assert (error.status, error.code, error.message) == (409, "wrong_state", "runs on n3")
    error = console.refusal(403, b"")
    assert (error.status, error.code) == (403, "refused") and "403" in error.message


def test_unreachable_node_is_an_os_error(short_dir):
    """A node that does not listen is an OSError (the CLI names the node), not a protocol error."""
    with pytest.raises(OSError):
        console.connect(f"unix:{short_dir / 'nothing.sock'}", "/api/v1/instances/web1/console", "token")


# --- the daemon's side -----------------------------------------------------------------

class ConsoleDriver:
    """A hypervisor driver with a console socket for every instance it runs (`running`)."""

    def __init__(self, running: set[str]) -> None:
        self.running = running

    async def console_path(self, instance_id: str) -> Path:
        if instance_id not in self.running:
            raise DriverError(f"instance {instance_id} is not running on node1; no console to attach to")
        return Path(f"/run/cairn/{instance_id}/console.sock")


async def added_instance():
    """A one-node shell (in-memory drivers, stopped again) whose state has instance web1, not started."""
    shell, _host = one_node()
    async with trio.open_nursery() as nursery:
        await nursery.start(shell.run)
        await ready(shell)
        job = await shell.submit([op("instance_add", name="web1", primary="node1", disk_template="diskless",
                                     os="debian-12", memory_mib=128, start=False)], "admin")
        with trio.fail_after(20):
            assert (await shell.wait_job(job)).status == "success"
        nursery.cancel_scope.cancel()
    return shell, shell.state().instance_by_name("web1").id


async def test_the_shell_asks_the_instances_driver_for_its_console():
    """NodeShell.console_path is the socket the instance's hypervisor driver names."""
    shell, instance_id = await added_instance()
    shell.hypervisor = HypervisorSet({"fake": ConsoleDriver({instance_id})})
    assert await shell.console_path("web1") == f"/run/cairn/{instance_id}/console.sock"


async def test_the_shell_refuses_a_console_its_driver_does_not_have():
    """An unknown instance, a driver without consoles, or an instance not running here: refused with the reason."""
    shell, instance_id = await added_instance()
    with pytest.raises(Refused) as caught:
        await shell.console_path("nosuch")
    assert caught.value.code == "unknown_entity"
    with pytest.raises(Refused) as caught:
        await shell.console_path("web1")     # the in-memory driver has no console
    assert caught.value.code == "wrong_state" and "has no serial console" in caught.value.message
    shell.hypervisor = HypervisorSet({"fake": ConsoleDriver(set())})
    with pytest.raises(Refused) as caught:
        await shell.console_path("web1")
    assert caught.value.code == "wrong_state" and "not running on node1" in caught.value.message
