"""Fencing: how a node's instances are made dead, and the watchdog process that does it when its lease lapses.

`cairn watchdog --data-dir DIR` runs beside the node's daemon, as a hardware
watchdog resets a machine: the daemon renews a local lease with it only while
the daemon itself holds a lease granted by the current leader
(`appliance.daemon.shell`), and when that local lease lapses the watchdog
runs the node's fence methods and never starts anything itself. The daemon
dying, hanging, being stopped or being cut off from the leader all end the
same way: after the fencing interval every instance process of the node is
dead. The leader waits the longer recovery interval before it records the
fence proof (docs/fencing.md has the timing rules).

Protocol: datagrams on `DIR/watchdog.sock` (0600), each one JSON object
`{"until": T, "armed": bool}`, T on CLOCK_BOOTTIME (it keeps counting while
the machine is suspended, so a resumed node finds its lease already lapsed).
A renewal never shortens the lease (a late datagram carries an earlier T).
`armed: false` (recovery disarmed, or the node in maintenance) stands the
watchdog down: nothing is killed while it is down.

Fence methods (`FenceMethod`): `KillInstances` SIGKILLs the hypervisor's
instance processes, read from their pid files, and checks they are gone;
`WatchdogDevice` feeds `/dev/watchdog` (softdog or hardware) only while the
lease holds or the kill was verified, so a watchdog that is itself stopped
still ends in a reset; `OobProgram` powers a node off through an
out-of-band program (IPMI, Redfish), as Ganeti's `oob_program`, for a fencer
on another node. Only the first two run in the watchdog today.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from appliance.clock import boottime

log = logging.getLogger("cairn.watchdog")

SOCKET_NAME = "watchdog.sock"
PID_NAME = "watchdog.pid"
LOG_NAME = "watchdog.log"
POLL_S = 0.05
KILL_VERIFY_S = 2.0
QUIET = "killed 0 "          # a fence that found nothing left to kill is not logged again


class FenceMethod:
    """One way to make a node's instances dead. `fence()` returns what it did, for the log; it raises
    OSError when it could not (the caller tries again)."""

    name = "fence"

    def fence(self) -> str:
        raise NotImplementedError


def _process_alive(pid: int, token: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    # The token (random, at least 16 bytes of hex) is an argument of the fake guest, and part of one of QEMU's
    # (its run-token object): a process carrying it is the instance, whatever reused its pid otherwise.
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X") and len(token) >= 16 \
        and any(token.encode() in argument for argument in cmdline)


# Where a node's hypervisor drivers keep their instances, under its data dir: the process fake, then QEMU.
HYPERVISOR_DIRS = ("hv", "kvm")


class KillInstances(FenceMethod):
    """SIGKILL every instance process the node's hypervisor recorded (`hv/instances/*/pid`: "PID TOKEN"; the
    token on the process's command line guards against a reused pid), then check that each is gone."""

    name = "kill-instances"

    def __init__(self, instances_dir: Path) -> None:
        self.instances_dir = instances_dir

    def running(self) -> list[tuple[str, int, str]]:
        found = []
        for pid_file in sorted(self.instances_dir.glob("*/pid")) + sorted(self.instances_dir.glob(".new-*/pid")):
            with contextlib.suppress(OSError, ValueError):
                pid, token = pid_file.read_text().split()
                if _process_alive(int(pid), token):
                    found.append((pid_file.parent.name, int(pid), token))
        return found

    def fence(self) -> str:
        victims = self.running()
        for _, pid, _ in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = boottime() + KILL_VERIFY_S
        while any(_process_alive(pid, token) for _, pid, token in victims):
            if boottime() >= deadline:
                left = [name for name, pid, token in victims if _process_alive(pid, token)]
                raise OSError(f"instance processes still alive after SIGKILL: {', '.join(left)}")
            time.sleep(0.01)
        return f"killed {len(victims)} instance process(es)" + (
            f": {', '.join(name for name, _, _ in victims)}" if victims else "")


class WatchdogDevice:
    """`/dev/watchdog` (softdog or a hardware watchdog): opened once and kept open; fed while the lease holds
    or the node's instances are known dead. If the watchdog process stops, the device resets the machine."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY)

    def feed(self) -> None:
        os.write(self.fd, b"\0")

    def close(self) -> None:
        """A clean stop: the magic close ('V') disarms drivers that support it."""
        with contextlib.suppress(OSError):
            os.write(self.fd, b"V")
        os.close(self.fd)


class OobProgram(FenceMethod):
    """Power a node off through an out-of-band program: `PROGRAM power-off NODE`, exit 0 on success (Ganeti's
    oob_program convention). For a fencer on another node; not run by the local watchdog."""

    name = "oob"

    def __init__(self, program: str, node: str, timeout_s: float = 60.0) -> None:
        self.program, self.node, self.timeout_s = program, node, timeout_s

    def fence(self) -> str:
        try:
            done = subprocess.run([self.program, "power-off", self.node], capture_output=True, text=True,
                                  timeout=self.timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise OSError(f"out-of-band program {self.program} failed for {self.node}: {error}") from None
        if done.returncode != 0:
            raise OSError(f"out-of-band program {self.program} power-off {self.node} exited {done.returncode}: "
                          f"{done.stderr.strip()[:200]}")
        return f"powered off {self.node} through {self.program}"


class Watchdog:
    """The local lease and what happens when it lapses; `step(now)` is called every POLL_S."""

    def __init__(self, methods: list[FenceMethod], device: WatchdogDevice | None = None) -> None:
        self.methods = methods
        self.device = device
        self.until: float | None = None     # None: never renewed, nothing to enforce yet
        self.armed = False
        self.fenced = False                 # the lease lapsed and every method succeeded

    def renew(self, until: float, armed: bool) -> None:
        if self.until is None or until > self.until:
            self.until = until
        self.armed = bool(armed)
        if self.until is not None and self.until > boottime():
            self.fenced = False

    def step(self, now: float) -> None:
        """While the lease is lapsed (and armed), fence at every poll, not once: an instance can still arrive
        after the first kill (a live migration the source drives lands here), and it must die too."""
        lapsed = self.armed and self.until is not None and now >= self.until
        if lapsed:
            self.fenced = self._fence(now, first=not self.fenced)
        if self.device is not None and (not lapsed or self.fenced):
            self.device.feed()

    def _fence(self, now: float, first: bool) -> bool:
        if first:
            log.warning("lease lapsed %.2f s ago: fencing this node's instances", now - self.until)
        done = True
        for method in self.methods:
            try:
                what = method.fence()
                if first or not what.startswith(QUIET):
                    log.warning("%s: %s", method.name, what)
            except OSError as error:
                log.error("%s failed (trying again): %s", method.name, error)
                done = False
        return done


def message_of(data: bytes) -> tuple[float, bool] | None:
    """A renewal datagram's (until, armed), or None when it is malformed (ignored, and logged)."""
    try:
        value = json.loads(data)
        return float(value["until"]), bool(value["armed"])
    except (ValueError, KeyError, TypeError):
        return None


def open_socket(data_dir: Path) -> socket.socket:
    path = data_dir / SOCKET_NAME
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    sock.setblocking(False)
    return sock


def run(data_dir: Path, device_path: str = "") -> None:
    """The watchdog's loop, until SIGTERM or SIGINT (a clean stop fences nothing)."""
    sock = open_socket(data_dir)
    device = WatchdogDevice(device_path) if device_path else None
    watchdog = Watchdog([KillInstances(data_dir / part / "instances") for part in HYPERVISOR_DIRS], device)
    stopping = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.append(True))
    pid_path = data_dir / PID_NAME
    pid_path.write_text(f"{os.getpid()}\n")
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    log.info("watchdog for %s running (pid %d)", data_dir, os.getpid())
    try:
        while not stopping:
            if selector.select(POLL_S):
                with contextlib.suppress(BlockingIOError, InterruptedError):
                    while True:
                        parsed = message_of(sock.recv(4096))
                        if parsed is None:
                            log.warning("ignored a malformed renewal")
                        else:
                            watchdog.renew(*parsed)
            watchdog.step(boottime())
    finally:
        if device is not None:
            device.close()
        sock.close()
        with contextlib.suppress(OSError):
            (data_dir / SOCKET_NAME).unlink()
        with contextlib.suppress(OSError):
            if pid_path.read_text().strip() == str(os.getpid()):
                pid_path.unlink()
        log.info("watchdog stopped")


class WatchdogLink:
    """The daemon's side: send renewals to the watchdog's socket (none running is no error: logged once)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = str(data_dir / SOCKET_NAME)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.warned = False

    def renew(self, until: float, armed: bool) -> bool:
        try:
            self.sock.sendto(json.dumps({"until": until, "armed": armed}).encode(), self.path)
        except OSError as error:
            if not self.warned:
                log.warning("no watchdog answers at %s (%s): this node's instances are not fenced if its daemon "
                            "dies; start 'cairn watchdog --data-dir DIR'", self.path, error)
                self.warned = True
            return False
        self.warned = False
        return True

    def close(self) -> None:
        self.sock.close()


def main(data_dir: str, device: str = "", log_level: str = "INFO") -> None:
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run(Path(data_dir).resolve(), device)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
