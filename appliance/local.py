"""A local cluster on 127.0.0.1 for demos and tests: `cairn up` and `cairn down`.

`up` makes the cluster's secrets and every node's data dir the first time
(`DIR/cluster.json` records the name, the nodes and their ports, chosen once),
starts whatever node is not running, waits for a leader and for the bootstrap
jobs (cluster init, one node add per node), and writes the client
configuration. Asked for more nodes than it has, it adds them as a user
would: a join token each, then a join (the first 5 nodes vote, the rest
follow the log without voting). Node K keeps everything in `DIR/nodeK/`, its pid in
`DIR/nodeK/daemon.pid` and its log in `DIR/nodeK/daemon.log`; its watchdog
(`appliance.fencing`) runs beside it with `watchdog.pid` and `watchdog.log`.
`down` stops the watchdogs, the daemons, then every instance process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from appliance import clock
from appliance.fencing import HYPERVISOR_DIRS, KillInstances

CLUSTER_FILE = "cluster.json"
CLUSTER_NAME = "local.cairn"
HYPERVISORS = ("fake", "kvm")
MAX_VOTERS = 5
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
OWN_HOST_PORT = 7100                # a node with an address of its own listens on 7100-7102
_started: dict[Path, int] = {}      # data dir -> pid of the daemon this process started for it


class LocalError(RuntimeError):
    """`cairn up` or `down` cannot go on; the message says why and what to do."""


def default_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cairn" / "local"


def default_client_config() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "cairn" / "client.toml"


@dataclass(frozen=True)
class LocalCluster:
    directory: Path
    name: str
    nodes: dict            # name -> address, in order node1..nodeN

    def data_dir(self, node: str) -> Path:
        return self.directory / node

    @property
    def client_config(self) -> Path:
        return self.directory / "client.toml"


def _free_port_triple(taken: set[int]) -> int:
    """A port P with P, P+1 and P+2 free on 127.0.0.1 (API, Raft, data plane)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port + 2 >= 65535 or {port, port + 1, port + 2} & taken:
            continue
        if all(_port_free(p) for p in (port, port + 1, port + 2)):
            return port
    raise LocalError("found no three consecutive free ports on 127.0.0.1; free some ports and run 'cairn up' again")


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def load(directory: Path) -> LocalCluster | None:
    path = directory / CLUSTER_FILE
    if not path.exists():
        return None
    plain = json.loads(path.read_text())
    return LocalCluster(directory, plain["name"], dict(plain["nodes"]))


def create(directory: Path, count: int, capacity: dict | None = None,
           hosts: list[str] | None = None, hypervisor: str = "fake") -> tuple[LocalCluster, str]:
    """Make the secrets, data dirs and bootstrap jobs of a new local cluster; return it and the admin token.

    Each node gets its share of this host's memory and disk and all its cpus, unless `capacity` gives
    figures per node (memory_mib, disk_mib, cpus): fake instances take no real memory, so a demo or a
    benchmark may well give the nodes more than the host has. `hosts` gives each node an address of its
    own (one network namespace each, in the partition tests) instead of ports on 127.0.0.1. Both hypervisors
    (`fake`, `kvm`) are enabled; `hypervisor` is the default one.
    """
    if hypervisor not in HYPERVISORS:
        raise ValueError(f"hypervisor {hypervisor!r} is not one of {', '.join(HYPERVISORS)}")
    from appliance import pki
    from appliance.daemon.config import NodeConfig, write_bootstrap
    from appliance.drivers import host
    from appliance.nodes import write_node

    now = clock.now()
    directory.mkdir(parents=True, exist_ok=True)
    taken: set[int] = set()
    nodes = {}
    for k in range(1, count + 1):
        if hosts:
            nodes[f"node{k}"] = f"{hosts[k - 1]}:{OWN_HOST_PORT}"
            continue
        port = _free_port_triple(taken)
        taken |= {port, port + 1, port + 2}
        nodes[f"node{k}"] = f"127.0.0.1:{port}"
    voters = dict(list(nodes.items())[:MAX_VOTERS])
    ca = pki.create_ca(CLUSTER_NAME, now)
    password = pki.new_raft_password()
    token = pki.new_credential()
    given = {k: v for k, v in (capacity or {}).items() if v is not None}
    detected = host.detect(str(directory), **given)
    # The nodes share this host: each gets its share of what was detected, not of what was given.
    share = host.Capacity(detected.memory_mib if "memory_mib" in given else max(1, detected.memory_mib // count),
                          detected.disk_mib if "disk_mib" in given else max(1, detected.disk_mib // count),
                          detected.cpus)
    data_dirs = {name: str(directory / name) for name in nodes}
    serials = {}
    for name, address in nodes.items():
        names = list(dict.fromkeys([address.rpartition(":")[0], "127.0.0.1", "localhost"]))
        cert = pki.issue_node_certificate(ca, name, names, now)
        serials[name] = f"{cert.serial:x}"
        config = NodeConfig(name=name, address=address, cluster=CLUSTER_NAME, voters=voters, voter=name in voters,
                            memory_mib=share.memory_mib, disk_mib=share.disk_mib, cpus=share.cpus,
                            fake_peers=data_dirs)
        write_node(directory / name, config, ca_pem=ca.cert_pem, cert_pem=cert.cert_pem, key_pem=cert.key_pem,
                   raft_password=password, ca_key_pem=ca.key_pem if name in voters else None)
    jobs = [{"request_id": "bootstrap:cluster-init", "operations": [
        {"op": "cluster_init", "params": {"name": CLUSTER_NAME, "enabled_hypervisors": [hypervisor] + [
                                              h for h in HYPERVISORS if h != hypervisor],
                                          "default_hypervisor": hypervisor,
                                          "admin_credential_hash": pki.credential_hash(token)}}]}]
    for name, address in nodes.items():
        jobs.append({"request_id": f"bootstrap:node-add:{name}", "operations": [
            {"op": "node_add", "params": {"name": name, "address": address, "memory_mib": share.memory_mib,
                                          "disk_mib": share.disk_mib, "cpus": share.cpus,
                                          "role": "voter" if name in voters else "non-voter",
                                          "certificate_serial": serials[name]}}]})
    write_bootstrap(directory / "node1", jobs)
    cluster = LocalCluster(directory, CLUSTER_NAME, nodes)
    _save(cluster)
    write_client(cluster, ca.cert_pem, token)
    return cluster, token


def write_client(cluster: LocalCluster, ca_pem: bytes, token: str) -> list[Path]:
    """DIR/client.toml, and the user's default configuration if there is none yet; returns what was written."""
    return write_clients(cluster.client_config, cluster.name, list(cluster.nodes.values()), ca_pem.decode(), token,
                         str(cluster.data_dir("node1") / "api.sock"))


def write_clients(path: Path, name: str, nodes: list[str], ca_pem: str, token: str, socket_path: str) -> list[Path]:
    """A client configuration at `path` (with the local node's socket), and the same as the user's default
    (addresses only) if there is none yet; returns what was written, `path` first."""
    from appliance.client.config import write_client_config

    written = []
    for target, socket in ((path, socket_path), (default_client_config(), None)):
        if target != path and target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        write_client_config(str(target), name, nodes, ca_pem, token, socket=socket)
        written.append(target)
    return written


# --- processes ---------------------------------------------------------------------------------

def _live_pid(path: Path, marker: bytes) -> int | None:
    """The pid in a pid file if that process is alive and `marker` is on its command line."""
    try:
        pid = int(path.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return pid if marker in cmdline else None


def read_pid(data_dir: Path) -> int | None:
    """The pid in data_dir/daemon.pid if that process is alive and is a Cairn daemon."""
    return _live_pid(data_dir / "daemon.pid", b"daemon")


def read_watchdog_pid(data_dir: Path) -> int | None:
    """The pid in data_dir/watchdog.pid if that process is alive and is a Cairn watchdog."""
    return _live_pid(data_dir / "watchdog.pid", b"appliance.fencing")


def spawn(data_dir: Path, module: str, log_name: str, prefix: tuple = ()) -> subprocess.Popen:
    """Run `python -m module DATA_DIR` in the background, in a session of its own, its output appended to
    DATA_DIR/log_name; `prefix` runs it through another command (`ip netns exec NS` in the partition test)."""
    with open(data_dir / log_name, "ab") as log:
        return subprocess.Popen([*prefix, sys.executable, "-m", module, str(data_dir)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True, cwd=str(data_dir))


def start_watchdog(data_dir: Path) -> int:
    """Start a node's watchdog (`appliance.fencing`) in the background, in a session of its own, and wait until
    it has written its pid (so it listens before the daemon renews); returns its pid."""
    process = spawn(data_dir, "appliance.fencing", "watchdog.log")
    deadline = clock.monotonic() + 10.0
    while read_watchdog_pid(data_dir) != process.pid and clock.monotonic() < deadline:
        if process.poll() is not None:
            raise LocalError(f"the watchdog of {data_dir.name} exited at start; see {data_dir / 'watchdog.log'}")
        time.sleep(0.02)
    return process.pid


def start_node(data_dir: Path) -> int:
    """Start a node's watchdog (if it does not run) and its daemon in the background, each in a session of its
    own; returns the daemon's pid."""
    if read_watchdog_pid(data_dir) is None:
        start_watchdog(data_dir)
    process = spawn(data_dir, "appliance.daemon.main", "daemon.log")
    _started[data_dir] = process.pid
    return process.pid


def up(directory: Path, count: int | None, echo=print, capacity: dict | None = None,
       hypervisor: str = "fake") -> tuple[LocalCluster, list[str]]:
    """Create the local cluster if needed and start every node that is not running; returns it and the started."""
    cluster = load(directory)
    if cluster is None:
        try:
            cluster, _token = create(directory, count or 3, capacity, hypervisor=hypervisor)
        except ValueError as error:     # a capacity figure that makes no sense
            raise LocalError(str(error)) from None
        echo(f"Created cluster {cluster.name} with {len(cluster.nodes)} nodes in {directory}")
    elif count is not None and count < len(cluster.nodes):
        raise LocalError(f"the local cluster in {directory} has {len(cluster.nodes)} nodes; to have fewer, take "
                         f"nodes out with 'cairn node remove NODE' (there is no shrinking with 'cairn up')")
    started = []
    for name in cluster.nodes:
        data_dir = cluster.data_dir(name)
        if read_pid(data_dir) is None:
            start_node(data_dir)
            started.append(name)
    if count is not None and count > len(cluster.nodes):
        wait_ready(cluster)
        for name in grow(cluster, count):
            echo(f"Added {name} at {cluster.nodes[name]}")
            started.append(name)
    return cluster, started


def grow(cluster: LocalCluster, count: int) -> list[str]:
    """Add nodes to a running local cluster up to `count`, each with a join token, as on a real machine."""
    from appliance.client.config import resolve_target
    from appliance.client.http import ApiError, Client
    from appliance.daemon.config import read_config
    from appliance.nodes import NodeSetupError, join_cluster

    first = read_config(cluster.data_dir(next(iter(cluster.nodes))))
    capacity = {"memory_mib": first.memory_mib, "disk_mib": first.disk_mib, "cpus": first.cpus}
    target = resolve_target(config=str(cluster.client_config), environ={})
    taken = {int(a.rsplit(":", 1)[1]) + k for a in cluster.nodes.values() for k in range(3)}
    added = []
    with Client(target.addresses, target.ca_pem, target.token, target.socket_path) as client:
        for number in range(len(cluster.nodes) + 1, count + 1):
            name = f"node{number}"
            port = _free_port_triple(taken)
            taken |= {port, port + 1, port + 2}
            address = f"127.0.0.1:{port}"
            try:
                _, answer = client.post("/api/v1/nodes/join-tokens", {"node": name, "address": address, "ttl_s": 600})
                join_cluster(answer["token"], address, cluster.data_dir(name), capacity)
            except (ApiError, NodeSetupError) as error:
                raise LocalError(f"could not add {name}: {error}") from None
            cluster.nodes[name] = address
            _save(cluster)
            start_node(cluster.data_dir(name))
            added.append(name)
    return added


def _save(cluster: LocalCluster) -> None:
    (cluster.directory / CLUSTER_FILE).write_text(json.dumps({"name": cluster.name, "nodes": cluster.nodes},
                                                             indent=2) + "\n")


def wait_ready(cluster: LocalCluster, timeout_s: float = START_TIMEOUT_S) -> dict:
    """Wait until the cluster answers with a leader and every node known, and every daemon still runs (one may
    have died at start, its port taken since it was chosen); return the cluster object."""
    try:
        info = wait_for_nodes(cluster.client_config, len(cluster.nodes), timeout_s)
    except LocalError as error:
        raise LocalError(f"{error}; see {cluster.directory}/node*/daemon.log") from None
    dead = [name for name in cluster.nodes if not _running(cluster.data_dir(name), timeout_s)]
    if dead:
        log = cluster.data_dir(dead[0]) / "daemon.log"
        last = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
        raise LocalError(f"{', '.join(dead)} did not keep running; the end of {log}:\n" + "\n".join(last) +
                         "\nfix what it says and run 'cairn up' again")
    return info


def wait_for_nodes(client_config: Path, count: int, timeout_s: float) -> dict:
    """Wait until the cluster of a client configuration answers with a leader and `count` nodes known."""
    from appliance.client.config import resolve_target
    from appliance.client.http import ApiError, Client

    target = resolve_target(config=str(client_config), environ={})
    client = Client(target.addresses, target.ca_pem, target.token, target.socket_path, timeout_s=2.0)
    deadline = clock.monotonic() + timeout_s
    last = "no node answered"
    try:
        while clock.monotonic() < deadline:
            try:
                _status, info = client.get("/api/v1/cluster")
                _status, nodes = client.get("/api/v1/nodes")
                if info.get("leader") and len(nodes) >= count:
                    return info
                last = f"leader {info.get('leader')}, {len(nodes)} of {count} nodes known"
            except (ApiError, OSError) as error:
                last = str(error)
            time.sleep(0.3)
    finally:
        client.close()
    raise LocalError(f"the cluster did not become ready within {timeout_s:g} s ({last})")


def write_node_client(name: str, address: str, data_dir: Path, token: str) -> list[Path]:
    """The client configuration of a new cluster's first node: in its data dir, and as the user's default if
    there is none yet; returns what was written (the data dir's first)."""
    return write_clients(data_dir / "client.toml", name, [address], (data_dir / "pki" / "ca.crt").read_text(), token,
                         str(data_dir / "api.sock"))


def down(directory: Path, echo=print) -> list[str]:
    """Stop every node's daemon, then every instance process the nodes started; returns the stopped nodes."""
    cluster = load(directory)
    if cluster is None:
        raise LocalError(f"no local cluster in {directory}; 'cairn up' makes one")
    stopped = []
    # The watchdogs first: a cluster stopped on purpose is not a node dying.
    watchdogs = [pid for pid in (read_watchdog_pid(cluster.data_dir(name)) for name in cluster.nodes) if pid]
    for pid in watchdogs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    pids = {name: read_pid(cluster.data_dir(name)) for name in cluster.nodes}
    for name, pid in pids.items():
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            stopped.append(name)
    deadline = clock.monotonic() + STOP_TIMEOUT_S
    for name, pid in pids.items():
        if pid is None:
            continue
        while _alive(pid) and clock.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for pid in watchdogs:
        while _alive(pid) and clock.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for name in cluster.nodes:
        for part in HYPERVISOR_DIRS:
            stop_instances(cluster.data_dir(name) / part)
        for part in ("exports", "relays"):      # replicated kvm disks: the secondaries' exports, the relays
            KillInstances(cluster.data_dir(name) / "kvm" / part).fence()
    return stopped


def stop_instances(state_dir: Path) -> int:
    """Kill every instance process (fake guest or QEMU) under a node's hypervisor state dir; returns how many."""
    method = KillInstances(state_dir / "instances")
    killed = len(method.running())
    method.fence()
    return killed


def _running(data_dir: Path, timeout_s: float) -> bool:
    """Whether the node's daemon runs: it writes its pid file once started, so one just started gets a moment."""
    deadline = clock.monotonic() + timeout_s
    while read_pid(data_dir) is None:
        if clock.monotonic() >= deadline or _reaped(data_dir):
            return False
        time.sleep(0.1)
    return True


def _reaped(data_dir: Path) -> bool:
    """True when a daemon this process started for the node has exited (its exit status collected)."""
    pid = _started.get(data_dir)
    if pid is None:
        return False
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return False
    return True
