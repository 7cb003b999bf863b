"""The fake hypervisor: one real OS process per instance, so a kill is a real kill and a crash a real crash.

Each instance is a POSIX shell (`/bin/sh`, dash on Debian: about 150 KiB of private memory, so a
thousand instances fit in a few hundred MiB) that blocks reading its own FIFO and acts on signals:

- SIGUSR1: the guest powers itself off (writes `exit` = "shutdown", exits 0);
- SIGUSR2: the guest does one unit of work: its in-memory counter goes up by one to N and, for an
  instance whose spec says `"disk_template": "replicated"`, it writes record N to each of its
  disks (indexes 0 .. len(spec["disks"]) - 1) with the write protocol of `records.py`: the copy on
  the node it runs on, then the peer copy that `set_peer` named, then the acknowledgement;
- SIGHUP / SIGCONT: pause (dump the counter, stop counting) and resume, the stop-and-copy of a
  live migration;
- SIGTERM: the ACPI request of `stop`; a guest whose spec says `"acpi": False` ignores it and is
  killed when `stop`'s timeout ends.

The guest is started by a short-lived launcher in a session of its own, so it is nobody's child:
it outlives the driver object and the daemon, and the driver knows it only by its files under
`state_dir/instances/<instance id>/`: `pid` ("PID TOKEN", the token being an argument of the
guest's command line, so a reused pid is never mistaken for the guest), `spec.json` (canonical
JSON), `console` (the FIFO), `ready`, `memory` (the counter), `exit` (the guest's own exit cause)
and `stopping` (written by the driver before it ends the guest). A process that is gone without
an `exit` marker, and without `stopping`, died by a signal or an error: it is listed crashed.
Entries are built in a hidden `.new-*` directory and renamed into place once the guest is ready,
so `list` never sees half an instance. Liveness is read from /proc: Linux only.

Migration stays on this machine: `peers` maps node names to their state dirs, which stand for
what a real cluster reaches over the data plane; `disk_roots` maps node names to their storage roots
(FileStorage), where a replicated guest finds its disk copies. A guest starting or arriving on a node
continues its counter after the highest record of its copies there, so after a failover to the
former secondary the records go on without a gap. One driver object per state dir at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import trio

from appliance.drivers import records
from appliance.drivers.base import CRASHED, RUNNING, SHUTDOWN, DriverError, Hypervisor, poll_until

SHELL = "/bin/sh"
GUEST_NAME = "cairn-fake-guest"
READY_TIMEOUT_S = 5.0
KILL_TIMEOUT_S = 5.0
PAUSE_TIMEOUT_S = 5.0
POLL_S = 0.005
INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")

# The guest: $1 is its token, $2 its counter, $3 "0" when it ignores the stop request, and then the
# copy prefix of each replicated disk (records.py). Its files are relative to its working directory,
# which follows the entry directory when it is renamed into place. A unit of work with replicated
# disks writes record n to each: the local copy, then the peer copy named in `.mirror` (or, when the
# peer cannot be reached, the local `degraded` list), and only after every disk the acknowledgement.
# The traps only note what was asked, and the main loop does it when its read of the console returns
# (a trapped signal, or a line the driver writes, ends the read): dash runs traps in the middle of
# other commands, and a trap that wrote a file could take a record out of the main loop's output,
# or change a status it was testing. A pause waits for the unit in progress, so the source of a
# migration never writes after it has said `paused`; work asked while paused is dropped.
GUEST = """
n=$2; p=0; w=0; s=0
[ "$3" = 0 ] && trap '' TERM
shift 3
save() { echo "$n" > memory.tmp && mv memory.tmp memory; }
work() {
  n=$((n + 1)); k=1
  for d; do
    if echo "$n" >> "$d.records"; then
      m=; u=; v=; { read -r m; read -r u; read -r v; } < "$d.mirror" 2>/dev/null
      if [ -z "$m" ] || [ ! -e "$m.records" ] || [ -e "$u" ] || [ -e "$v" ] \\
          || ! { echo "$n" >> "$m.records"; } 2>/dev/null; then
        echo "$n" >> "$d.degraded" || k=0
      fi
    else
      k=0
    fi
  done
  if [ "$k" = 1 ]; then
    for d; do echo "$n" > "$d.acked.tmp" && mv "$d.acked.tmp" "$d.acked"; done
  fi
}
trap 'w=$((w + 1))' USR2
trap 'p=1' HUP
trap 'p=0' CONT
trap 's=1' USR1
exec 3<>console
save; o=$n
: > ready
while :; do
  read -r line <&3 || :
  if [ "$s" = 1 ]; then echo shutdown > exit.tmp && mv exit.tmp exit; exit 0; fi
  while [ "$w" -gt 0 ] && [ "$p" = 0 ]; do w=$((w - 1)); work "$@"; done
  if [ "$p" = 1 ]; then w=0; save; o=$n; : > paused; elif [ -e paused ]; then rm -f paused; fi
  if [ "$n" != "$o" ]; then save; o=$n; fi
done
"""

# The launcher starts the guest in the background and records its pid; when it exits, the guest is
# reparented away from the driver's process, so a driver restart does not touch it.
LAUNCHER = """
guest=$1; shift
"$0" -c "$guest" cairn-fake-guest "$@" </dev/null >/dev/null 2>&1 &
echo "$! $1" > pid.tmp && mv pid.tmp pid
"""


def canonical_json(value) -> str:
    """The one JSON text of a spec: sorted keys, no spaces, so equal specs give equal files."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def guest_alive(pid: int, token: str) -> bool:
    """Whether `pid` is a live fake guest started with `token` (a zombie or a reused pid is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    arguments = cmdline.split(b"\0")
    return state not in ("Z", "X") and GUEST_NAME.encode() in arguments and token.encode() in arguments


def read_pid(entry: Path) -> tuple[int, str] | None:
    """The guest's pid and token recorded in an entry directory, or None if there is none."""
    try:
        pid, token = (entry / "pid").read_text().split()
        return int(pid), token
    except (OSError, ValueError):
        return None


def entry_alive(entry: Path) -> bool:
    guest = read_pid(entry)
    return guest is not None and guest_alive(*guest)


def continued_counter(counter: int, disks: Sequence[Path]) -> int:
    """Where a guest's counter starts: after the highest record on its local copies, so that a guest
    restarted on the former secondary numbers its records on without a gap or a repeat."""
    highest = (max(records.read_record_set(records.with_suffix(prefix, "records")), default=0) for prefix in disks)
    return max(counter, *highest) if disks else counter


def signal_guest(pid: int, token: str, signum: int) -> None:
    """Send `signum` to the guest if it is still that guest; a guest already gone is no error."""
    if guest_alive(pid, token):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def wake_guest(entry: Path) -> None:
    """Write a line to the guest's console, so that it acts on a signal that came just before it blocked.

    The guest acts on signals when its read of the console returns; one that lands after its last
    look and before the read would otherwise wait for the next signal.
    """
    with contextlib.suppress(OSError):
        console = os.open(entry / "console", os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(console, b"\n")
        finally:
            os.close(console)


def ask_guest(entry: Path, guest: tuple[int, str], signum: int) -> None:
    """Send the guest a signal it acts on in its main loop (USR1, USR2, HUP, CONT), and wake it."""
    signal_guest(*guest, signum)
    wake_guest(entry)


def checked_id(instance_id: str) -> str:
    if not INSTANCE_ID.fullmatch(instance_id):
        raise DriverError(f"instance id {instance_id!r} cannot name a directory of the fake hypervisor; "
                          "use letters, digits, '.', '-' and '_', starting with a letter or digit")
    return instance_id


def remove_entry(entry: Path) -> None:
    shutil.rmtree(entry, ignore_errors=True)


async def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll `condition` until it holds (True) or `timeout_s` has passed (False)."""
    return await poll_until(condition, timeout_s, POLL_S)


async def end_guest(entry: Path, instance_id: str, timeout_s: float) -> None:
    """Ask the guest to stop, kill it after `timeout_s`, and wait until it is gone."""
    guest = read_pid(entry)
    if guest is None or not guest_alive(*guest):
        return
    (entry / "stopping").touch()
    signal_guest(*guest, signal.SIGTERM)
    if await wait_until(lambda: not guest_alive(*guest), timeout_s):
        return
    signal_guest(*guest, signal.SIGKILL)
    if not await wait_until(lambda: not guest_alive(*guest), KILL_TIMEOUT_S):
        raise DriverError(f"the process {guest[0]} of instance {instance_id} survived SIGKILL for "
                          f"{KILL_TIMEOUT_S} s; check its state in /proc/{guest[0]}/status (uninterruptible I/O?)")


async def launch_guest(instances: Path, instance_id: str, spec: dict, counter: int,
                       disks: Sequence[Path] = ()) -> None:
    """Start a guest in a hidden directory under `instances`, then rename it into place.

    `disks` are the copy prefixes (absolute) of its replicated disks on this node. A dead entry of
    the same id is replaced; the caller has made sure no live one exists.
    """
    token = secrets.token_hex(8)
    staging = instances / f".new-{instance_id}-{token}"
    launcher = None
    try:
        staging.mkdir()
        (staging / "spec.json").write_text(canonical_json(spec) + "\n")
        os.mkfifo(staging / "console")
        acpi = "0" if spec.get("acpi", True) is False else "1"
        # Shielded: a launcher cancelled between forking the guest and writing its pid would leave a
        # guest nobody knows. It takes milliseconds; cancellation lands right after it.
        with trio.CancelScope(shield=True), trio.move_on_after(READY_TIMEOUT_S):
            launcher = await trio.run_process(
                [SHELL, "-c", LAUNCHER, SHELL, GUEST, token, str(counter), acpi, *map(str, disks)], cwd=staging,
                start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, capture_stderr=True,
                check=False)
        if launcher is None or launcher.returncode != 0:
            reason = "it hung" if launcher is None else launcher.stderr.decode(errors="replace").strip()
            raise DriverError(f"cannot launch the process of instance {instance_id} in {staging}: {reason}; "
                              f"check that {SHELL} works and the state dir is writable")
        await wait_ready(staging, instance_id)
        remove_entry(instances / instance_id)
        staging.rename(instances / instance_id)
    except BaseException as error:
        await kill_staging(staging)
        if isinstance(error, OSError):
            raise DriverError(f"cannot start instance {instance_id} under {instances}: {error}; "
                              "check that the state dir exists and is writable") from error
        raise


async def wait_ready(staging: Path, instance_id: str) -> None:
    """Wait until the guest has set its signal handlers (before that, SIGUSR1 would simply kill it)."""
    came_up = await wait_until(lambda: (staging / "ready").exists() or not entry_alive(staging), READY_TIMEOUT_S)
    if not (came_up and entry_alive(staging)):
        raise DriverError(f"the process of instance {instance_id} exited or hung before it was ready "
                          f"(waited up to {READY_TIMEOUT_S} s); check that {SHELL} is a POSIX shell that can run")


async def kill_staging(staging: Path) -> None:
    """Kill a half-started guest and drop its directory (shielded: this runs on cancellation too)."""
    with trio.CancelScope(shield=True):
        guest = read_pid(staging)
        if guest is not None:
            signal_guest(*guest, signal.SIGKILL)
            await wait_until(lambda: not guest_alive(*guest), KILL_TIMEOUT_S)
        remove_entry(staging)


class FakeHypervisor(Hypervisor):
    """The hypervisor port over real processes in `state_dir`; `peers` maps node names to state dirs.

    `disk_roots` maps node names (this one included) to their storage roots (FileStorage roots), where
    a guest of the `replicated` template finds its disk copies on the node it runs on.
    """

    def __init__(self, state_dir: str | os.PathLike, node_name: str,
                 peers: Mapping[str, str | os.PathLike] | None = None,
                 disk_roots: Mapping[str, str | os.PathLike] | None = None) -> None:
        if not Path("/proc/self/stat").exists():
            raise DriverError("the fake hypervisor reads process states from /proc; run it on Linux")
        self.state_dir = Path(state_dir)
        self.node_name = node_name
        # Kept as given (not copied): a live mapping may learn nodes that join after the driver was made.
        self.peers = peers if peers is not None else {}
        self.disk_roots = disk_roots if disk_roots is not None else {}
        self.instances = self.state_dir / "instances"
        self._locks: dict[str, trio.Lock] = {}
        try:
            self.instances.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DriverError(f"cannot use {self.state_dir} as the state dir of node {node_name}: {error}") from error
        self._drop_aborted_starts()

    def _drop_aborted_starts(self) -> None:
        """Kill the guests of starts a previous driver did not finish (never reported started)."""
        for staging in self.instances.glob(".new-*"):
            guest = read_pid(staging)
            if guest is not None:
                signal_guest(*guest, signal.SIGKILL)
            remove_entry(staging)

    def _lock(self, instance_id: str) -> trio.Lock:
        return self._locks.setdefault(instance_id, trio.Lock())

    def entry(self, instance_id: str) -> Path:
        return self.instances / checked_id(instance_id)

    def pid(self, instance_id: str) -> int | None:
        """The pid of the instance's live process here, or None."""
        guest = read_pid(self.entry(instance_id))
        return guest[0] if guest is not None and guest_alive(*guest) else None

    # --- the port ---------------------------------------------------------------------

    async def start(self, instance_id: str, spec: dict) -> None:
        entry = self.entry(instance_id)
        async with self._lock(instance_id):
            if entry_alive(entry):
                return
            disks = self._replicated_copies(instance_id, spec, self.node_name)
            await launch_guest(self.instances, instance_id, spec, continued_counter(0, disks), disks)

    async def stop(self, instance_id: str, timeout_s: float) -> None:
        entry = self.entry(instance_id)
        async with self._lock(instance_id):
            await end_guest(entry, instance_id, timeout_s)
            remove_entry(entry)

    async def list(self) -> dict[str, str]:
        statuses = {}
        for entry in sorted(self.instances.iterdir()):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            status = self._status(entry)
            if status is not None:
                statuses[entry.name] = status
        return statuses

    def _status(self, entry: Path) -> str | None:
        if entry_alive(entry):
            return RUNNING
        if (entry / "stopping").exists():
            # A stop ended the guest but did not clear the entry (this or an earlier driver died):
            # the stop was asked, so the entry goes, unless a stop here is still at work on it.
            if not self._lock(entry.name).locked():
                remove_entry(entry)
            return None
        try:
            cause = (entry / "exit").read_text().strip()
        except OSError:
            cause = ""
        return SHUTDOWN if cause == "shutdown" else CRASHED

    async def migrate(self, instance_id: str, target: str) -> None:
        entry = self.entry(instance_id)
        async with self._lock(instance_id):
            guest = read_pid(entry)
            if guest is None or not guest_alive(*guest):
                raise DriverError(f"instance {instance_id} is not running on {self.node_name}; nothing to migrate")
            target_instances = self._target_instances(instance_id, target)
            if entry_alive(target_instances / instance_id):
                raise DriverError(f"instance {instance_id} already runs on {target}; stop it there first")
            counter = await self._pause(entry, instance_id, guest)
            try:
                spec = self._spec(entry, instance_id)
                disks = self._replicated_copies(instance_id, spec, target)
                await launch_guest(target_instances, instance_id, spec, continued_counter(counter, disks), disks)
            except BaseException:
                ask_guest(entry, guest, signal.SIGCONT)
                raise
            # The target runs: the paused source ends at once, and even if the caller gives up now,
            # since a source left running would make two copies.
            with trio.CancelScope(shield=True):
                await end_guest(entry, instance_id, 0)
                remove_entry(entry)

    def _replicated_copies(self, instance_id: str, spec: dict, node: str) -> list[Path]:
        """The copy prefixes on `node` of the instance's replicated disks (none for other templates)."""
        if spec.get("disk_template") != "replicated":
            return []
        root = self.disk_roots.get(node)
        if root is None:
            raise DriverError(f"the fake hypervisor of {self.node_name} does not know the disk dir of {node}, "
                              f"so instance {instance_id} cannot find its replicated disks there; give "
                              "FakeHypervisor a disk_roots mapping that names every node")
        prefixes = [records.copy_prefix(Path(root).absolute(), instance_id, index)
                    for index in range(len(spec.get("disks", ())))]
        for index, prefix in enumerate(prefixes):
            if not records.with_suffix(prefix, "records").exists():
                raise DriverError(f"disk {index} of instance {instance_id} has no copy on {node} "
                                  f"({records.with_suffix(prefix, 'records')} is missing); create the disk "
                                  "there first")
        return prefixes

    def _spec(self, entry: Path, instance_id: str) -> dict:
        try:
            return json.loads((entry / "spec.json").read_text())
        except (OSError, ValueError) as error:
            raise DriverError(f"cannot read the spec of instance {instance_id} in {entry}: {error}; "
                              "stop and start the instance to rewrite it") from error

    def _target_instances(self, instance_id: str, target: str) -> Path:
        if target == self.node_name:
            raise DriverError(f"instance {instance_id} already runs on {target}; choose another target node")
        if target not in self.peers:
            raise DriverError(f"migration target {target} is not a peer of {self.node_name} "
                              f"(known: {', '.join(sorted(self.peers)) or 'none'}); check the node name")
        target_dir = Path(self.peers[target])
        if not target_dir.is_dir():
            raise DriverError(f"migration target {target} cannot be reached from {self.node_name}: "
                              f"its state dir {target_dir} is missing")
        instances = target_dir / "instances"
        try:
            instances.mkdir(exist_ok=True)
        except OSError as error:
            raise DriverError(f"migration target {target} cannot take instance {instance_id}: {error}; "
                              f"check the permissions of {target_dir}") from error
        return instances

    async def _pause(self, entry: Path, instance_id: str, guest: tuple[int, str]) -> int:
        """Pause the guest and return its counter, the in-memory state the target takes over."""
        (entry / "paused").unlink(missing_ok=True)
        ask_guest(entry, guest, signal.SIGHUP)
        if not await wait_until(lambda: (entry / "paused").exists() or not guest_alive(*guest), PAUSE_TIMEOUT_S) \
                or not guest_alive(*guest):
            ask_guest(entry, guest, signal.SIGCONT)
            raise DriverError(f"instance {instance_id} on {self.node_name} did not pause for migration within "
                              f"{PAUSE_TIMEOUT_S} s; check `cairn instance info {instance_id}`")
        return int((entry / "memory").read_text())

    # --- what happens to a machine without being asked (fault hooks for tests and demos) --

    async def crash(self, instance_id: str) -> None:
        """Kill the instance's process with SIGKILL and wait until it is gone."""
        await self._signal_and_wait(instance_id, signal.SIGKILL)

    async def guest_shutdown(self, instance_id: str) -> None:
        """Make the guest power itself off (SIGUSR1) and wait until it has exited."""
        await self._signal_and_wait(instance_id, signal.SIGUSR1)

    async def _signal_and_wait(self, instance_id: str, signum: int) -> None:
        entry = self.entry(instance_id)
        guest = read_pid(entry)
        if guest is None or not guest_alive(*guest):
            raise DriverError(f"instance {instance_id} is not running on {self.node_name}")
        ask_guest(entry, guest, signum)
        if not await wait_until(lambda: not guest_alive(*guest), KILL_TIMEOUT_S):
            raise DriverError(f"the process {guest[0]} of instance {instance_id} did not end on signal {signum}")

    async def guest_work(self, instance_id: str) -> int:
        """Make the guest do one unit of work (SIGUSR2) and return its counter afterwards."""
        before = self.guest_counter(instance_id)
        self.request_work(instance_id)
        if not await wait_until(lambda: self.guest_counter(instance_id) != before, KILL_TIMEOUT_S):
            raise DriverError(f"instance {instance_id} did not count its work; is it paused?")
        return self.guest_counter(instance_id)

    def request_work(self, instance_id: str) -> None:
        """Ask the guest for one unit of work (SIGUSR2, then a wake-up line) without waiting for it.

        Requests that reach the guest before it has taken the previous one may merge into one unit
        (signals of one kind do not queue); a load generator that needs every unit waits with
        `guest_work` instead.
        """
        entry = self.entry(instance_id)
        guest = read_pid(entry)
        if guest is None or not guest_alive(*guest):
            raise DriverError(f"instance {instance_id} is not running on {self.node_name}")
        ask_guest(entry, guest, signal.SIGUSR2)

    def guest_counter(self, instance_id: str) -> int:
        """The guest's counter, as it last saved it."""
        try:
            return int((self.entry(instance_id) / "memory").read_text())
        except (OSError, ValueError) as error:
            raise DriverError(f"instance {instance_id} has no saved counter on {self.node_name}") from error
