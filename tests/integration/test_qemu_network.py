"""Bridged NICs under the QEMU driver, for real: two nodes, each a network namespace with its own bridge.

Node A (namespace `cq<pid>a`, bridge brA) and node B (`cq<pid>b`, bridge brB) are joined by a veth
pair, the way two hosts' bridges are joined by their uplinks. In each, a QemuHypervisor (run by
`ip netns exec`, so that QEMU and its tap live there) starts the test guest with one bridged NIC
and `ip4=` on its command line; guest 1 then pings guest 2 from its control shell. The netdev
helper is also run on its own (no QEMU) to check the tap's life and its refusals.

Needs root and iproute2; the guest tests also need qemu and the test guest (reused from the cache,
`$CAIRN_CACHE` or ~/.cache/cairn, or built there first). Every interface and address (10.99.0.0/24)
is inside the namespaces the test makes; nothing is added to the host's own network, and every
QEMU is killed by pid and the namespaces deleted at the end, failure or not.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from appliance.drivers import netdev
from appliance.drivers.qemu import InstanceFiles, qemu_alive, read_pid, socket_dir
from images import guestlink
from tests.integration.qemu_support import guest_or_skip

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT_S = 120
COMMAND_TIMEOUT_S = 60
NET_UP = r"GUEST-NET-UP (\S+)"
# Runs in a node's namespace: start or stop one instance with the QEMU driver, then exit (QEMU daemonizes).
DRIVER_SCRIPT = """
import json, sys, trio
from pathlib import Path
from appliance.drivers.qemu import QemuHypervisor

async def main(action, state_dir, instance, spec):
    driver = QemuHypervisor(Path(state_dir), "node", accel="tcg")
    try:
        if action == "start":
            await driver.start(instance, spec)
        else:
            await driver.stop(instance, 0)
    finally:
        await driver.aclose()

trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
"""


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30).stdout


class Nodes:
    """Two node namespaces, each with a bridge, joined by a veth pair; QEMU state dirs under `root`."""

    def __init__(self, root: Path) -> None:
        tag = os.getpid() % 100000
        self.root = root
        self.spaces = {"a": f"cq{tag}a", "b": f"cq{tag}b"}
        self.bridges = {"a": "brA", "b": "brB"}
        self.uplinks = {"a": "upA", "b": "upB"}
        self.made: list[str] = []

    def network(self) -> None:
        for node, space in self.spaces.items():
            ip("netns", "add", space)
            self.made.append(space)
            ip("-n", space, "link", "set", "lo", "up")
            ip("-n", space, "link", "add", self.bridges[node], "type", "bridge")
            ip("-n", space, "link", "set", self.bridges[node], "up")
        ip("-n", self.spaces["a"], "link", "add", self.uplinks["a"], "type", "veth", "peer", "name",
           self.uplinks["b"], "netns", self.spaces["b"])
        for node, space in self.spaces.items():
            ip("-n", space, "link", "set", self.uplinks[node], "master", self.bridges[node])
            ip("-n", space, "link", "set", self.uplinks[node], "up")

    def state_dir(self, node: str) -> Path:
        return self.root / node

    def files(self, node: str, instance: str) -> InstanceFiles:
        entry = self.state_dir(node) / "instances" / instance
        return InstanceFiles(entry, socket_dir(entry))

    def driver(self, node: str, action: str, instance: str, spec: dict | None = None) -> subprocess.CompletedProcess:
        """Run the QEMU driver's start or stop in the node's namespace."""
        return subprocess.run(["ip", "netns", "exec", self.spaces[node], sys.executable, "-c", DRIVER_SCRIPT, action,
                               str(self.state_dir(node)), instance, json.dumps(spec or {})],
                              capture_output=True, text=True, timeout=120, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})

    def links(self, node: str) -> str:
        return ip("-n", self.spaces[node], "-o", "link", "show")

    def stop(self) -> None:
        """Kill by pid every QEMU of these nodes (by their pid files, then any whose command line names our
        directory: a start cut short has none), then delete the namespaces."""
        for pid_file in self.root.glob("*/instances/*/pid"):
            process = read_pid(InstanceFiles(pid_file.parent))
            if process is not None and qemu_alive(*process):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process[0], signal.SIGKILL)
        for proc in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                if proc.name.isdigit() and os.fsencode(self.root) in (proc / "cmdline").read_bytes() \
                        and b"qemu-system" in (proc / "cmdline").read_bytes():
                    os.kill(int(proc.name), signal.SIGKILL)
        for space in reversed(self.made):
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                ip("netns", "del", space)


@pytest.fixture
def nodes():
    if os.geteuid() != 0:
        pytest.skip("bridged NICs need root to make network namespaces, bridges and taps; run the test as root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 is not installed (apt-get install iproute2)")
    # A short state dir of its own: pytest's tmp_path makes QEMU's socket paths too long.
    made = Nodes(Path(tempfile.mkdtemp(prefix="cairn-net-")))
    try:
        try:
            made.network()
        except (OSError, subprocess.CalledProcessError) as error:
            pytest.skip(f"network namespaces or bridges are not permitted here "
                        f"({getattr(error, 'stderr', '') or error}); the test needs root and iproute2")
        yield made
    finally:
        made.stop()
        shutil.rmtree(made.root, ignore_errors=True)


def guest_spec(guest, name: str, mac: str, bridge: str, address: str) -> dict:
    return {"name": name, "memory_mib": 256, "vcpus": 1, "disks": [], "hypervisor": "kvm",
            "disk_template": "diskless", "nics": [{"mac": mac, "mode": "bridged", "link": bridge}],
            "hvparams": {"kernel_path": str(guest.kernel), "initrd_path": str(guest.initrd),
                         "kernel_args": guest.cmdline(tick=False, ip4=address)}}


def run_helper(nodes: Nodes, node: str, tap: str, bridge: str) -> tuple[subprocess.Popen, socket.socket]:
    """The netdev helper started in the node's namespace as QEMU starts it; our end of its socket."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    command = netdev.helper_command(tap, bridge) + f" --use-vnet --fd={theirs.fileno()}"
    helper = subprocess.Popen(["ip", "netns", "exec", nodes.spaces[node], "sh", "-c", command],
                              pass_fds=[theirs.fileno()], stderr=subprocess.PIPE, text=True)
    theirs.close()
    return helper, ours


@pytest.mark.qemu
def test_two_guests_on_bridges_of_two_nodes_ping_each_other(nodes):
    """Each guest's NIC is a tap on its node's bridge with the cluster's MAC; guest 1 pings guest 2 across the
    nodes' link, and stopping an instance removes its tap."""
    guest = guest_or_skip()
    macs = {"a": "aa:00:00:99:00:01", "b": "aa:00:00:99:00:02"}
    addresses = {"a": "10.99.0.1/24", "b": "10.99.0.2/24"}
    instances = {"a": f"inst-neta{os.getpid()}", "b": f"inst-netb{os.getpid()}"}
    launches = {node: subprocess.Popen(
        ["ip", "netns", "exec", nodes.spaces[node], sys.executable, "-c", DRIVER_SCRIPT, "start",
         str(nodes.state_dir(node)), instances[node],
         json.dumps(guest_spec(guest, f"vm-{node}", macs[node], nodes.bridges[node], addresses[node]))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}) for node in ("a", "b")}
    for node, launch in launches.items():
        _, errors = launch.communicate(timeout=120)
        assert launch.returncode == 0, f"start on node {node} failed: {errors[-2000:]}"
    for node in ("a", "b"):
        tap = netdev.tap_name(instances[node], 0)
        assert len(tap) <= netdev.MAX_INTERFACE_NAME
        line = next(line for line in nodes.links(node).splitlines() if f" {tap}:" in line)
        assert f"master {nodes.bridges[node]}" in line and "UP" in line, line
        up = guestlink.wait_for_line(nodes.files(node, instances[node]).console_log, NET_UP, BOOT_TIMEOUT_S)
        assert up.match.group(1) == addresses[node]

    with guestlink.ControlShell.connect(nodes.files("a", instances["a"]).control, timeout_s=COMMAND_TIMEOUT_S) as shell:
        link = shell.run("ip link show eth0")
        assert macs["a"] in link
        pinged = shell.execute("ping -c 3 -W 5 10.99.0.2", timeout_s=COMMAND_TIMEOUT_S)
    assert pinged.status == 0, pinged.output
    assert re.search(r"3 packets transmitted, 3 packets received", pinged.output), pinged.output
    assert "bytes from 10.99.0.2" in pinged.output

    stopped = nodes.driver("b", "stop", instances["b"])
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert netdev.tap_name(instances["b"], 0) not in nodes.links("b")


@pytest.mark.qemu
def test_a_nic_on_a_missing_bridge_fails_the_start_naming_the_bridge(nodes):
    """Starting an instance whose NIC's link names no bridge on the node fails with the bridge and how to make it;
    nothing of the instance is left running."""
    guest = guest_or_skip()
    spec = guest_spec(guest, "vm-lost", "aa:00:00:99:00:03", "brMissing", "10.99.0.3/24")
    result = nodes.driver("a", "start", "inst-lost", spec)
    assert result.returncode != 0
    error = next(line for line in result.stderr.splitlines() if line.startswith("appliance.drivers.base.DriverError"))
    assert "QEMU did not start instance inst-lost" in error
    assert "bridge brMissing does not exist on this node" in error and "ip link add brMissing type bridge" in error
    assert not (nodes.state_dir("a") / "instances" / "inst-lost").exists()
    assert netdev.tap_name("inst-lost", 0) not in nodes.links("a")


def test_the_helper_makes_a_tap_on_the_bridge_that_lives_as_long_as_it_is_held(nodes):
    """The helper hands over a tap with the given name on the bridge, up, with the bridge's MTU; the tap is
    gone once the last holder closes it."""
    nodes_mtu = "1400"
    ip("-n", nodes.spaces["a"], "link", "set", nodes.bridges["a"], "mtu", nodes_mtu)
    tap = netdev.tap_name("inst-helper", 3)
    helper, ours = run_helper(nodes, "a", tap, nodes.bridges["a"])
    with ours:
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)
    assert helper.wait(timeout=30) == 0, helper.stderr.read()
    assert len(fds) == 1
    try:
        line = next(line for line in nodes.links("a").splitlines() if f" {tap}:" in line)
        assert f"master {nodes.bridges['a']}" in line and f"mtu {nodes_mtu}" in line and "UP" in line, line
    finally:
        os.close(fds[0])
    assert f" {tap}:" not in nodes.links("a")


def test_the_helper_refuses_a_link_that_is_not_a_bridge(nodes):
    """A NIC whose link is some other interface (here the node's uplink) is refused, naming it, and no tap stays."""
    tap = netdev.tap_name("inst-helper", 0)
    helper, ours = run_helper(nodes, "a", tap, nodes.uplinks["a"])
    with ours:
        assert ours.recv(1) == b""
    assert helper.wait(timeout=30) == 1
    assert f"{nodes.uplinks['a']} is a network interface but not a bridge" in helper.stderr.read()
    assert f" {tap}:" not in nodes.links("a")


def test_the_helper_refuses_a_tap_name_in_use(nodes):
    """A second holder of the same tap name (an instance already running here) is refused with what to do."""
    tap = netdev.tap_name("inst-twice", 0)
    first, ours = run_helper(nodes, "a", tap, nodes.bridges["a"])
    with ours:
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)
    assert first.wait(timeout=30) == 0
    try:
        second, theirs = run_helper(nodes, "a", tap, nodes.bridges["a"])
        with theirs:
            assert theirs.recv(1) == b""
        assert second.wait(timeout=30) == 1
        assert f"tap {tap} is in use by another process" in second.stderr.read()
    finally:
        os.close(fds[0])
