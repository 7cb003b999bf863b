"""`cairn daemon --data-dir DIR`: one node's process.

It hosts the node's log member (pysyncobj; Raft on PORT+1, history copies to
peers on PORT+2), the node core in its shell, the drivers, and the API (TLS on
the node address, plain HTTP on `DIR/api.sock` for the local CLI). It writes
its pid to `DIR/daemon.pid` while it runs. SIGTERM or SIGINT stops it cleanly:
the API stops taking requests, the log member closes. Instance processes are
not children of the daemon and keep running (`cairn down` stops them).
"""

from __future__ import annotations

import contextlib
import gc
import http.client
import logging
import os
import signal
import ssl
import sys
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import trio

from appliance import pki
from appliance.fencing import WatchdogLink
from appliance.api.auth import node_token
from appliance.daemon.config import BOOTSTRAP_NAME, NodeConfig, read_bootstrap, read_config
from appliance.daemon.shell import NodeShell
from appliance.drivers.base import DriverError
from appliance.drivers.fake import FakeHypervisor
from appliance.drivers.files import FileStorage
from appliance.drivers.hypervisors import HypervisorSet
from appliance.drivers.qemu import FFDHE2048_PEM, QemuHypervisor
from appliance.drivers.replication import Replication

log = logging.getLogger("cairn.daemon")

PID_NAME = "daemon.pid"
SOCKET_NAME = "api.sock"
LOG_NAME = "daemon.log"


class FakePeers(Mapping):
    """Where the fake drivers find another node's instances (`hv`) or disk copies (`disks`): under the
    configured data dirs, else under a sibling of this node's data dir with that node's name (the layout of
    `cairn up`, `cluster init` and `node join` on one machine), looked up at each use so that nodes joined
    later are found too. This stands for the data plane a real cluster reaches over the network."""

    def __init__(self, configured: dict, data_dir: Path, part: str = "hv") -> None:
        self.part = part
        self.configured = {name: Path(directory) / part for name, directory in configured.items()}
        self.parent = data_dir.parent

    def _known(self) -> dict:
        found = {p.parent.name: p.parent / self.part for p in self.parent.glob("*/node.json")}
        return {**found, **self.configured}

    def __getitem__(self, name: str) -> Path:
        return self._known()[name]

    def __iter__(self):
        return iter(self._known())

    def __len__(self) -> int:
        return len(self._known())


class NodeIncomingLink:
    """How this node's QEMU driver has a migration's destination started on another node: a call to that node's
    API with the node certificate and token (`POST /api/v1/node/incoming`). The shell is set once it exists."""

    def __init__(self, hypervisor: str) -> None:
        self.hypervisor = hypervisor
        self.shell: NodeShell | None = None

    async def prepare(self, target_node: str, instance_id: str, runtime: dict) -> str:
        answer = await self._call(target_node, "/api/v1/node/incoming",
                                  {"instance": instance_id, "hypervisor": self.hypervisor, "runtime": runtime})
        return str(answer["uri"])

    async def export(self, node: str, instance_id: str, index: int) -> str:
        """The address of node `node`'s export of its copy of the disk (it starts the export if needed)."""
        answer = await self._call(node, "/api/v1/node/export", {"instance": instance_id, "index": index})
        return str(answer["address"])

    async def abort(self, target_node: str, instance_id: str) -> None:
        await self._call(target_node, "/api/v1/node/incoming/abort",
                         {"instance": instance_id, "hypervisor": self.hypervisor})

    async def _call(self, node: str, path: str, body: dict) -> dict:
        if self.shell is None:
            raise DriverError("this node's daemon is still starting; it retries shortly")
        try:
            return await self.shell.call_node(node, "POST", path, body)
        except (OSError, ValueError, KeyError, http.client.HTTPException) as error:
            raise DriverError(f"node {node} did not do its part ({path}): {error}") from None


def qemu_tls_dir(data_dir: Path) -> Path:
    """QEMU's x509 credentials for migration streams, from the node's own certificate (refreshed at each start):
    the same certificate serves both ends, since it is valid for server and client authentication. Fixed DH
    parameters (RFC 7919) spare QEMU generating them at every migration."""
    paths = pki.pki_paths(data_dir)
    directory = data_dir / "kvm" / "tls"
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    files = {"ca-cert.pem": paths.ca_cert, "server-cert.pem": paths.node_cert, "client-cert.pem": paths.node_cert,
             "server-key.pem": paths.node_key, "client-key.pem": paths.node_key}
    contents = {name: source.read_bytes() for name, source in files.items()}
    contents["dh-params.pem"] = FFDHE2048_PEM.encode()
    for name, data in contents.items():
        target = directory / name
        temporary = target.with_suffix(".tmp")
        temporary.write_bytes(data)
        os.chmod(temporary, 0o600)
        os.replace(temporary, target)
    return directory


def drivers_for(config: NodeConfig, data_dir: Path):
    """The node's hypervisors (`fake` and `kvm`: an instance runs under the one it names), its storage, and the
    link the QEMU driver reaches other nodes through (its shell set later)."""
    disk_roots = FakePeers(config.fake_peers, data_dir, "disks")
    fake = FakeHypervisor(data_dir / "hv", config.name, FakePeers(config.fake_peers, data_dir), disk_roots=disk_roots)
    link = NodeIncomingLink("kvm")
    tls_dir = qemu_tls_dir(data_dir) if pki.pki_paths(data_dir).node_cert.exists() else None
    replication = Replication(data_dir / "kvm", data_dir / "disks", config.host, link.export, tls_dir)
    kvm = QemuHypervisor(data_dir / "kvm", config.name, disk_root=data_dir / "disks", incoming=link,
                         migration_host=config.host, tls_dir=tls_dir, replication=replication)
    storage = FileStorage(data_dir / "disks", disk_roots, config.name)
    return HypervisorSet({"fake": fake, "kvm": kvm}), storage, link


async def stop_on_signal(name: str, stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("node %s stopping (signal %d)", name, signum)
            stop.set()
            return


def refuse_revoked(shell: NodeShell, der: bytes) -> str | None:
    """Why a client certificate is refused (its serial was revoked when its node was removed), or None."""
    revoked = shell.state().revoked_serials
    if revoked and pki.is_revoked(der, {int(serial, 16) for serial in revoked}):
        return "a removed node's certificate (revoked); remove its data dir and join it again to bring it back"
    return None


@contextlib.contextmanager
def pid_file(data_dir: Path):
    path = data_dir / PID_NAME
    path.write_text(f"{os.getpid()}\n")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if path.read_text().strip() == str(os.getpid()):
                path.unlink()


async def run_daemon(data_dir: Path, task_status=trio.TASK_STATUS_IGNORED) -> None:
    from appliance.api.app import build_app
    from appliance.api.server import serve_api
    from consensus.node import HistoryPeers, MemberServer, shifted
    from consensus.syncobj_log import SyncObjSettings, open_syncobj_log
    from consensus.wire import serve

    config = read_config(data_dir)
    paths = pki.pki_paths(data_dir)
    password = pki.read_secret_file(paths.raft_password).decode().strip()
    ca_pem = paths.ca_cert.read_bytes()
    server_context = pki.server_context(ca_pem, paths.node_cert, paths.node_key, require_client_cert=False)
    # A client certificate is asked for, not required: the CLI has none; members present theirs, and a
    # revoked one is refused after the handshake (the node token counts only with a good one).
    server_context.verify_mode = ssl.CERT_OPTIONAL
    client_context = pki.client_context(ca_pem, paths.node_cert, paths.node_key)
    hypervisor, storage, link = drivers_for(config, data_dir)
    voters = sorted(config.voters.values())
    peers = [address for address in voters if address != config.address]
    settings = SyncObjSettings(password=password, fsync=config.fsync)
    secret = password.encode("latin-1")
    shutdown = trio.Event()
    with pid_file(data_dir):
        async with open_syncobj_log(config.address, voters, data_dir / "log", settings, voter=config.voter,
                                    history_source=HistoryPeers(peers, secret)) as member:
            shell = NodeShell(config.name, config.address, member, hypervisor, storage, ca_pem=ca_pem,
                              node_token=node_token(password), addresses=config.voters,
                              bootstrap=read_bootstrap(data_dir),
                              bootstrap_done=lambda: (data_dir / BOOTSTRAP_NAME).unlink(missing_ok=True),
                              client_context=client_context, raft_password=password,
                              ca_key_pem=pki.read_secret_file(paths.ca_key) if paths.ca_key.exists() else None)
            shell.watchdog = WatchdogLink(data_dir)
            link.shell = shell
            async with trio.open_nursery() as nursery:
                await nursery.start(serve, shifted(config.address, 2), secret, MemberServer(member).handle)
                await nursery.start(shell.run)
                app = build_app(shell, shutdown)
                await nursery.start(serve_api, app, config.address, server_context, str(data_dir / SOCKET_NAME),
                                    shutdown, partial(refuse_revoked, shell))
                log.info("node %s serving on %s (voters %s)", config.name, config.address, ",".join(voters))
                task_status.started()
                stop = trio.Event()
                shell.on_removed = stop.set
                nursery.start_soon(stop_on_signal, config.name, stop)
                await stop.wait()
                shutdown.set()
                with trio.move_on_after(2.0):
                    await trio.sleep(0.2)
                nursery.cancel_scope.cancel()


def main(data_dir: str, log_level: str = "INFO") -> None:
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sys.setswitchinterval(0.005)
    gc.set_threshold(50_000, 20, 20)
    trio.run(run_daemon, Path(data_dir).resolve())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
