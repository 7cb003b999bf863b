"""`cairn instance console` on a local 3-node cluster of real daemons: the test guest's serial output reaches it.

The test guest prints a TICK line every 100 ms on its serial console; the
command, run as a user would with stdin not a terminal, must pass them to its
stdout, over the local node's socket and over TLS from another node's API, and
end by itself once stdin ends. Skipped where qemu or the guest is missing.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import time

import pytest

from images import guestlink
from tests.integration.cluster_support import CAIRN, started
from tests.integration.qemu_support import add_instance, guest_or_skip, instance_id, wait_booted

pytestmark = [pytest.mark.qemu, pytest.mark.slow]
WANTED_TICKS = 5


@pytest.fixture(scope="module")
def guest():
    return guest_or_skip()


def console_ticks(cluster, *options: str, timeout_s: float = 60.0) -> tuple[list[guestlink.Tick], int, str]:
    """Run `cairn instance console vm1` with a pipe as stdin until WANTED_TICKS TICK lines came out, then close
    stdin: the TICK lines seen, the exit status and stderr."""
    process = subprocess.Popen([CAIRN, "instance", "console", "vm1", "--timeout", "0.5", *options],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cluster.env)
    try:
        ticks = read_ticks(process, timeout_s)
        process.stdin.close()
        status = process.wait(timeout=30)
        return ticks, status, process.stderr.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            stream.close()


def read_ticks(process: subprocess.Popen, timeout_s: float) -> list[guestlink.Tick]:
    """The TICK lines of the process's stdout, read until WANTED_TICKS came or it ended or the time ran out."""
    deadline = time.monotonic() + timeout_s
    buffer, ticks = b"", []
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while len(ticks) < WANTED_TICKS and time.monotonic() < deadline:
            if not selector.select(max(0.0, deadline - time.monotonic())):
                continue
            data = os.read(process.stdout.fileno(), 65536)
            if not data:
                break
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                match = guestlink.TICK.match(line.decode("utf-8", "replace").replace("\r", ""))
                if match:
                    ticks.append(guestlink.Tick(match.group(1), int(match.group(2)), float(match.group(3))))
    assert len(ticks) >= WANTED_TICKS, f"only {len(ticks)} TICK lines within {timeout_s:g} s"
    return ticks


def assert_counting(ticks: list[guestlink.Tick], bootid: str) -> None:
    assert {tick.bootid for tick in ticks} == {bootid}, ticks
    numbers = [tick.n for tick in ticks]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), f"ticks missing or repeated: {numbers}"


def test_the_console_passes_the_guests_output_and_ends_with_stdin(tmp_path, guest):
    """A guest booted on node1 counts on the command's stdout, through node1's socket and over TLS when another
    node is asked; the command exits 0 once stdin ends. A read-only user is refused, saying the role needed."""
    with started(tmp_path, 3, "kvm") as cluster:
        add_instance(cluster, guest, "vm1", "node1")
        bootid = wait_booted(cluster, "node1", instance_id(cluster, "vm1"))

        ticks, status, stderr = console_ticks(cluster)
        assert status == 0, stderr
        assert_counting(ticks, bootid)

        ticks, status, stderr = console_ticks(cluster, "--api", cluster.address("node2"))
        assert status == 0, stderr
        assert_counting(ticks, bootid)

        token = cluster.run("user", "add", "viewer", "--role", "read-only").stdout.split()[-1]
        refused = cluster.run("instance", "console", "vm1", check=False, input_text="",
                              env={**cluster.env, "CAIRN_TOKEN": token})
        assert refused.returncode == 1 and refused.stdout == ""
        assert "permission_denied" in refused.stderr and "role operator" in refused.stderr
