"""Host-side links to a running test guest: its control shell, its console log, and the records on its disk.

The guest's side of each is described in images.testguest. Everything that waits takes a `clock`
(seconds, never going backwards), defaulting to `time.perf_counter`: this package imports nothing of
Cairn's, so it cannot use appliance.clock; pass that in from code that can.
"""

from __future__ import annotations

import re
import secrets
import shlex
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Clock = Callable[[], float]
RECORD_BYTES = 4096
POLL_S = 0.02
HANDSHAKE_RETRY_S = 0.5

TICK = re.compile(r"^TICK bootid=([0-9a-f]+) n=(\d+) up=([\d.]+)$")
ACK = re.compile(r"^ACK (\d+)$", re.MULTILINE)
IOPS = re.compile(r"^IOPS count=(\d+) elapsed_ms=(\d+) iops=(\d+|-)$", re.MULTILINE)
RECORD = re.compile(rb"CAIRN-RECORD n=(\d+) bootid=([0-9a-f]+)\n")


class GuestLinkError(RuntimeError):
    """The guest did not answer as expected; `output` holds what it printed before that."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


class GuestTimeout(GuestLinkError, TimeoutError):
    """The guest did not answer in time; `output` holds what it printed so far."""


@dataclass(frozen=True)
class Result:
    """What a command printed (stdout and stderr together) and its exit status."""

    output: str
    status: int


class ControlShell:
    """The guest's control shell on ttyS1, reached through the unix socket of qemu's chardev.

    Each command runs in its own `sh -c` inside the guest, so a syntax error cannot end the shell
    and no state (working directory, variables) carries over from one command to the next.
    """

    def __init__(self, connection: socket.socket, clock: Clock) -> None:
        self._connection = connection
        self._clock = clock
        self._pending = ""
        self._serial = secrets.randbelow(10**6) * 10

    @classmethod
    def connect(cls, path: Path | str, timeout_s: float = 30.0, clock: Clock = time.perf_counter) -> ControlShell:
        """Connect to the socket and handshake: send `echo =H$((k+1))=` until the guest answers `=H<k+1>=`.

        Input sent before the guest's shell has opened the port is lost, hence the retries.
        """
        deadline = clock() + timeout_s
        connection = _connect_unix(str(path), deadline, clock)
        shell = cls(connection, clock)
        try:
            while True:
                shell._serial += 1
                expected = f"=H{shell._serial + 1}="
                shell._send(f"echo =H$(({shell._serial}+1))=\n")
                if shell._read_until(lambda line, e=expected: line == e,
                                     min(deadline, clock() + HANDSHAKE_RETRY_S)) is not None:
                    return shell
                if clock() >= deadline:
                    raise GuestTimeout(f"the control shell on {path} did not answer within {timeout_s:g} s; "
                                       "is the guest booted with a second serial port?")
        except BaseException:
            connection.close()
            raise

    def execute(self, command: str, timeout_s: float = 30.0) -> Result:
        """Run `command` in the guest and return its output and exit status.

        GuestTimeout (with the output so far) when it has not finished within `timeout_s`;
        GuestLinkError when the connection closes first (the guest or qemu went away).
        """
        self._serial += 1
        begin, end = f"=B{self._serial + 1}=", f"=E{self._serial + 1}= "
        self._send(f"echo =B$(({self._serial}+1))=\nsh -c {shlex.quote(command)} 2>&1\n"
                   f"echo =E$(({self._serial}+1))= $?\n")
        deadline = self._clock() + timeout_s
        if self._read_until(lambda line: line == begin, deadline) is None:
            raise GuestTimeout(f"the guest did not start {command!r} within {timeout_s:g} s")
        lines = []
        while True:
            line = self._read_until(lambda _: True, deadline, partial_output=lines)
            if line is None:
                raise GuestTimeout(f"{command!r} did not finish within {timeout_s:g} s", _joined(lines))
            if line.startswith(end):
                return Result(_joined(lines), int(line[len(end):]))
            lines.append(line)

    def run(self, command: str, timeout_s: float = 30.0) -> str:
        """Run `command` in the guest and return its output; GuestLinkError if it exits with a non-zero status."""
        result = self.execute(command, timeout_s)
        if result.status != 0:
            raise GuestLinkError(f"{command!r} failed in the guest with status {result.status}: "
                                 f"{result.output.strip()[-500:]}", result.output)
        return result.output

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> ControlShell:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def _send(self, text: str) -> None:
        try:
            self._connection.sendall(text.encode())
        except OSError as error:
            raise GuestLinkError(f"the control shell connection failed: {error}") from None

    def _read_until(self, wanted: Callable[[str], bool], deadline: float, partial_output: list | None = None):
        """The next line for which `wanted` is true, skipping the others; None at the deadline."""
        while True:
            while "\n" in self._pending:
                line, self._pending = self._pending.split("\n", 1)
                line = line.replace("\r", "")
                if wanted(line):
                    return line
            remaining = deadline - self._clock()
            if remaining <= 0:
                return None
            self._connection.settimeout(min(remaining, 1.0))
            try:
                data = self._connection.recv(65536)
            except TimeoutError:
                continue
            except OSError as error:
                raise GuestLinkError(f"the control shell connection failed: {error}",
                                     _joined(partial_output or [])) from None
            if not data:
                raise GuestLinkError("the control shell connection closed (did the guest or qemu stop?)",
                                     _joined(partial_output or []))
            self._pending += data.decode("utf-8", errors="replace")


def _joined(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def _connect_unix(path: str, deadline: float, clock: Clock) -> socket.socket:
    """A connection to a unix socket that may not exist yet (qemu still starting)."""
    while True:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connection.connect(path)
            return connection
        except (FileNotFoundError, ConnectionRefusedError) as error:
            connection.close()
            if clock() >= deadline:
                raise GuestTimeout(f"cannot connect to {path}: {error}") from None
            time.sleep(POLL_S)


# -- the console log


@dataclass(frozen=True)
class LogLine:
    """A line of a log file that matched: its text (without the line end), the match, and the file offsets
    of its first byte and of the byte just after its line end."""

    text: str
    match: re.Match
    start_offset: int
    end_offset: int


def wait_for_line(path: Path | str, pattern: str | re.Pattern, timeout_s: float, start_offset: int = 0,
                  clock: Clock = time.perf_counter) -> LogLine:
    """The first complete line after `start_offset` of a growing log file that `pattern` matches (re.search).

    The file may not exist yet. TimeoutError, with the last line seen, when none matches within `timeout_s`.
    """
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    deadline, offset, pending, last = clock() + timeout_s, start_offset, b"", ""
    while True:
        try:
            with open(path, "rb") as log:
                log.seek(offset)
                pending += log.read()
                offset = log.tell()
        except FileNotFoundError:
            pass
        consumed = offset - len(pending)
        while b"\n" in pending:
            raw, pending = pending.split(b"\n", 1)
            line_start, consumed = consumed, consumed + len(raw) + 1
            last = raw.decode("utf-8", errors="replace").replace("\r", "")
            match = regex.search(last)
            if match:
                return LogLine(last, match, line_start, consumed)
        if clock() >= deadline:
            raise TimeoutError(f"no line matching {regex.pattern!r} in {path} within {timeout_s:g} s "
                               f"(last line: {last!r})")
        time.sleep(POLL_S)


@dataclass(frozen=True)
class Tick:
    """One TICK line: the guest's boot id, its counter, its uptime, and (from a TickWatcher) when the host read it."""

    bootid: str
    n: int
    uptime_s: float
    host_s: float | None = None


def _ticks_in(text: str, host_s: float | None = None) -> list[Tick]:
    found = []
    for line in text.splitlines():
        match = TICK.match(line.replace("\r", ""))
        if match:
            found.append(Tick(match.group(1), int(match.group(2)), float(match.group(3)), host_s))
    return found


def ticks(path: Path | str, start_offset: int = 0) -> list[Tick]:
    """Every complete TICK line of a console log from `start_offset` on, in order."""
    with open(path, "rb") as log:
        log.seek(start_offset)
        data = log.read()
    return _ticks_in(data[:data.rfind(b"\n") + 1].decode("utf-8", errors="replace"))


class TickWatcher:
    """Follows a console log: each `poll` returns the TICK lines completed since the last, stamped with the host clock."""

    def __init__(self, path: Path | str, start_offset: int = 0, clock: Clock = time.perf_counter) -> None:
        self.path, self.offset, self._clock = Path(path), start_offset, clock

    def poll(self) -> list[Tick]:
        try:
            with open(self.path, "rb") as log:
                log.seek(self.offset)
                data = log.read()
        except FileNotFoundError:
            return []
        complete = data[:data.rfind(b"\n") + 1]
        self.offset += len(complete)
        return _ticks_in(complete.decode("utf-8", errors="replace"), self._clock())


# -- records and benchmarks written by the guest's helper scripts


def acknowledged(output: str) -> list[int]:
    """The record numbers a `records` run acknowledged (its `ACK n` lines), in order."""
    return [int(n) for n in ACK.findall(output)]


def record_on_disk(disk: Path | str, n: int) -> str | None:
    """The boot id in record `n` of a raw disk file, or None when the record there is missing or not record n."""
    with open(disk, "rb") as image:
        image.seek(n * RECORD_BYTES)
        block = image.read(RECORD_BYTES)
    match = RECORD.match(block)
    if match is None or int(match.group(1)) != n:
        return None
    return match.group(2).decode()


@dataclass(frozen=True)
class Iops:
    """What `iops` measured in the guest."""

    count: int
    elapsed_ms: int
    iops: int | None


def iops_result(output: str) -> Iops:
    """The result line of an `iops` run; GuestLinkError when there is none."""
    match = IOPS.search(output)
    if match is None:
        raise GuestLinkError(f"no IOPS line in the guest's output: {output.strip()[-300:]!r}", output)
    rate = match.group(3)
    return Iops(int(match.group(1)), int(match.group(2)), None if rate == "-" else int(rate))
