"""Ganeti OS definitions on this node: finding them on the search path, checking them, and running their scripts.

An OS definition is a directory named for the OS (Ganeti's OS API, man page
ganeti-os-interface(7)): the executables `create`, `import`, `export`,
`rename` and `verify`, and the text files `ganeti_api_version` (one version a
line), `variants.list` and `parameters.list`. What a directory must hold
depends on the newest API version it declares, as in Ganeti: `verify` and
`parameters.list` from API 20 on, `variants.list` (optional) from 15 on.
Cairn speaks API 20, 15 and 10. An instance's OS is named `NAME` or
`NAME+VARIANT` (`debootstrap+default`).

Scripts run the way Ganeti's node daemon runs them: an environment of
exactly the variables of the OS API (nothing inherited but Ganeti's PATH),
the definition's directory as working directory, stdout and stderr appended
to a log file (stdout carries the disk's bytes for `export`, stdin for
`import`), and a timeout after which the script's process group is killed.
A failed script raises ScriptFailed carrying the last lines it wrote.

Everything here is synchronous and blocks until the script ends: the node's
daemon calls it from a worker thread (`trio.to_thread.run_sync`).
"""

import os
import signal
import stat
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

# Ganeti's default OS search path (its configure's --with-os-search-path), in its order: the first
# directory holding an OS of a given name wins.
DEFAULT_SEARCH_PATH = (Path("/srv/ganeti/os"), Path("/usr/local/lib/ganeti/os"), Path("/usr/lib/ganeti/os"),
                       Path("/usr/share/ganeti/os"))
SEARCH_PATH_VARIABLE = "CAIRN_OS_SEARCH_PATH"  # colon-separated directories, instead of the default
API_VERSIONS = (20, 15, 10)
API_VARIANTS, API_PARAMETERS = 15, 20
SCRIPTS = ("create", "export", "import", "rename", "verify")
API_FILE, VARIANTS_FILE, PARAMETERS_FILE = "ganeti_api_version", "variants.list", "parameters.list"
SCRIPT_PATH = "/sbin:/bin:/usr/sbin:/usr/bin"  # Ganeti's PATH for hooks and OS scripts
TAIL_LINES = 20
TAIL_BYTES = 64 * 1024
KILL_GRACE_S = 5.0
TIMEOUT_S = {"create": 3600.0, "import": 3600.0, "export": 3600.0, "rename": 300.0, "verify": 60.0}
# Ganeti's hypervisor parameters that name the disk and NIC model the guest sees.
HV_DISK_TYPE, HV_NIC_TYPE = "disk_type", "nic_type"


class OsError(Exception):
    """An OS definition cannot be used as asked; the message says why and what to do."""


class OsNotFound(OsError):
    """No directory of that name on the search path."""


class OsInvalid(OsError):
    """The directory is not a usable OS definition (a file missing, not executable, an unsupported API)."""


class ScriptFailed(OsError):
    """A script exited non-zero or ran out of time; `tail` holds the last lines of its output."""

    def __init__(self, message: str, script: str, returncode: int | None, tail: list[str],
                 log_path: Path | None) -> None:
        super().__init__(message)
        self.script, self.returncode, self.tail, self.log_path = script, returncode, tail, log_path


@dataclass(frozen=True)
class OsDefinition:
    name: str
    path: Path
    api_versions: tuple[int, ...]  # as the file lists them, newest first by convention
    variants: tuple[str, ...]  # read only for API 15 and up
    parameters: tuple[tuple[str, str], ...]  # (name, description); API 20 only

    @property
    def api_version(self) -> int:
        """The newest API version both the definition and Cairn speak: the one its scripts are run with."""
        return max(set(API_VERSIONS) & set(self.api_versions))

    @property
    def full_names(self) -> tuple[str, ...]:
        """The names an instance may give as its OS, as `gnt-os list` prints them."""
        return tuple(f"{self.name}+{variant}" for variant in self.variants) or (self.name,)

    def script(self, kind: str) -> Path:
        return self.path / kind


@dataclass(frozen=True)
class Diagnosis:
    """One directory of the search path, as `gnt-os diagnose` reports it."""

    name: str
    path: Path
    definition: OsDefinition | None  # None when invalid
    problem: str = ""
    shadowed_by: Path | None = None  # an earlier directory of the search path has an OS of this name

    @property
    def valid(self) -> bool:
        return self.definition is not None


@dataclass(frozen=True)
class Disk:
    path: str
    access: str = "rw"
    backend_type: str = "file:loop"  # Ganeti's word for a file disk the hypervisor opens through a loop device
    uuid: str = ""
    name: str = ""


@dataclass(frozen=True)
class Nic:
    mac: str
    ip: str = ""
    mode: str = ""  # bridged, routed or openvswitch
    link: str = ""  # the bridge (bridged), the switch (openvswitch) or the routing table (routed)
    uuid: str = ""
    name: str = ""


@dataclass(frozen=True)
class Instance:
    """What an OS script is told about the instance it works on."""

    name: str
    os: str  # NAME or NAME+VARIANT
    hypervisor: str = "kvm"
    disks: tuple[Disk, ...] = ()
    nics: tuple[Nic, ...] = ()
    os_parameters: Mapping[str, str] = field(default_factory=dict)
    hvparams: Mapping[str, object] = field(default_factory=dict)
    beparams: Mapping[str, object] = field(default_factory=dict)
    uuid: str = ""
    primary_node: str = ""
    secondary_nodes: tuple[str, ...] = ()


# -- finding and checking definitions


def search_path() -> tuple[Path, ...]:
    """The directories searched for OS definitions: $CAIRN_OS_SEARCH_PATH (colon-separated), else Ganeti's."""
    configured = os.environ.get(SEARCH_PATH_VARIABLE, "")
    return tuple(Path(part) for part in configured.split(":") if part) or DEFAULT_SEARCH_PATH


def split_name(full_name: str) -> tuple[str, str]:
    """`debootstrap+default` as ("debootstrap", "default"); `noop` as ("noop", "")."""
    name, _, variant = full_name.partition("+")
    return name, variant


def load(directory: Path) -> OsDefinition:
    """The OS definition in `directory`, checked as Ganeti checks one; OsInvalid naming the problem otherwise."""
    versions = _api_versions(directory)
    newest = max(versions)
    required = {script: True for script in SCRIPTS}
    if newest >= API_VARIANTS:
        required[VARIANTS_FILE] = False
    if newest >= API_PARAMETERS:
        required[PARAMETERS_FILE] = True
    else:
        del required["verify"]
    for filename, needed in required.items():
        _check_file(directory, filename, needed)
    variants = _lines(directory / VARIANTS_FILE) if newest >= API_VARIANTS else []
    parameters = []
    if newest >= API_PARAMETERS:
        for line in _lines(directory / PARAMETERS_FILE):
            name, *description = line.split(None, 1)
            parameters.append((name, description[0].strip() if description else ""))
    return OsDefinition(directory.name, directory, tuple(versions), tuple(variants), tuple(parameters))


def _api_versions(directory: Path) -> list[int]:
    path = directory / API_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise OsInvalid(f"OS definition {directory}: '{API_FILE}' is missing; it must list the OS API versions "
                        f"the scripts follow, one per line (Cairn speaks {', '.join(map(str, API_VERSIONS))})"
                        ) from None
    except OSError as error:
        raise OsInvalid(f"OS definition {directory}: cannot read '{API_FILE}': {error.strerror}") from None
    try:
        versions = [int(line) for line in text.split()]
    except ValueError:
        raise OsInvalid(f"OS definition {directory}: '{API_FILE}' holds {text.strip()!r}; it must hold whole "
                        "numbers, one per line") from None
    if not set(versions) & set(API_VERSIONS):
        raise OsInvalid(f"OS definition {directory}: API versions {versions or 'none'} are not supported; Cairn "
                        f"runs scripts of API {', '.join(map(str, API_VERSIONS))} (Ganeti's)")
    return versions


def _check_file(directory: Path, filename: str, needed: bool) -> None:
    try:
        mode = (directory / filename).stat().st_mode  # follows symlinks, as variants.list often is one
    except FileNotFoundError:
        if not needed:
            return
        raise OsInvalid(f"OS definition {directory}: '{filename}' is missing; this OS API version needs it") from None
    except OSError as error:
        raise OsInvalid(f"OS definition {directory}: cannot read '{filename}': {error.strerror}") from None
    if not stat.S_ISREG(mode):
        raise OsInvalid(f"OS definition {directory}: '{filename}' is not a regular file")
    if filename in SCRIPTS and not mode & stat.S_IXUSR:
        raise OsInvalid(f"OS definition {directory}: '{filename}' is not executable; chmod +x it")


def _lines(path: Path) -> list[str]:
    """The lines of a list file, without blank lines and # comments; none when the file is absent."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except OSError as error:
        raise OsInvalid(f"OS definition {path.parent}: cannot read '{path.name}': {error.strerror}") from None
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def find(full_name: str, path: tuple[Path, ...] | None = None) -> OsDefinition:
    """The definition an instance's OS name (`NAME` or `NAME+VARIANT`) refers to, from the first directory of
    the search path that has it; OsNotFound or OsInvalid otherwise. The variant is not checked here."""
    name, _ = split_name(full_name)
    directories = path if path is not None else search_path()
    if not name or name in (".", "..") or "/" in name:
        raise OsNotFound(f"{full_name!r} is not an OS name; give NAME or NAME+VARIANT (see 'cairn os list')")
    for directory in directories:
        if (directory / name).is_dir():
            return load(directory / name)
    raise OsNotFound(f"Directory for OS {name} not found in search path ({':'.join(map(str, directories))}); "
                     "install the OS definition there (see 'cairn os diagnose')")


def diagnose(path: tuple[Path, ...] | None = None) -> list[Diagnosis]:
    """Every OS directory of the search path, valid or not, in search order (a name seen before is shadowed)."""
    found: list[Diagnosis] = []
    first: dict[str, Path] = {}
    for directory in path if path is not None else search_path():
        try:
            entries = sorted(entry for entry in directory.iterdir() if entry.is_dir()
                             and not entry.name.startswith("."))
        except OSError:
            continue  # an absent search directory is normal: Ganeti's default lists four
        for entry in entries:
            try:
                definition, problem = load(entry), ""
            except OsInvalid as error:
                definition, problem = None, str(error)
            found.append(Diagnosis(entry.name, entry, definition, problem, first.get(entry.name)))
            first.setdefault(entry.name, entry)
    return found


def check_variant(definition: OsDefinition, full_name: str) -> str:
    """The variant `full_name` asks for (the first listed when it names none), checked; OsError otherwise."""
    _, variant = split_name(full_name)
    if not definition.variants:
        if variant:
            raise OsError(f"OS '{definition.name}' does not support variants ('{variant}' given); use "
                          f"'{definition.name}'")
        return ""
    if variant and variant not in definition.variants:
        raise OsError(f"OS '{definition.name}' does not support variant '{variant}'; its variants are "
                      f"{', '.join(definition.variants)}")
    return variant or definition.variants[0]


def check_parameters(definition: OsDefinition, parameters: Mapping[str, str]) -> None:
    """OsError unless every parameter is one the definition declares in parameters.list."""
    if not parameters:
        return
    if definition.api_version < API_PARAMETERS:
        raise OsError(f"OS '{definition.name}' takes no OS parameters (its OS API is {definition.api_version}; "
                      f"parameters need {API_PARAMETERS}); give none")
    known = {name for name, _ in definition.parameters}
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise OsError(f"OS '{definition.name}' does not support the parameters {', '.join(unknown)}; it supports "
                      f"{', '.join(sorted(known)) or 'none'} (see 'cairn os info {definition.name}')")


# -- the environment


def core_environment(definition: OsDefinition, full_name: str, parameters: Mapping[str, str],
                     debug_level: int = 0) -> dict[str, str]:
    """The variables every script gets: API version, OS name and variant, OSP_* parameters, debug level, PATH."""
    environment = {
        "OS_API_VERSION": str(definition.api_version),
        "OS_NAME": definition.name,
        "OS_VARIANT": check_variant(definition, full_name),  # "" when the definition has no variants
        "DEBUG_LEVEL": str(debug_level),
        "PATH": SCRIPT_PATH,
    }
    if definition.api_version >= API_PARAMETERS:
        for name, value in parameters.items():
            environment[f"OSP_{name.upper()}"] = str(value)
    return environment


def instance_environment(definition: OsDefinition, instance: Instance, debug_level: int = 0) -> dict[str, str]:
    """The variables of a script run for `instance`: the core ones, then the instance, its disks and NICs."""
    environment = core_environment(definition, instance.os, instance.os_parameters, debug_level)
    environment.update({
        "INSTANCE_NAME": instance.name, "INSTANCE_OS": instance.os, "HYPERVISOR": instance.hypervisor,
        "DISK_COUNT": str(len(instance.disks)), "NIC_COUNT": str(len(instance.nics)),
        "INSTANCE_SECONDARY_NODES": " ".join(instance.secondary_nodes),
    })
    _set_if(environment, "INSTANCE_UUID", instance.uuid)
    _set_if(environment, "INSTANCE_PRIMARY_NODE", instance.primary_node)
    for index, disk in enumerate(instance.disks):
        prefix = f"DISK_{index}_"
        environment.update({prefix + "PATH": disk.path, prefix + "ACCESS": disk.access,
                            prefix + "BACKEND_TYPE": disk.backend_type})
        _set_if(environment, prefix + "UUID", disk.uuid)
        _set_if(environment, prefix + "NAME", disk.name)
        _set_if(environment, prefix + "FRONTEND_TYPE", str(instance.hvparams.get(HV_DISK_TYPE) or ""))
    for index, nic in enumerate(instance.nics):
        prefix = f"NIC_{index}_"
        environment[prefix + "MAC"] = nic.mac
        for suffix, value in (("UUID", nic.uuid), ("NAME", nic.name), ("IP", nic.ip), ("MODE", nic.mode),
                              ("LINK", nic.link), ("FRONTEND_TYPE", str(instance.hvparams.get(HV_NIC_TYPE) or ""))):
            _set_if(environment, prefix + suffix, value)
        if nic.mode == "bridged":
            _set_if(environment, prefix + "BRIDGE", nic.link)
    # Ganeti keeps the parameter's own spelling after the prefix: INSTANCE_BE_maxmem, INSTANCE_HV_kernel_path.
    for kind, parameters in (("BE", instance.beparams), ("HV", instance.hvparams)):
        for key, value in parameters.items():
            environment[f"INSTANCE_{kind}_{key}"] = "" if value is None else str(value)
    return environment


def _set_if(environment: dict[str, str], key: str, value: str) -> None:
    if value:
        environment[key] = value


# -- running scripts


def run_script(definition: OsDefinition, kind: str, environment: Mapping[str, str], log_path: Path | None,
               timeout_s: float, arguments: tuple[str, ...] = (), stdin=None, stdout=None,
               pass_fds: tuple[int, ...] = ()) -> None:
    """Run one script of the definition with exactly `environment`, its output appended to `log_path` (or kept
    in a temporary file when None); ScriptFailed with the output's last lines if it fails or times out.

    `stdin` and `stdout` (open files) replace /dev/null and the log for import and export.
    """
    script = definition.script(kind)
    try:
        log = open(log_path, "a+b") if log_path is not None else tempfile.TemporaryFile()
    except OSError as error:
        raise OsError(f"cannot open the log file {log_path}: {error.strerror}; check that its directory "
                      "exists and is writable") from None
    with log:
        start = log.seek(0, os.SEEK_END)
        try:
            process = subprocess.Popen([str(script), *arguments], cwd=definition.path, env=dict(environment),
                                       stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                       stdout=stdout if stdout is not None else log, stderr=log,
                                       pass_fds=pass_fds, start_new_session=True)
        except OSError as error:
            raise ScriptFailed(f"OS '{definition.name}': cannot run {script}: {error.strerror}", kind, None, [],
                               log_path) from None
        timed_out = _wait(process, timeout_s)
        if process.returncode == 0 and not timed_out:
            return
        log.flush()
        tail = _tail(log, start)
        why = f"took longer than {timeout_s:g} s and was killed" if timed_out else f"exited with {process.returncode}"
        where = f" (log: {log_path})" if log_path is not None else ""
        lines = "\n".join(tail) if tail else "(no output)"
        raise ScriptFailed(f"OS {kind} script of '{definition.name}' {why}{where}; last lines of its output:\n"
                           f"{lines}", kind, process.returncode, tail, log_path)


def _wait(process: subprocess.Popen, timeout_s: float) -> bool:
    """Wait for the script; on timeout kill its whole process group (TERM, then KILL). Whether it timed out."""
    try:
        process.wait(timeout=timeout_s)
        return False
    except subprocess.TimeoutExpired:
        pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=KILL_GRACE_S)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(process.pid, signal.SIGKILL)  # what the script started and left behind, if it ignored TERM
    except ProcessLookupError:
        pass
    process.poll()
    return True


def _tail(log, start: int) -> list[str]:
    """The last lines this run wrote to the log (earlier runs' lines are not its)."""
    end = log.seek(0, os.SEEK_END)
    log.seek(max(start, end - TAIL_BYTES))
    text = log.read().decode("utf-8", "replace")
    return text.splitlines()[-TAIL_LINES:]


def _prepared(instance: Instance, path: tuple[Path, ...] | None, debug_level: int) -> tuple[OsDefinition, dict]:
    definition = find(instance.os, path)
    check_parameters(definition, instance.os_parameters)
    return definition, instance_environment(definition, instance, debug_level)


def verify(full_name: str, parameters: Mapping[str, str], log_path: Path | None = None, *,
           path: tuple[Path, ...] | None = None, debug_level: int = 0,
           timeout_s: float = TIMEOUT_S["verify"]) -> None:
    """Check an OS name and its parameters as Ganeti does before an install: the variant, the parameter names
    against parameters.list, then their values with `verify parameters` (API 20; older definitions have no
    verify script and take no parameters)."""
    _verify(find(full_name, path), full_name, parameters, log_path, debug_level, timeout_s)


def _verify(definition: OsDefinition, full_name: str, parameters: Mapping[str, str], log_path: Path | None,
            debug_level: int, timeout_s: float) -> None:
    check_parameters(definition, parameters)
    environment = core_environment(definition, full_name, parameters, debug_level)
    if definition.api_version >= API_PARAMETERS:
        run_script(definition, "verify", environment, log_path, timeout_s, arguments=("parameters",))


def create(instance: Instance, log_path: Path | None, *, reinstall: bool = False, debug_level: int = 0,
           path: tuple[Path, ...] | None = None, timeout_s: float = TIMEOUT_S["create"]) -> None:
    """Install the instance's OS onto its disks with the definition's `create` script, after `verify
    parameters` (API 20); INSTANCE_REINSTALL=1 when reinstalling."""
    definition = find(instance.os, path)
    _verify(definition, instance.os, instance.os_parameters, log_path, debug_level, TIMEOUT_S["verify"])
    environment = instance_environment(definition, instance, debug_level)
    if reinstall:
        environment["INSTANCE_REINSTALL"] = "1"
    run_script(definition, "create", environment, log_path, timeout_s)


def rename(instance: Instance, old_name: str, log_path: Path | None, *, debug_level: int = 0,
           path: tuple[Path, ...] | None = None, timeout_s: float = TIMEOUT_S["rename"]) -> None:
    """Tell the guest OS its new name (`instance.name`) with the definition's `rename` script."""
    definition, environment = _prepared(instance, path, debug_level)
    environment["OLD_INSTANCE_NAME"] = old_name
    run_script(definition, "rename", environment, log_path, timeout_s)


def export(instance: Instance, disk_index: int, stream, log_path: Path | None, *, debug_level: int = 0,
           path: tuple[Path, ...] | None = None, timeout_s: float = TIMEOUT_S["export"]) -> int | None:
    """Write a dump of disk `disk_index` to `stream` (an open file) with the `export` script; the size in bytes
    the script announced on EXP_SIZE_FD, if it did. Its stderr goes to the log."""
    definition, environment = _prepared(instance, path, debug_level)
    environment.update(_device_variables("EXPORT", instance, disk_index))
    size_read, size_write = os.pipe()
    environment["EXP_SIZE_FD"] = str(size_write)
    try:
        run_script(definition, "export", environment, log_path, timeout_s, stdout=stream, pass_fds=(size_write,))
    finally:
        os.close(size_write)
        announced = _read_all(size_read)
    try:
        return int(announced.strip()) if announced.strip() else None
    except ValueError:
        return None


def import_(instance: Instance, disk_index: int, stream, log_path: Path | None, *, debug_level: int = 0,
            path: tuple[Path, ...] | None = None, timeout_s: float = TIMEOUT_S["import"]) -> None:
    """Restore disk `disk_index` from `stream` (an open file holding what `export` wrote) with the `import`
    script. (`import` is a Python keyword, hence the underscore.)"""
    definition, environment = _prepared(instance, path, debug_level)
    environment.update(_device_variables("IMPORT", instance, disk_index))
    run_script(definition, "import", environment, log_path, timeout_s, stdin=stream)


def _device_variables(prefix: str, instance: Instance, disk_index: int) -> dict[str, str]:
    """EXPORT_* or IMPORT_*: the disk one run of export or import works on."""
    if not 0 <= disk_index < len(instance.disks):
        raise OsError(f"instance {instance.name} has no disk {disk_index}; its disks are 0 to "
                      f"{len(instance.disks) - 1}")
    disk_path = instance.disks[disk_index].path
    return {f"{prefix}_INDEX": str(disk_index), f"{prefix}_DISK_PATH": disk_path, f"{prefix}_DEVICE": disk_path}


def _read_all(descriptor: int) -> str:
    """What is waiting in a pipe whose writers are gone (or, if a stray child still holds it, what is there)."""
    os.set_blocking(descriptor, False)
    chunks = []
    try:
        while chunk := os.read(descriptor, 4096):
            chunks.append(chunk)
    except BlockingIOError:
        pass
    finally:
        os.close(descriptor)
    return b"".join(chunks).decode("ascii", "replace")
