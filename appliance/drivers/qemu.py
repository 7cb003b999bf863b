"""The QEMU hypervisor driver (Ganeti's `kvm`): one QEMU process per instance, driven over QMP.

Each instance is a QEMU started with `-daemonize`, so it is in a session of its own and nobody's
child: it outlives the driver object and the daemon. The driver knows it only by its files under
`state_dir/instances/<instance id>/`:

- `pid`: "PID TOKEN". TOKEN (random hex) is on QEMU's command line as the inert object
  `secret,id=cairn-run,data=TOKEN` (`run_token_argument`, `qemu_alive`), so a reused pid is never
  taken for the instance; it is the format the node's watchdog kills from (appliance/fencing.py);
- `runtime.json`: the exact argv (its paths are those of the staging directory QEMU was started
  in), the node-independent description it was built from and the token, as canonical JSON; a
  migration target rebuilds an identical machine from the description;
- `qmp.sock` (the QMP monitor), `console.sock` (serial port 0, its output also kept in
  `console.log` while nobody is attached), `ctl.sock` (serial port 1, the test guest's control
  shell), `qemu.pid` (QEMU's own pid file) and `qemu.log` (QEMU's error output);
- `stopping` (written before the driver ends the process) and `incoming` (the entry was made by
  `accept_incoming`, so `abort_incoming` may end it).

Entries are built in a hidden `.new-<instance id>` directory and renamed into place once QEMU
answers on QMP, so `list` never sees half an instance. A process gone without `stopping` is listed
crashed; one whose guest powered off (QEMU runs with `-no-shutdown`, status "shutdown") is listed
shutdown; both stay listed until `stop` clears them. Liveness is read from /proc: Linux only.

The machine is fixed by `build_argv` (pure): machine type `MACHINE_TYPE`, `-nodefaults`, stable
ids for every device, block node and character device. Disks of the `file` and `replicated`
templates are the raw files of the file storage driver (`files.py`), attached as virtio-blk. A
replicated instance starts paused while each disk is mirrored to its secondary's copy (`replication.py`:
the export, the relay and fence-peer; `mirror.py`: the QMP sequences), then runs. NICs are virtio-net
devices on tap devices on the bridge each NIC's link names (`netdev.py`), unless hvparam `nic_mode` says
`user` (QEMU's user networking) or `none`.
The accelerator is chosen by a probe (`choose_accel`): KVM only where it really works, else TCG.

Live migration follows shared/reference/qemu.md section 5: the source asks an `IncomingLink` to
prepare the target (`accept_incoming` there starts the same machine with `-incoming defer`
listening on a port QEMU picks), migrates with the `return-path` capability (so "completed" means
the destination has loaded the machine: without it a destination that fails on the device state
leaves both sides dead), polls `query-migrate`, and on completion quits the source; on failure or
cancellation the link aborts the target and the instance keeps running here. One driver object per
state dir at a time.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from appliance.drivers import mirror, netdev, qmp
from appliance.drivers.base import CRASHED, RUNNING, SHUTDOWN, DriverError, Hypervisor, poll_until
from appliance.drivers.files import FileStorage
from appliance.drivers.replication import DEFAULT_IO_TIMEOUT_S, Replication

log = logging.getLogger("cairn.qemu")

MACHINE_TYPE = "pc-i440fx-7.2"
RUNTIME_FORMAT = 1
RUN_TOKEN_ID = "cairn-run"
TLS_OBJECT_ID = "cairn-migration-tls"
ACCELS = ("auto", "kvm", "tcg")
# Uncapped for practical purposes (QEMU's own default is 128 MiB/s), as the reference recommends.
DEFAULT_MIGRATION_BANDWIDTH_MIB_S = 10240
MIB = 1024 * 1024
KVM_CHECK_EXTENSION = 0xAE03          # _IO(KVMIO 0xAE, 0x03)
KVM_CAP_IRQCHIP = 17
SOCKET_PATH_MAX = 107                 # sun_path holds 108 bytes with the final NUL
DISK_TEMPLATES_WITH_FILES = ("file", "replicated")
# The SMBIOS UUID of an instance is derived from its id, so it stays the same across restarts,
# migrations and failovers.
UUID_NAMESPACE = uuid.UUID("5d7e2f0c-3b8a-4e61-9c2d-6a0f1e8b7c43")
INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
DESCRIPTION_KEYS = ("format", "instance", "uuid", "machine", "accel", "memory_mib", "vcpus", "disk_template",
                    "disks", "nics", "nic_mode", "kernel_path", "initrd_path", "kernel_args",
                    "migration_bandwidth_mib_s", "migration_downtime_ms")
QEMU_DEAD_STATUSES = {"shutdown": SHUTDOWN, "guest-panicked": CRASHED, "internal-error": CRASHED}
MIGRATION_ENDED = ("completed", "failed", "cancelled")

SPAWN_TIMEOUT_S = 30.0
QMP_TIMEOUT_S = 10.0
LIST_TIMEOUT_S = 2.0
QUIT_WAIT_S = 5.0
KILL_WAIT_S = 5.0
MIGRATION_TIMEOUT_S = 600.0
# RFC 7919's ffdhe2048 group, written as dh-params.pem beside the migration credentials: without it QEMU's
# server-side tls-creds-x509 generates 2048-bit DH parameters at every object-add (0.3-3.8 s per migration).
FFDHE2048_PEM = """-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""
MIRROR_READY_TIMEOUT_S = 3600.0       # a first full copy of a large disk
MIGRATION_POLL_S = 0.05
CANCEL_WAIT_S = 10.0
RESUME_WAIT_S = 5.0
POWERDOWN_REPEAT_S = 1.0
POLL_S = 0.02


# --- pure pieces: accelerator, description, argv ---------------------------------------------


def choose_accel(requested: str, kvm_opens: bool, irqchip: int, pvm_loaded: bool) -> str:
    """The accelerator for `requested` ("auto", "kvm" or "tcg") given what the KVM probe found.

    "auto" takes KVM only if /dev/kvm opens, KVM_CAP_IRQCHIP is above 0 and the paravirtual
    `kvm_pvm` module is absent: under PVM, QEMU accepts `-accel kvm` and then crawls or hangs
    without an error, so failing over to TCG on errors would never happen (reference 2.1, 10.2).
    """
    if requested not in ACCELS:
        raise DriverError(f"accelerator {requested!r} is not one of {', '.join(ACCELS)}; use 'auto' to probe")
    if requested != "auto":
        return requested
    return "kvm" if kvm_opens and irqchip > 0 and not pvm_loaded else "tcg"


def probe_kvm(device: str = "/dev/kvm", modules: Path = Path("/sys/module")) -> tuple[bool, int, bool]:
    """What `choose_accel` needs to know, from this machine: (device opens, KVM_CAP_IRQCHIP, PVM loaded)."""
    irqchip, opens = 0, False
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        fd = None
    if fd is not None:
        opens = True
        try:
            irqchip = fcntl.ioctl(fd, KVM_CHECK_EXTENSION, KVM_CAP_IRQCHIP)
        except OSError:
            irqchip = 0
        finally:
            os.close(fd)
    return opens, irqchip, (modules / "kvm_pvm").exists()


def resolve_accel(requested: str) -> str:
    """The accelerator this machine uses for `requested`: the probe decides "auto"."""
    return choose_accel(requested, *probe_kvm()) if requested == "auto" else choose_accel(requested, False, 0, False)


def _io_timeout(spec: dict, instance_id: str) -> float:
    """The hvparam `disk_io_timeout` (seconds a write may wait on the secondary before its copy is degraded)."""
    value = (spec.get("hvparams") or {}).get("disk_io_timeout", DEFAULT_IO_TIMEOUT_S)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = 0.0
    if not 0 < seconds <= 3600:
        raise DriverError(f"hvparam disk_io_timeout of instance {instance_id} must be seconds between 0 and 3600, "
                          f"not {value!r}")
    return seconds


def canonical_json(value) -> str:
    """The one JSON text of a value: sorted keys, no spaces, so equal values give equal files."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def checked_id(instance_id: str) -> str:
    """The instance id, refused unless it can name a directory and a QEMU `-name` (no '=' or ',')."""
    if not isinstance(instance_id, str) or not INSTANCE_ID.fullmatch(instance_id):
        raise DriverError(f"instance id {instance_id!r} cannot name a QEMU instance; use letters, digits, "
                          "'.', '-' and '_', starting with a letter or digit")
    return instance_id


def _positive_int(value, what: str, instance_id: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number <= 0 or isinstance(value, bool) or (isinstance(value, float) and value != number):
        raise DriverError(f"{what} of instance {instance_id} must be a whole number above 0, not {value!r}; "
                          "fix the instance's parameters")
    return number


def _absolute_path(value, what: str, instance_id: str) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not os.path.isabs(value):
        raise DriverError(f"hvparam {what} of instance {instance_id} must be an absolute path, not {value!r}")
    return value


def describe(instance_id: str, spec: dict, accel: str) -> dict:
    """The node-independent description of the machine for `spec`, from which `build_argv` makes the argv.

    Spec keys: memory_mib, vcpus, disks (sizes in MiB), nics, disk_template and hvparams
    (kernel_path, initrd_path, kernel_args, migration_bandwidth in MiB/s, migration_downtime in ms,
    nic_mode); others (name, hypervisor) do not shape the machine. A NIC is {"mac", "mode", "link"}
    (the cluster's NIC: mode "bridged" puts it on the bridge named by its link) or a bare MAC (the
    older spec form: not attached). hvparam nic_mode "" (the default) attaches each NIC as it says,
    "user" gives every NIC QEMU's user networking instead and "none" attaches none.
    """
    checked_id(instance_id)
    hvparams = spec.get("hvparams") or {}
    if not isinstance(hvparams, dict):
        raise DriverError(f"hvparams of instance {instance_id} must be a mapping, not {hvparams!r}")
    kernel = _absolute_path(hvparams.get("kernel_path"), "kernel_path", instance_id)
    downtime = hvparams.get("migration_downtime")
    nic_mode = str(hvparams.get("nic_mode") or "")
    if nic_mode not in netdev.HVPARAM_NIC_MODES:
        raise DriverError(f"hvparam nic_mode of instance {instance_id} is {nic_mode!r}, not 'user' or 'none'; "
                          "leave it empty to attach the NICs as the cluster configures them")
    nics = [netdev.nic_of(nic) for nic in spec.get("nics") or ()]
    for index, nic in enumerate(nics):
        problem = netdev.nic_problem(nic, index, nic_mode)
        if problem is not None:
            raise DriverError(f"NIC {index} of instance {instance_id} {problem}")
    return {
        "format": RUNTIME_FORMAT,
        "instance": instance_id,
        "uuid": str(uuid.uuid5(UUID_NAMESPACE, instance_id)),
        "machine": MACHINE_TYPE,
        "accel": accel,
        "memory_mib": _positive_int(spec.get("memory_mib"), "memory_mib", instance_id),
        "vcpus": _positive_int(spec.get("vcpus", 1), "vcpus", instance_id),
        "disk_template": spec.get("disk_template") or "diskless",
        "disks": [_positive_int(size, f"the size of disk {index}", instance_id)
                  for index, size in enumerate(spec.get("disks") or ())],
        "nics": nics,
        "nic_mode": nic_mode,
        "kernel_path": kernel,
        "initrd_path": _absolute_path(hvparams.get("initrd_path"), "initrd_path", instance_id) if kernel else None,
        "kernel_args": str(hvparams.get("kernel_args") or "") if kernel else "",
        "migration_bandwidth_mib_s": _positive_int(hvparams.get("migration_bandwidth",
                                                                DEFAULT_MIGRATION_BANDWIDTH_MIB_S),
                                                   "hvparam migration_bandwidth", instance_id),
        "migration_downtime_ms": None if downtime in (None, "") else _positive_int(
            downtime, "hvparam migration_downtime", instance_id),
    }


def socket_dir(entry: Path) -> Path | None:
    """Where an entry's unix sockets go when its own directory makes their paths too long for a socket (a deep
    state dir): a private directory of this user's under the system's temporary directory, named by a hash of
    the entry's path. None when the entry's directory will do."""
    # Judged on the staging directory the entry is built in (`.new-<id>`, the longer of the two names).
    if len(os.fsencode(entry.parent / f".new-{entry.name}" / "console.sock")) <= SOCKET_PATH_MAX:
        return None
    digest = hashlib.sha256(os.fsencode(entry.absolute())).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / f"cairn-{os.getuid()}" / digest


def make_socket_dir(directory: Path) -> None:
    """Create a socket directory and its parent, both private (0700) and ours; refuse one someone else owns."""
    for path in (directory.parent, directory):
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise DriverError(f"{path} is not a private directory of this user's (0700); remove it, or use a "
                              "shorter state dir so that the sockets fit in the instance directories")


@dataclass(frozen=True)
class InstanceFiles:
    """The files of one instance entry (or of its staging directory while it is being built); the unix sockets
    are in `sockets` instead when the entry's own paths are too long for them (`socket_dir`)."""

    directory: Path
    sockets: Path | None = None

    @property
    def pid(self) -> Path:
        return self.directory / "pid"

    @property
    def runtime(self) -> Path:
        return self.directory / "runtime.json"

    @property
    def qmp(self) -> Path:
        return (self.sockets or self.directory) / "qmp.sock"

    @property
    def console(self) -> Path:
        return (self.sockets or self.directory) / "console.sock"

    @property
    def console_log(self) -> Path:
        return self.directory / "console.log"

    @property
    def control(self) -> Path:
        return (self.sockets or self.directory) / "ctl.sock"

    @property
    def qemu_pid(self) -> Path:
        return self.directory / "qemu.pid"

    @property
    def qemu_log(self) -> Path:
        return self.directory / "qemu.log"

    @property
    def stopping(self) -> Path:
        return self.directory / "stopping"

    @property
    def incoming(self) -> Path:
        return self.directory / "incoming"


def option_value(text: str | os.PathLike) -> str:
    """`text` as the value of a QEMU `key=value,...` option: a comma is written twice."""
    return os.fspath(text).replace(",", ",,")


def run_token_argument(token: str) -> str:
    """The argument that carries an instance's run token on QEMU's command line (an unused secret object)."""
    return f"secret,id={RUN_TOKEN_ID},data={token}"


def disk_arguments(disk_paths: Sequence[Path]) -> list[str]:
    """Disk i as a raw file: block nodes `disk<i>-file` and `disk<i>`, device `vblk<i>` (virtio-blk)."""
    arguments = []
    for index, path in enumerate(disk_paths):
        arguments += ["-blockdev", f"driver=file,node-name=disk{index}-file,filename={option_value(path)}",
                      "-blockdev", f"driver=raw,node-name=disk{index},file=disk{index}-file",
                      "-device", f"virtio-blk-pci,drive=disk{index},id=vblk{index}"]
    return arguments


def nic_arguments(description: dict) -> list[str]:
    """NIC i as backend `net<i>` and virtio-net device `nic<i>` with the NIC's MAC, on its bridge.

    A bridged NIC is a tap named `netdev.tap_name(instance, i)` that QEMU has this node's helper make
    and add to the bridge its link names (`-netdev bridge`, see netdev.py): the tap lives exactly as
    long as this QEMU, so stopping, killing or migrating the instance away removes it. hvparam
    nic_mode "user" gives every NIC QEMU's user networking instead, "none" attaches none; a NIC
    without a mode (a bare MAC in the spec) is not attached.
    """
    mode = description.get("nic_mode")
    if mode == "none":
        return []
    arguments = []
    for index, nic in enumerate(description["nics"]):
        nic = netdev.nic_of(nic)
        if mode == "user":
            backend = "user"
        elif nic["mode"] == netdev.BRIDGED:
            helper = netdev.helper_command(netdev.tap_name(description["instance"], index), nic["link"])
            backend = f"bridge,br={option_value(nic['link'])},helper={option_value(helper)}"
        else:
            continue
        arguments += ["-netdev", f"{backend},id=net{index}",
                      "-device", f"virtio-net-pci,netdev=net{index},mac={option_value(nic['mac'])},id=nic{index}"]
    return arguments


def kernel_arguments(description: dict) -> list[str]:
    """Direct kernel boot when the description names a kernel (Ganeti's kernel_path, initrd_path, kernel_args)."""
    if not description.get("kernel_path"):
        return []
    arguments = ["-kernel", description["kernel_path"]]
    if description.get("initrd_path"):
        arguments += ["-initrd", description["initrd_path"]]
    if description.get("kernel_args"):
        arguments += ["-append", description["kernel_args"]]
    return arguments


def build_argv(description: dict, files: InstanceFiles, token: str, disk_paths: Sequence[Path],
               qemu_binary: str = "qemu-system-x86_64", incoming: bool = False, paused: bool = False) -> list[str]:
    """The command line of the instance's QEMU: the description's machine with this node's files.

    Two nodes given the same description build the same device model (same machine type, devices,
    ids and block node names), which is what a live migration needs; `incoming` adds
    `-incoming defer` for a migration target; `paused` adds `-S` (the guest waits for `cont`: its disks are
    mirrored to their secondary first).
    """
    machine = [
        qemu_binary,
        "-name", description["instance"],
        "-uuid", description["uuid"],
        "-machine", description["machine"],
        "-accel", description["accel"],
        "-m", str(description["memory_mib"]),
        "-smp", str(description["vcpus"]),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-shutdown",
        "-object", run_token_argument(token),
        "-chardev", f"socket,id=qmp,path={option_value(files.qmp)},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-chardev", f"socket,id=console,path={option_value(files.console)},server=on,wait=off,"
                    f"logfile={option_value(files.console_log)},logappend=on",
        "-device", "isa-serial,id=serial0,chardev=console,index=0",
        "-chardev", f"socket,id=control,path={option_value(files.control)},server=on,wait=off",
        "-device", "isa-serial,id=serial1,chardev=control,index=1",
    ]
    process = ["-pidfile", os.fspath(files.qemu_pid), "-D", os.fspath(files.qemu_log), "-daemonize"]
    return [*machine, *kernel_arguments(description), *disk_arguments(disk_paths), *nic_arguments(description),
            *process, *(["-incoming", "defer"] if incoming else []), *(["-S"] if paused else [])]


def migration_summary(info: dict) -> str:
    """QEMU's figures of a completed migration (query-migrate), as the message of the event that reports it."""
    ram = info.get("ram") or {}
    return (f"in {info.get('total-time', '?')} ms, downtime {info.get('downtime', '?')} ms, "
            f"{int(ram.get('transferred', 0)) // (1024 * 1024)} MiB sent")


def migration_uri(host: str, port: int | str) -> str:
    """The `tcp:` URI of a migration listener (an IPv6 host in brackets)."""
    return f"tcp:[{host}]:{port}" if ":" in host else f"tcp:{host}:{port}"


def migration_parameters(description: dict, tls: bool) -> dict:
    """`migrate-set-parameters` arguments for the source: bandwidth, downtime limit and TLS (or none)."""
    parameters = {"max-bandwidth": description["migration_bandwidth_mib_s"] * MIB,
                  "tls-creds": TLS_OBJECT_ID if tls else ""}
    if description.get("migration_downtime_ms"):
        parameters["downtime-limit"] = description["migration_downtime_ms"]
    return parameters


# --- processes -------------------------------------------------------------------------------


def qemu_alive(pid: int, token: str) -> bool:
    """Whether `pid` is a live QEMU started with `token` (a zombie or a reused pid is not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = fields.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X") and run_token_argument(token).encode() in cmdline.split(b"\0")


def holds_instance(status: str | None) -> bool:
    """Whether a live QEMU in run state `status` holds its instance: anything but a powered-off, failed or
    migrated-away machine (None, a monitor that does not answer, counts as holding it)."""
    return status not in QEMU_DEAD_STATUSES and status != "postmigrate"


def processes_with_token(token: str) -> list[int]:
    """Every live QEMU started with `token`, found in /proc (a launch that failed half-way has no pid file)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and qemu_alive(int(proc.name), token):
            found.append(int(proc.name))
    return found


def read_pid(files: InstanceFiles) -> tuple[int, str] | None:
    """The QEMU pid and run token recorded in an entry, or None if there is none."""
    try:
        pid, token = files.pid.read_text().split()
        return int(pid), token
    except (OSError, ValueError):
        return None


def entry_alive(files: InstanceFiles) -> bool:
    """Whether the QEMU an entry records is alive."""
    process = read_pid(files)
    return process is not None and qemu_alive(*process)


def kill_process(pid: int, token: str) -> None:
    """SIGKILL the QEMU if it is still that QEMU; one already gone is no error."""
    if qemu_alive(pid, token):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def remove_entry(directory: Path, sockets: bool = True) -> None:
    """Remove an entry or staging directory and everything in it (sockets, logs), and its socket directory if
    it has one elsewhere (unless `sockets` is false: a new QEMU already listens there); none is no error."""
    shutil.rmtree(directory, ignore_errors=True)
    elsewhere = socket_dir(directory)
    if sockets and elsewhere is not None:
        shutil.rmtree(elsewhere, ignore_errors=True)


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a rename, so a reader sees the old file or the whole new one."""
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text)
    staging.rename(path)


def read_runtime(files: InstanceFiles, instance_id: str) -> dict:
    """The persisted {"argv", "description"} of an entry."""
    try:
        runtime = json.loads(files.runtime.read_text())
        if not isinstance(runtime.get("description"), dict):
            raise ValueError("no description")
        return runtime
    except (OSError, ValueError, AttributeError) as error:
        raise DriverError(f"cannot read the runtime file {files.runtime} of instance {instance_id}: {error}; "
                          "stop and start the instance to rewrite it") from error


async def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll `condition` until it holds (True) or `timeout_s` has passed (False)."""
    return await poll_until(condition, timeout_s, POLL_S)


async def kill_and_wait(pid: int, token: str, instance_id: str) -> None:
    """SIGKILL the QEMU and wait until it is gone; DriverError if it survives KILL_WAIT_S."""
    kill_process(pid, token)
    if not await wait_until(lambda: not qemu_alive(pid, token), KILL_WAIT_S):
        raise DriverError(f"the QEMU process {pid} of instance {instance_id} survived SIGKILL for {KILL_WAIT_S} s; "
                          f"check its state in /proc/{pid}/status (uninterruptible I/O?)")


class IncomingLink(abc.ABC):
    """How the source of a live migration reaches the target node's QEMU driver (its `accept_incoming`
    and `abort_incoming`): the daemon's data plane in a cluster, a direct call in tests."""

    @abc.abstractmethod
    async def prepare(self, target_node: str, instance_id: str, runtime: dict) -> str:
        """Start the destination on `target_node` from the description `runtime`; return its migration URI.

        Raise DriverError when the target cannot take the instance. Whatever the failure, the source
        then calls `abort`, since a lost answer may leave a destination waiting there.
        """

    @abc.abstractmethod
    async def abort(self, target_node: str, instance_id: str) -> None:
        """End the destination of a migration that failed or was cancelled; nothing there is no error."""


class QemuHypervisor(Hypervisor):
    """The hypervisor port over QEMU processes in `state_dir` (see the module docstring).

    `disk_root` is this node's file storage root (disks of the `file` and `replicated` templates);
    `incoming` reaches other nodes for live migration; `accel` is "auto" (probe), "kvm" or "tcg";
    `migration_host` is the address this node's migration listeners bind and sources connect to;
    `tls_dir` (ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem, client-key.pem) turns
    on TLS with peer verification for migrations in both directions.

    `on_progress(instance_id, info)`, if set, is called with every `query-migrate` result of a
    migration this node sends (an exception from it cancels the migration); `last_migration` keeps
    the latest result by instance id (QEMU's total-time and downtime in ms once it has ended).
    """

    def __init__(self, state_dir: Path, node_name: str, disk_root: Path | None = None,
                 incoming: IncomingLink | None = None, accel: str = "auto",
                 qemu_binary: str = "qemu-system-x86_64", migration_host: str = "127.0.0.1",
                 tls_dir: Path | None = None, replication: Replication | None = None) -> None:
        if not Path("/proc/self/stat").exists():
            raise DriverError("the QEMU driver reads process states from /proc; run it on Linux")
        self.state_dir = Path(state_dir)
        self.node_name = node_name
        self.disk_root = Path(disk_root) if disk_root is not None else None
        self.incoming = incoming
        self.accel = resolve_accel(accel)
        self.qemu_binary = qemu_binary
        self.migration_host = migration_host
        self.tls_dir = Path(tls_dir) if tls_dir is not None else None
        self.replication = replication
        self.unreachable: dict[tuple[str, int], str] = {}    # disks a start could not mirror: why
        self.on_progress: Callable[[str, dict], None] | None = None
        self.last_migration: dict[str, dict] = {}
        self.migration_timeout_s = MIGRATION_TIMEOUT_S
        self.instances = self.state_dir / "instances"
        self._locks: dict[str, trio.Lock] = {}
        self._connect_locks: dict[str, trio.Lock] = {}
        self._monitors: dict[str, tuple[str, qmp.Monitor]] = {}
        try:
            self.instances.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DriverError(f"cannot use {self.state_dir} as the state dir of node {node_name}: {error}") from error
        self._drop_aborted_starts()

    def _drop_aborted_starts(self) -> None:
        """Kill the QEMUs of starts a previous driver did not finish (never reported started)."""
        for staging in self.instances.glob(".new-*"):
            try:
                token = str(json.loads(InstanceFiles(staging).runtime.read_text())["token"])
            except (OSError, ValueError, KeyError, TypeError):
                token = None     # written before QEMU was run: no runtime file, no QEMU
            for pid in processes_with_token(token) if token else ():
                kill_process(pid, token)
            remove_entry(staging)

    def _lock(self, instance_id: str) -> trio.Lock:
        return self._locks.setdefault(instance_id, trio.Lock())

    def files(self, instance_id: str) -> InstanceFiles:
        """The files of the instance's entry here."""
        entry = self.instances / checked_id(instance_id)
        return InstanceFiles(entry, socket_dir(entry))

    def pid(self, instance_id: str) -> int | None:
        """The pid of the instance's live QEMU here, or None."""
        process = read_pid(self.files(instance_id))
        return process[0] if process is not None and qemu_alive(*process) else None

    async def console_path(self, instance_id: str) -> Path:
        """The unix socket of the instance's serial console (output also kept in console.log beside it)."""
        files = self.files(instance_id)
        if not entry_alive(files):
            raise DriverError(f"instance {instance_id} is not running on {self.node_name}; no console to attach to")
        return files.console

    async def monitor_command(self, instance_id: str, command: str, arguments: dict | None = None,
                              timeout_s: float = QMP_TIMEOUT_S):
        """Run one QMP command on the instance's QEMU and return QEMU's answer (for diagnostics and tests)."""
        files = self.files(instance_id)
        if not entry_alive(files):
            raise DriverError(f"instance {instance_id} is not running on {self.node_name}")
        try:
            return await self._execute(instance_id, files, command, arguments, timeout_s)
        except qmp.QmpFailure as error:
            raise DriverError(f"QMP {command} on instance {instance_id} failed: {error}") from error

    async def aclose(self) -> None:
        """Close the driver's QMP connections (the instances keep running)."""
        for _, monitor in self._monitors.values():
            await monitor.aclose()
        self._monitors.clear()

    # --- the port ---------------------------------------------------------------------

    async def start(self, instance_id: str, spec: dict) -> None:
        files = self.files(instance_id)
        async with self._lock(instance_id):
            if entry_alive(files) and holds_instance(await self._qemu_status(instance_id, files)):
                return
            description = describe(instance_id, spec, self.accel)
            disk_paths = self._disk_paths(instance_id, description)
            await self._end(files, instance_id, 0)
            if description["disk_template"] != "replicated" or self.replication is None:
                await self._launch(instance_id, description, disk_paths, incoming=False)
                return
            await self._start_replicated(instance_id, description, disk_paths, spec)

    async def _start_replicated(self, instance_id: str, description: dict, disk_paths: Sequence[Path],
                                spec: dict) -> None:
        """Start paused, mirror each disk to its secondary's copy (write-blocking) until in sync, then run.

        A disk whose secondary cannot be reached starts alone only if the cluster has recorded that copy as
        DEGRADED (`peer_degraded`); otherwise the start fails, the disk is reported as held, and the node
        records the copy DEGRADED first (fence-peer: nothing is written that the secondary would miss
        while the log still calls it UPTODATE).
        """
        count = len(description["disks"])
        peer = str(spec.get("secondary") or "")
        degraded = {int(index) for index in spec.get("peer_degraded") or ()}
        io_timeout_s = _io_timeout(spec, instance_id)
        await self.replication.unexport(instance_id, count)      # this node's copies are the primary's now
        sockets: dict[int, Path] = {}
        for index in range(count):
            try:
                if not peer:
                    raise DriverError("it has no secondary node")
                sockets[index] = await self.replication.connect(instance_id, index, peer, io_timeout_s)
            except DriverError as error:
                if index in degraded:
                    continue
                await self.replication.stop_relays(instance_id, count)
                self.unreachable[(instance_id, index)] = str(error)
                raise DriverError(f"cannot mirror disk {index} of instance {instance_id} to its secondary {peer}: "
                                  f"{error}; it starts once that copy is recorded DEGRADED") from error
        for index in range(count):
            self.unreachable.pop((instance_id, index), None)
        await self._launch(instance_id, description, disk_paths, incoming=False, paused=True)
        files = self.files(instance_id)
        write_atomically(files.directory / "replication.json",
                         canonical_json({"secondary": peer, "io_timeout_s": io_timeout_s, "disks": count}) + "\n")
        try:
            monitor = await self._monitor(instance_id, files)
            for index, socket_path in sockets.items():
                await mirror.attach_mirror(monitor, index, socket_path)
            for index in sockets:
                await mirror.wait_ready(monitor, index, MIRROR_READY_TIMEOUT_S)
            await monitor.execute("cont", timeout_s=QMP_TIMEOUT_S)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._end(files, instance_id, 0)
                remove_entry(files.directory)
                await self.replication.stop_relays(instance_id, count)
            raise

    async def replication_states(self) -> list[tuple[str, int, str, int, bool]]:
        """(Primary.) Each replicated disk of each instance running here: (instance id, disk index, state of the
        secondary's copy, sync percent, whether its relay holds a cut waiting for the copy to be recorded
        DEGRADED). A disk that could not be mirrored at start counts as held (DEGRADED, not yet recorded)."""
        found = [(instance_id, index, "DEGRADED", 0, True) for instance_id, index in sorted(self.unreachable)]
        if self.replication is None:
            return found
        for entry in sorted(self.instances.glob("[!.]*")):
            files = InstanceFiles(entry, socket_dir(entry))
            try:
                count = int(json.loads((entry / "replication.json").read_text())["disks"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if not entry_alive(files):
                continue
            try:
                monitor = await self._monitor(entry.name, files, timeout_s=LIST_TIMEOUT_S)
                states = await mirror.mirror_states(monitor, range(count), LIST_TIMEOUT_S)
            except (qmp.QmpFailure, DriverError):
                continue
            for index in range(count):
                relay, _why = self.replication.relay_state(entry.name, index)
                state, percent = states.get(index, ("DEGRADED", 0))
                if relay == "held":
                    state, percent = "DEGRADED", 0
                found.append((entry.name, index, state, percent, relay == "held"))
        return found

    async def release_peer(self, instance_id: str, index: int) -> None:
        """(Primary.) The secondary's copy is recorded DEGRADED: let the held writes go on without it."""
        self.unreachable.pop((instance_id, index), None)
        if self.replication is not None:
            await self.replication.release(instance_id, index)
            files = self.files(instance_id)
            if entry_alive(files):
                with contextlib.suppress(qmp.QmpFailure, DriverError):
                    await mirror.detach_mirror(await self._monitor(instance_id, files), index)

    async def remirror(self, instance_id: str, index: int, peer_node: str) -> None:
        """(Primary.) Mirror a DEGRADED disk to the copy on its secondary `peer_node` again (the same node back,
        or a new one after replace-disks): a full copy (SYNCING), then UPTODATE."""
        files = self.files(instance_id)
        if self.replication is None or not entry_alive(files):
            raise DriverError(f"instance {instance_id} does not run here, so its disk {index} is not mirrored here")
        try:
            settings = json.loads((files.directory / "replication.json").read_text())
        except (OSError, ValueError) as error:
            raise DriverError(f"instance {instance_id} was not started with replicated disks here: {error}") from None
        async with self._lock(instance_id):
            monitor = await self._monitor(instance_id, files)
            with contextlib.suppress(qmp.QmpFailure, DriverError):
                await mirror.detach_mirror(monitor, index)
            socket_path = await self.replication.connect(instance_id, index, peer_node,
                                                         float(settings["io_timeout_s"]))
            await mirror.attach_mirror(monitor, index, socket_path)
            if settings.get("secondary") != peer_node:
                write_atomically(files.directory / "replication.json",
                                 canonical_json({**settings, "secondary": peer_node}) + "\n")

    async def stop(self, instance_id: str, timeout_s: float) -> None:
        files = self.files(instance_id)
        async with self._lock(instance_id):
            await self._end(files, instance_id, timeout_s)
            await self._stop_replication(instance_id, files)
            remove_entry(files.directory)

    async def _stop_replication(self, instance_id: str, files: InstanceFiles) -> None:
        for key in [key for key in self.unreachable if key[0] == instance_id]:
            del self.unreachable[key]
        if self.replication is None:
            return
        try:
            count = int(json.loads((files.directory / "replication.json").read_text())["disks"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        await self.replication.stop_relays(instance_id, count)

    async def list(self) -> dict[str, str]:
        statuses: dict[str, str] = {}
        entries = [e for e in sorted(self.instances.iterdir()) if not e.name.startswith(".") and e.is_dir()]
        async with trio.open_nursery() as nursery:
            for entry in entries:
                nursery.start_soon(self._collect_status, entry, statuses)
        return dict(sorted(statuses.items()))

    async def _collect_status(self, entry: Path, statuses: dict[str, str]) -> None:
        files = InstanceFiles(entry, socket_dir(entry))
        if entry_alive(files):
            status = await self._qemu_status(entry.name, files, LIST_TIMEOUT_S)
            if status == "postmigrate" and not self._lock(entry.name).locked():
                # The source of a completed migration whose driver died before it quit: the
                # instance has moved (a failed migration of a running guest restarts it here).
                async with self._lock(entry.name):
                    await self._end(files, entry.name, 0)
                    remove_entry(entry)
                return
            statuses[entry.name] = QEMU_DEAD_STATUSES.get(status, RUNNING)
        elif files.stopping.exists():
            # A stop ended the process but did not clear the entry (this or an earlier driver died):
            # the stop was asked, so the entry goes, unless a stop here is still at work on it.
            if not self._lock(entry.name).locked():
                remove_entry(entry)
        else:
            statuses[entry.name] = CRASHED

    async def migrate(self, instance_id: str, target: str) -> str:
        """Move the running instance live to node `target`; QEMU's own figures as a short text."""
        files = self.files(instance_id)
        async with self._lock(instance_id):
            status = await self._qemu_status(instance_id, files) if entry_alive(files) else None
            if status != "running":
                raise DriverError(f"instance {instance_id} is not running on {self.node_name} "
                                  f"(QEMU status: {status or 'no process'}); nothing to migrate")
            if target == self.node_name:
                raise DriverError(f"instance {instance_id} already runs on {target}; choose another target node")
            if self.incoming is None:
                raise DriverError(f"node {self.node_name} has no migration link to other nodes; "
                                  "configure the QEMU driver with one to migrate")
            description = read_runtime(files, instance_id)["description"]
            if description["disk_template"] == "replicated" and self.replication is not None:
                raise DriverError(f"instance {instance_id} has replicated disks: their live migration (the role "
                                  "swap of the two copies) is not built yet; use 'cairn instance failover' (it "
                                  "stops the instance and starts it on the secondary)")
            uri = await self._prepare_target(target, instance_id, description)
            try:
                info = await self._send(instance_id, files, description, uri)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await self._cancel_quietly(instance_id, files)
                    await self._abort_target(target, instance_id)
                raise
            if info.get("status") != "completed":
                with trio.CancelScope(shield=True):
                    await self._abort_target(target, instance_id)
                    await self._resume(instance_id, files)
                reason = info.get("error-desc") or (
                    "cancelled" if info.get("status") == "cancelled"
                    else "the destination could not load the machine (see qemu.log on the target)")
                raise DriverError(f"live migration of instance {instance_id} to {target} ended "
                                  f"{info.get('status')}: {reason}; it keeps running on {self.node_name}")
            # The target runs: the source ends at once, even if the caller gives up now, since a
            # source left behind would be a second copy.
            with trio.CancelScope(shield=True):
                await self._end(files, instance_id, 0)
                remove_entry(files.directory)
            return migration_summary(info)

    async def cancel_migration(self, instance_id: str) -> None:
        """Cancel the live migration this node is sending (`migrate_cancel`); `migrate` then fails."""
        await self.monitor_command(instance_id, "migrate_cancel")

    # --- migration target --------------------------------------------------------------

    async def accept_incoming(self, instance_id: str, runtime: dict) -> str:
        """(Migration target.) Start the machine described by `runtime` waiting for a migration; return its URI.

        An entry of the instance that is dead, or an earlier destination still waiting, is replaced;
        an instance that runs here is refused, and from then on `abort_incoming` leaves it alone even
        if it once arrived by migration (the source aborts after a refusal too).
        """
        files = self.files(instance_id)
        async with self._lock(instance_id):
            description = self._incoming_description(instance_id, runtime)
            disk_paths = self._disk_paths(instance_id, description)
            if entry_alive(files):
                status = await self._qemu_status(instance_id, files)
                if holds_instance(status) and status != "inmigrate":
                    files.incoming.unlink(missing_ok=True)
                    raise DriverError(f"instance {instance_id} already runs on {self.node_name} (QEMU status: "
                                      f"{status or 'unknown'}); stop it there before migrating it here")
            await self._end(files, instance_id, 0)
            return await self._launch(instance_id, description, disk_paths, incoming=True)

    async def abort_incoming(self, instance_id: str) -> None:
        """(Migration target.) End the destination `accept_incoming` made, even if it already runs (the
        source's failure is final: two running copies are worse); an entry started here otherwise, or
        none, is left alone."""
        files = self.files(instance_id)
        async with self._lock(instance_id):
            if files.incoming.exists():
                await self._end(files, instance_id, 0)
                remove_entry(files.directory)

    def _incoming_description(self, instance_id: str, runtime: dict) -> dict:
        if not isinstance(runtime, dict) or runtime.get("format") != RUNTIME_FORMAT \
                or runtime.get("instance") != instance_id or set(runtime) != set(DESCRIPTION_KEYS):
            raise DriverError(f"the runtime description sent for instance {instance_id} is not one this QEMU "
                              f"driver reads (format {RUNTIME_FORMAT}); upgrade the nodes to the same version")
        if runtime.get("accel") != self.accel:
            raise DriverError(f"instance {instance_id} runs under {runtime.get('accel')} on its source but node "
                              f"{self.node_name} uses {self.accel}; QEMU cannot migrate between the two")
        if runtime.get("machine") != MACHINE_TYPE:
            raise DriverError(f"instance {instance_id} runs on machine type {runtime.get('machine')} but node "
                              f"{self.node_name} builds {MACHINE_TYPE}; upgrade the nodes to the same version")
        return runtime

    # --- building and ending processes -------------------------------------------------

    def _disk_paths(self, instance_id: str, description: dict) -> list[Path]:
        """The local files of the instance's disks; these and its kernel and initrd are checked to exist."""
        for what in ("kernel_path", "initrd_path"):
            if description[what] and not Path(description[what]).is_file():
                raise DriverError(f"the file {description[what]} (hvparam {what}) of instance {instance_id} does "
                                  f"not exist on {self.node_name}; install it there or fix the hvparam")
        template, sizes = description["disk_template"], description["disks"]
        if template == "diskless" or not sizes:
            return []
        if template not in DISK_TEMPLATES_WITH_FILES:
            raise DriverError(f"disk template {template!r} of instance {instance_id} is not supported by the QEMU "
                              f"driver yet; use one of {', '.join(DISK_TEMPLATES_WITH_FILES)} or diskless")
        if self.disk_root is None:
            raise DriverError(f"the QEMU driver of {self.node_name} has no disk root, so the disks of instance "
                              f"{instance_id} cannot be found; configure it with the file storage root")
        storage = FileStorage(self.disk_root)
        paths = [storage.path(instance_id, index) for index in range(len(sizes))]
        for index, path in enumerate(paths):
            if not path.is_file():
                raise DriverError(f"disk {index} of instance {instance_id} is missing on {self.node_name} "
                                  f"({path} does not exist); create the disk there first")
        return paths

    async def _launch(self, instance_id: str, description: dict, disk_paths: Sequence[Path], incoming: bool,
                      paused: bool = False) -> str:
        """Start QEMU in a staging directory, check it over QMP, then rename the entry into place.

        For a migration target, also start listening and return the URI; otherwise return "".
        """
        token = secrets.token_hex(16)
        # Sockets in the entry's own directory move with it when it is renamed into place; sockets kept
        # elsewhere (a deep state dir) are made where the final entry will look for them.
        sockets = socket_dir(self.instances / instance_id)
        staging = InstanceFiles(self.instances / f".new-{instance_id}", sockets)
        remove_entry(staging.directory)
        if sockets is not None:
            make_socket_dir(sockets)
        self._check_socket_paths(instance_id, staging)
        argv = build_argv(description, staging, token, disk_paths, self.qemu_binary, incoming, paused)
        try:
            staging.directory.mkdir()
            write_atomically(staging.runtime,
                             canonical_json({"argv": argv, "description": description, "token": token}) + "\n")
            if incoming:
                staging.incoming.touch()
            pid = await self._spawn(instance_id, argv, staging)
            write_atomically(staging.pid, f"{pid} {token}\n")
            uri = await self._check_started(instance_id, staging, token, incoming, paused)
            remove_entry(self.instances / instance_id, sockets=False)
            staging.directory.rename(self.instances / instance_id)
            return uri
        except BaseException as error:
            with trio.CancelScope(shield=True):
                await self._forget_monitor(instance_id)
                # By the token, not only the pid file: a launch cancelled while QEMU daemonized may
                # leave a QEMU that has not written its pid file yet.
                for pid in processes_with_token(token):
                    with contextlib.suppress(DriverError):
                        await kill_and_wait(pid, token, instance_id)
                remove_entry(staging.directory)
            if isinstance(error, OSError):
                raise DriverError(f"cannot start instance {instance_id} under {self.instances}: {error}; "
                                  "check that the state dir exists and is writable") from error
            raise

    def _check_socket_paths(self, instance_id: str, files: InstanceFiles) -> None:
        longest = max((files.qmp, files.console, files.control), key=lambda p: len(os.fsencode(p)))
        if len(os.fsencode(longest)) > SOCKET_PATH_MAX:
            raise DriverError(f"the socket path {longest} of instance {instance_id} is longer than the "
                              f"{SOCKET_PATH_MAX} bytes a unix socket allows; use a shorter state dir")

    async def _spawn(self, instance_id: str, argv: list[str], files: InstanceFiles) -> int:
        """Run QEMU with -daemonize: it returns once the machine is built; the pid is QEMU's own pid file."""
        result = None
        try:
            with open(files.qemu_log, "ab") as errors, trio.move_on_after(SPAWN_TIMEOUT_S):
                result = await trio.run_process(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                stderr=errors, start_new_session=True, check=False)
        except FileNotFoundError as error:
            raise DriverError(f"cannot run {self.qemu_binary} for instance {instance_id}: {error}; install "
                              "qemu-system-x86 or point the driver at the QEMU binary") from error
        if result is None or result.returncode != 0:
            reason = "it hung" if result is None else f"exit status {result.returncode}"
            with contextlib.suppress(OSError):
                reason += ": " + " ".join(files.qemu_log.read_text(errors="replace").split("\n")[-6:]).strip()
            raise DriverError(f"QEMU did not start instance {instance_id} ({reason}); see {files.qemu_log}")
        try:
            return int(files.qemu_pid.read_text().split()[0])
        except (OSError, ValueError, IndexError) as error:
            raise DriverError(f"QEMU started instance {instance_id} but wrote no pid to {files.qemu_pid}") from error

    async def _check_started(self, instance_id: str, files: InstanceFiles, token: str, incoming: bool,
                             paused: bool = False) -> str:
        """Connect over QMP and check the status; a migration target also starts listening (returns its URI)."""
        monitor = await self._monitor(instance_id, files, token)
        try:
            status = (await monitor.execute("query-status", timeout_s=QMP_TIMEOUT_S))["status"]
            expected = "inmigrate" if incoming else "prelaunch" if paused else "running"
            if status != expected:
                raise DriverError(f"QEMU of instance {instance_id} is {status!r} right after starting, not "
                                  f"{expected!r}; see {files.qemu_log}")
            if not incoming:
                return ""
            await monitor.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": "events", "state": True}, {"capability": "return-path", "state": True}]})
            await self._set_tls(monitor, "server")
            await monitor.execute("migrate-incoming", {"uri": migration_uri(self.migration_host, 0)})
            info = await monitor.execute("query-migrate")
            port = info["socket-address"][0]["port"]
            return migration_uri(self.migration_host, port)
        except qmp.QmpFailure as error:
            raise DriverError(f"QEMU of instance {instance_id} on {self.node_name} did not get ready: {error}; "
                              f"see {files.qemu_log}") from error
        except (KeyError, IndexError, TypeError) as error:
            raise DriverError(f"QEMU of instance {instance_id} gave an unexpected answer while getting ready "
                              f"({error!r}); check that {self.qemu_binary} is QEMU 7.2 or newer") from error

    async def _end(self, files: InstanceFiles, instance_id: str, timeout_s: float) -> None:
        """Ask the guest to power off, then `quit`, then SIGKILL; return once the process is gone."""
        process = read_pid(files)
        if process is None or not qemu_alive(*process):
            await self._forget_monitor(instance_id)
            return
        files.stopping.touch()
        if timeout_s > 0 and await self._qemu_status(instance_id, files) == "running":
            with contextlib.suppress(qmp.QmpFailure):
                await self._power_off(instance_id, files, process, timeout_s)
        if qemu_alive(*process):
            with contextlib.suppress(qmp.QmpFailure):
                await self._execute(instance_id, files, "quit", timeout_s=QUIT_WAIT_S)
            await wait_until(lambda: not qemu_alive(*process), QUIT_WAIT_S)
        await self._forget_monitor(instance_id)
        await kill_and_wait(*process, instance_id)

    async def _power_off(self, instance_id: str, files: InstanceFiles, process: tuple[int, str],
                         timeout_s: float) -> None:
        """Press the ACPI power button until the guest has powered off or `timeout_s` has passed.

        The press is repeated every POWERDOWN_REPEAT_S: a guest that is still booting has not
        enabled the button yet and misses it.
        """
        deadline = trio.current_time() + timeout_s
        pressed_at = None
        while qemu_alive(*process) and trio.current_time() < deadline:
            if pressed_at is None or trio.current_time() - pressed_at >= POWERDOWN_REPEAT_S:
                await self._execute(instance_id, files, "system_powerdown")
                pressed_at = trio.current_time()
            await trio.sleep(MIGRATION_POLL_S)
            if await self._qemu_status(instance_id, files, max(deadline - trio.current_time(), 0.01)) == "shutdown":
                return

    # --- QMP -------------------------------------------------------------------------

    async def _monitor(self, instance_id: str, files: InstanceFiles, token: str | None = None,
                       timeout_s: float = QMP_TIMEOUT_S) -> qmp.Monitor:
        """The open QMP connection to the instance's QEMU (one per instance: QEMU serves one client at a time)."""
        if token is None:
            process = read_pid(files)
            if process is None:
                raise qmp.QmpClosed(f"instance {instance_id} has no process here")
            token = process[1]
        async with self._connect_locks.setdefault(instance_id, trio.Lock()):
            cached = self._monitors.get(instance_id)
            if cached is not None and cached[0] == token and not cached[1].closed:
                return cached[1]
            if cached is not None:
                await cached[1].aclose()
                del self._monitors[instance_id]
            monitor = await qmp.connect(files.qmp, timeout_s)
            self._monitors[instance_id] = (token, monitor)
            return monitor

    async def _forget_monitor(self, instance_id: str) -> None:
        cached = self._monitors.pop(instance_id, None)
        if cached is not None:
            await cached[1].aclose()

    async def _execute(self, instance_id: str, files: InstanceFiles, command: str, arguments: dict | None = None,
                       timeout_s: float = QMP_TIMEOUT_S):
        monitor = await self._monitor(instance_id, files, timeout_s=timeout_s)
        return await monitor.execute(command, arguments, timeout_s)

    async def _qemu_status(self, instance_id: str, files: InstanceFiles,
                           timeout_s: float = QMP_TIMEOUT_S) -> str | None:
        """QEMU's run state ("running", "shutdown", "inmigrate", ...), or None when the monitor does not answer."""
        try:
            return (await self._execute(instance_id, files, "query-status", timeout_s=timeout_s))["status"]
        except (qmp.QmpFailure, KeyError, TypeError):
            return None

    async def _set_tls(self, monitor: qmp.Monitor, endpoint: str) -> None:
        """Make a fresh TLS credentials object for this migration (certificates are read now), or turn TLS off."""
        with contextlib.suppress(qmp.QmpError):
            await monitor.execute("object-del", {"id": TLS_OBJECT_ID})
        if self.tls_dir is None:
            await monitor.execute("migrate-set-parameters", {"tls-creds": ""})
            return
        await monitor.execute("object-add", {"qom-type": "tls-creds-x509", "id": TLS_OBJECT_ID,
                                             "dir": os.fspath(self.tls_dir), "endpoint": endpoint,
                                             "verify-peer": True})
        await monitor.execute("migrate-set-parameters", {"tls-creds": TLS_OBJECT_ID})

    # --- migration source ------------------------------------------------------------

    async def _prepare_target(self, target: str, instance_id: str, description: dict) -> str:
        """The target's URI. When preparing fails the target is told to abort all the same: a lost answer
        may have left a destination waiting there (a refusal leaves nothing abort ends: accept_incoming)."""
        try:
            return await self.incoming.prepare(target, instance_id, description)
        except BaseException as error:
            with trio.CancelScope(shield=True):
                await self._abort_target(target, instance_id)
            if isinstance(error, (OSError, ValueError)):
                raise DriverError(f"node {target} could not prepare to receive instance {instance_id}: {error}; "
                                  f"it keeps running on {self.node_name}") from error
            raise

    async def _send(self, instance_id: str, files: InstanceFiles, description: dict, uri: str) -> dict:
        """Run the migration to `uri` until QEMU says it has ended; the last `query-migrate` result."""
        try:
            monitor = await self._monitor(instance_id, files)
            await monitor.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": "events", "state": True}, {"capability": "return-path", "state": True}]})
            await self._set_tls(monitor, "client")
            await monitor.execute("migrate-set-parameters", migration_parameters(description, self.tls_dir is not None))
            await monitor.execute("migrate", {"uri": uri})
            deadline = trio.current_time() + self.migration_timeout_s
            while True:
                info = await monitor.execute("query-migrate")
                self.last_migration[instance_id] = info
                if self.on_progress is not None:
                    self.on_progress(instance_id, info)
                if info.get("status") in MIGRATION_ENDED:
                    return info
                if trio.current_time() >= deadline:
                    return await self._give_up(instance_id, files)
                await trio.sleep(MIGRATION_POLL_S)
        except qmp.QmpFailure as error:
            raise DriverError(f"live migration of instance {instance_id} from {self.node_name} failed: {error}; "
                              "it keeps running here") from error

    async def _give_up(self, instance_id: str, files: InstanceFiles) -> dict:
        """The migration did not end in time: cancel it and wait for QEMU to say so."""
        await self._execute(instance_id, files, "migrate_cancel")
        deadline = trio.current_time() + CANCEL_WAIT_S
        info = {}
        while trio.current_time() < deadline:
            info = await self._execute(instance_id, files, "query-migrate")
            if info.get("status") in MIGRATION_ENDED:
                break
            await trio.sleep(MIGRATION_POLL_S)
        self.last_migration[instance_id] = info
        return {**info, "status": info.get("status", "failed"),
                "error-desc": f"it did not finish within {self.migration_timeout_s} s (is the guest dirtying memory "
                              "faster than the link? raise hvparam migration_bandwidth)"}

    async def _cancel_quietly(self, instance_id: str, files: InstanceFiles) -> None:
        with contextlib.suppress(qmp.QmpFailure):
            info = await self._execute(instance_id, files, "query-migrate", timeout_s=2.0)
            if info.get("status") not in MIGRATION_ENDED:
                await self._execute(instance_id, files, "migrate_cancel", timeout_s=2.0)
        await self._resume(instance_id, files)

    async def _abort_target(self, target: str, instance_id: str) -> None:
        try:
            await self.incoming.abort(target, instance_id)
        except Exception as error:   # the migration has already failed; the target's reconciler reaps the rest
            log.warning("could not end the destination of instance %s on %s: %s", instance_id, target, error)

    async def _resume(self, instance_id: str, files: InstanceFiles) -> None:
        """After a failed migration QEMU restarts the guest itself (it was running: `migrate` refuses
        anything else); make sure it did, and `cont` it if it stayed stopped."""
        deadline = trio.current_time() + RESUME_WAIT_S
        status = None
        while trio.current_time() < deadline:
            status = await self._qemu_status(instance_id, files, 2.0)
            if status in ("running", None) or status in QEMU_DEAD_STATUSES:
                return
            await trio.sleep(MIGRATION_POLL_S)
        if status in ("paused", "postmigrate", "finish-migrate"):
            with contextlib.suppress(qmp.QmpFailure):
                await self._execute(instance_id, files, "cont")
