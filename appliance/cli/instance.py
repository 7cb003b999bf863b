"""`cairn instance ...`: Ganeti's gnt-instance over the cluster API (add, remove, start, stop, move, list, ...)."""

from __future__ import annotations

import contextlib
import sys
from typing import Optional

import typer

from appliance.cli import output as out
from appliance.cli.job import Failed, Session, command, parameter_error
from appliance.client.jobs import operation

app = typer.Typer(help="Instances (VMs): add, remove, start, stop, reboot, migrate, fail over, change, list.",
                  no_args_is_help=True)

INSTANCE = typer.Argument(..., metavar="INSTANCE", help="The instance's name.")
MEMORY_KEYS = ("memory", "maxmem")
NOOP_OS = "noop"  # the catalogue's OS definition that installs nothing


def hostname(name: str) -> str:
    """Instance and node names are host names, which Ganeti (and the cluster) keep in lower case."""
    return name.strip().lower()


def _size(key: str, text: str) -> int:
    try:
        return out.parse_size(text)
    except ValueError:
        raise parameter_error(f"'{key}' (value {text}) is not a valid size; give MiB, or a number with M, G or T "
                              "(e.g. 512M, 10G)") from None


def _int(key: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise parameter_error(f"'{key}' (value {text}) is not a whole number of at least 1")
    return value


def backend_parameters(text: str | None) -> dict:
    """memory_mib and vcpus of `-B memory=SIZE,vcpus=N`; Ganeti's parameter errors otherwise."""
    found: dict = {}
    for key, value in out.parse_keyvals(text or "").items():
        if key in MEMORY_KEYS:
            found["memory_mib"] = _size(key, value)
        elif key == "vcpus":
            found["vcpus"] = _int(key, value)
        elif key == "minmem":
            raise parameter_error("an instance has one memory size in cairn; give memory=SIZE")
        else:
            raise parameter_error(f"Unknown parameter '{key}'; -B takes memory=SIZE and vcpus=N")
    return found


def hypervisor_parameters(text: str | None) -> tuple[str | None, dict | None]:
    """The hypervisor name and parameters of `-H NAME[:key=value,...]`."""
    if not text:
        return None, None
    name, colon, rest = text.partition(":")
    if "=" in name:  # only parameters, no name
        return None, out.parse_keyvals(text)
    return name or None, (out.parse_keyvals(rest) if colon else None)


def disk_sizes(disks: list[str] | None, size: str | None) -> list[int] | None:
    """Disk sizes (MiB) in index order from `--disk N:size=SIZE`... or `-s SIZE`; None when neither is given."""
    if size is not None:
        if disks:
            raise parameter_error("give either -s SIZE (one disk) or --disk N:size=SIZE options, not both")
        return [_size("size", size)]
    if not disks:
        return None
    by_index: dict[int, int] = {}
    for spec in disks:
        index, colon, rest = spec.partition(":")
        settings = out.parse_keyvals(rest)
        if not colon or not index.isdigit() or set(settings) != {"size"}:
            raise parameter_error(f"disk '{spec}' is not N:size=SIZE (e.g. --disk 0:size=10G)")
        if int(index) in by_index:
            raise parameter_error(f"disk {index} is given twice")
        by_index[int(index)] = _size(f"disk {index} size", settings["size"])
    if sorted(by_index) != list(range(len(by_index))):
        given = ", ".join(str(index) for index in sorted(by_index))
        raise parameter_error(f"disk indexes must run 0, 1, 2 ... without gaps; got {given}")
    return [by_index[i] for i in range(len(by_index))]


def nic_specs(nets: list[str] | None, no_nics: bool) -> list[dict] | None:
    """The NICs of `--net N:key=value,...` options (Ganeti's form) or `--no-nics`; None when neither is given."""
    if no_nics:
        if nets:
            raise parameter_error("give either --net options or --no-nics, not both")
        return []
    if not nets:
        return None
    by_index: dict[int, dict] = {}
    for spec in nets:
        index, colon, rest = spec.partition(":")
        settings = out.parse_keyvals(rest) if colon else {}
        if not index.isdigit() or not set(settings) <= {"link", "mode", "mac"}:
            raise parameter_error(f"NIC '{spec}' is not N:link=BRIDGE[,mode=bridged][,mac=MAC] "
                                  "(e.g. --net 0:link=br0)")
        if int(index) in by_index:
            raise parameter_error(f"NIC {index} is given twice")
        by_index[int(index)] = {"mode": "bridged", "mac": "", **settings}
    if sorted(by_index) != list(range(len(by_index))):
        raise parameter_error("NIC indexes must run 0, 1, 2 ... without gaps; got "
                              + ", ".join(str(index) for index in sorted(by_index)))
    return [by_index[index] for index in range(len(by_index))]


def node_pair(text: str) -> tuple[str, str | None]:
    """PRIMARY and SECONDARY of `-n PRIMARY[:SECONDARY]`."""
    primary, _, secondary = text.partition(":")
    if not primary:
        raise parameter_error(f"-n '{text}' names no primary node; give PRIMARY or PRIMARY:SECONDARY")
    return hostname(primary), (hostname(secondary) if secondary else None)


@command(app, name="add", kind="write")
def instance_add(
    session: Session,
    name: str = typer.Argument(..., metavar="INSTANCE", help="The new instance's host name."),
    disk_template: str = typer.Option(..., "-t", "--disk-template",
                                      help="diskless, file, or replicated (mirrored on a secondary node)."),
    node: Optional[str] = typer.Option(None, "-n", "--node", help="PRIMARY node, or PRIMARY:SECONDARY for "
                                                                  "replicated (or let -I choose them)."),
    iallocator: Optional[str] = typer.Option(None, "-I", "--iallocator",
                                             help="Let this allocator choose the node(s) when the job is planned: "
                                                  "hail (Cairn's placement engine); instead of -n."),
    os_name: Optional[str] = typer.Option(None, "-o", "--os", help="The OS image or definition to install, "
                                                                  "e.g. debian-12."),
    no_install: bool = typer.Option(False, "--no-install", help="Install nothing (the 'noop' OS definition: "
                                                                "blank disks); instead of --os."),
    backend: Optional[str] = typer.Option(None, "-B", "--backend-parameters",
                                          help="memory=SIZE,vcpus=N (SIZE in MiB, or with M, G or T)."),
    disks: Optional[list[str]] = typer.Option(None, "--disk", help="Disk N: N:size=SIZE, e.g. 0:size=10G "
                                                                   "(repeat for more disks)."),
    size: Optional[str] = typer.Option(None, "-s", "--os-size", help="One disk of this size (instead of --disk)."),
    no_start: bool = typer.Option(False, "--no-start", help="Leave the instance stopped (ADMIN_down)."),
    hypervisor: Optional[str] = typer.Option(None, "-H", "--hypervisor",
                                             help="NAME[:key=value,...] (default: the cluster's default)."),
    nets: Optional[list[str]] = typer.Option(None, "--net", help="NIC N: N:link=BRIDGE[,mode=bridged][,mac=MAC] "
                                             "(repeat for more NICs; default: one NIC on the default bridge)."),
    no_nics: bool = typer.Option(False, "--no-nics", help="No NIC at all."),
    ignore_ipolicy: bool = typer.Option(False, "--ignore-ipolicy", help="Skip the instance policy checks."),
) -> None:
    """Create an instance on the given node(s), or where -I hail places it, and, unless --no-start, start it."""
    if no_install and os_name:
        raise parameter_error("give either --os NAME or --no-install, not both")
    if node and iallocator:
        raise parameter_error("give either -n PRIMARY[:SECONDARY] or -I hail, not both")
    if not node and not iallocator:
        raise parameter_error("no node given; give -n PRIMARY[:SECONDARY], or -I hail to let the allocator choose")
    primary, secondary = node_pair(node) if node else (None, None)
    hypervisor_name, hvparams = hypervisor_parameters(hypervisor)
    params = backend_parameters(backend)
    nics = nic_specs(nets, no_nics)
    if nics is not None:
        params["nics"] = nics
    session.run([operation(
        "instance_add", name=hostname(name), primary=primary, secondary=secondary, disk_template=disk_template,
        os=NOOP_OS if no_install else (os_name or ""), disks=disk_sizes(disks, size),
        start=False if no_start else None, hypervisor=hypervisor_name, hvparams=hvparams,
        ignore_ipolicy=ignore_ipolicy or None, iallocator=iallocator, **params)])


def _confirm(what: str) -> None:
    if not sys.stdin.isatty():
        raise Failed(f"cairn: {what}; confirm with --force (-f)")
    if not typer.confirm(f"{what[0].upper()}{what[1:]}. Continue?", default=False):
        raise Failed("cairn: not confirmed; nothing done")


@command(app, name="remove", kind="write")
def instance_remove(
    session: Session,
    name: str = INSTANCE,
    force: bool = typer.Option(False, "-f", "--force", help="Do not ask for confirmation."),
    shutdown_timeout: Optional[int] = typer.Option(None, "--shutdown-timeout", help="Seconds to wait for the "
                                                                                     "instance to stop."),
) -> None:
    """Remove an instance and destroy its disks (asks first unless -f)."""
    name = hostname(name)
    if not force:
        _confirm(f"removing instance {name} destroys its disks and the data on them")
    session.run([operation("instance_remove", instance=name, shutdown_timeout_s=shutdown_timeout)])


TIMEOUT_HELP = "Seconds to wait for the instance to reach its new state."


@command(app, name="startup", kind="write")
def instance_startup(session: Session, name: str = INSTANCE,
                     timeout: Optional[int] = typer.Option(None, "--timeout", help=TIMEOUT_HELP)) -> None:
    """Start an instance (and mark it to be up)."""
    session.run([operation("instance_startup", instance=hostname(name), timeout_s=timeout)])


@command(app, name="shutdown", kind="write")
def instance_shutdown(
    session: Session,
    name: str = INSTANCE,
    timeout: Optional[int] = typer.Option(None, "--timeout", help="Seconds the guest gets to stop before it is "
                                                                  "forced."),
) -> None:
    """Stop an instance (and mark it to be down)."""
    session.run([operation("instance_shutdown", instance=hostname(name), timeout_s=timeout)])


@command(app, name="reboot", kind="write")
def instance_reboot(
    session: Session,
    name: str = INSTANCE,
    reboot_type: Optional[str] = typer.Option(None, "--type", help="soft (the guest reboots itself), hard (the "
                                                                   "VM restarts; the default) or full (stop, start)."),
    timeout: Optional[int] = typer.Option(None, "--shutdown-timeout", help=TIMEOUT_HELP),
) -> None:
    """Reboot an instance (a stopped one is started)."""
    session.run([operation("instance_reboot", instance=hostname(name), reboot_type=reboot_type, timeout_s=timeout)])


@command(app, name="migrate", kind="write")
def instance_migrate(
    session: Session,
    name: str = INSTANCE,
    allow_failover: bool = typer.Option(False, "--allow-failover", help="Fail over (stop, then start on the "
                                                                        "secondary) when it cannot migrate live."),
    target_node: Optional[str] = typer.Option(None, "-n", "--target-node", help="Where a diskless instance "
                                              "goes (a replicated one always goes to its secondary)."),
    timeout: Optional[int] = typer.Option(None, "--timeout", help="Seconds the move may take."),
) -> None:
    """Move a running instance to another node live: a replicated one to its secondary, a diskless one to -n."""
    session.run([operation("instance_migrate", instance=hostname(name), allow_failover=allow_failover or None,
                           timeout_s=timeout, target_node=hostname(target_node) if target_node else None)])


@command(app, name="failover", kind="write")
def instance_failover(
    session: Session,
    name: str = INSTANCE,
    timeout: Optional[int] = typer.Option(None, "--timeout", help="Seconds the move may take."),
    ignore_consistency: bool = typer.Option(False, "--ignore-consistency", help="Fail over even if the "
                                            "secondary's copy is recorded as not UPTODATE (it may have missed "
                                            "writes)."),
) -> None:
    """Move a replicated instance to its secondary node: stop it, then start it there."""
    session.run([operation("instance_failover", instance=hostname(name), timeout_s=timeout,
                           ignore_consistency=ignore_consistency or None)])


@command(app, name="replace-disks", kind="write")
def instance_replace_disks(
    session: Session,
    name: str = INSTANCE,
    new_node: Optional[str] = typer.Option(None, "-n", "--new-secondary", help="The new secondary node."),
    iallocator: Optional[str] = typer.Option(None, "-I", "--iallocator",
                                             help="Let this allocator choose the new secondary: hail; instead "
                                                  "of -n."),
) -> None:
    """Give a replicated instance a new secondary node: its disks are made there (counted as a copy once
    UPTODATE) and removed from the old secondary."""
    if bool(new_node) == bool(iallocator):
        raise parameter_error("give the new secondary with -n NODE, or -I hail to let the allocator choose it "
                              "(one of the two)")
    session.run([operation("instance_replace_disks", instance=hostname(name),
                           node=hostname(new_node) if new_node else None, iallocator=iallocator)])


def _modifications(disks: list[str] | None, nets: list[str] | None) -> dict:
    """disk_add, disk_grow, nic_add, nic_remove and nic_modify of `--disk` and `--net` specs."""
    found: dict = {"disk_add": [], "disk_grow": [], "nic_add": [], "nic_remove": [], "nic_modify": []}
    for spec in disks or []:
        what, _, rest = spec.partition(":")
        settings = out.parse_keyvals(rest)
        if set(settings) != {"size"} or not (what == "add" or what.isdigit()):
            raise parameter_error(f"disk '{spec}' is neither add:size=SIZE nor N:size=SIZE (grow disk N to SIZE)")
        size = _size(f"disk {what} size", settings["size"])
        found["disk_add" if what == "add" else "disk_grow"].append(size if what == "add" else [int(what), size])
    for spec in nets or []:
        what, _, rest = spec.partition(":")
        settings = out.parse_keyvals(rest)
        unknown = set(settings) - {"link", "mode", "mac"} - ({"remove"} if what.isdigit() else set())
        if unknown or not (what == "add" or what.isdigit()):
            raise parameter_error(f"NIC '{spec}' is not add[:link=L,mode=M,mac=X], N:remove or N:link=L,mode=M")
        if what == "add":
            found["nic_add"].append(dict(settings))  # the cluster fills in mode, link and MAC
        elif "remove" in settings or rest == "remove":
            found["nic_remove"].append(int(what))
        else:
            found["nic_modify"].append({"index": int(what), **settings})
    return {key: value for key, value in found.items() if value}


@command(app, name="modify", kind="write")
def instance_modify(
    session: Session,
    name: str = INSTANCE,
    backend: Optional[str] = typer.Option(None, "-B", "--backend-parameters",
                                          help="memory=SIZE,vcpus=N (SIZE in MiB, or with M, G or T)."),
    hvparams: Optional[str] = typer.Option(None, "-H", "--hypervisor-parameters", help="key=value,... for the "
                                                                                        "hypervisor."),
    disks: Optional[list[str]] = typer.Option(None, "--disk", help="add:size=SIZE adds a disk; N:size=SIZE grows "
                                                                   "disk N to SIZE (repeatable)."),
    nets: Optional[list[str]] = typer.Option(None, "--net", help="add[:link=L,mode=M,mac=X], N:remove, or "
                                                                 "N:link=L,mode=M (repeatable)."),
    ignore_ipolicy: bool = typer.Option(False, "--ignore-ipolicy", help="Skip the instance policy checks."),
    ha_priority: Optional[int] = typer.Option(None, "--ha-priority", help="Recovery order after its node is fenced, "
                                              "when capacity is short: higher first (default 0)."),
) -> None:
    """Change an instance's memory, vCPUs, hypervisor parameters, disks, NICs or recovery priority (most apply at
    its next start)."""
    name = hostname(name)
    changes = {**backend_parameters(backend), **_modifications(disks, nets)}
    if hvparams:
        changes["hvparams"] = out.parse_keyvals(hvparams)
    if ha_priority is not None:
        changes["ha_priority"] = ha_priority
    if not changes:
        raise parameter_error("nothing to change; give -B, -H, --disk, --net or --ha-priority")
    row = session.run([operation("instance_modify", instance=name, ignore_ipolicy=ignore_ipolicy or None, **changes)])
    if row is not None:
        typer.echo(f"Modified instance {name}", err=True)


@command(app, name="rename", kind="write")
def instance_rename(session: Session, name: str = INSTANCE,
                    new_name: str = typer.Argument(..., metavar="NEW_NAME", help="The instance's new name.")) -> None:
    """Rename an instance (it must be stopped)."""
    old, new = hostname(name), hostname(new_name)
    if session.run([operation("instance_rename", instance=old, new_name=new)]) is not None:
        typer.echo(f"Instance '{old}' renamed to '{new}'", err=True)


@command(app, name="list", kind="list")
def instance_list(session: Session, names: Optional[list[str]] = typer.Argument(
        None, metavar="[INSTANCE]...", help="Only these instances, in this order.")) -> None:
    """List instances: Ganeti's columns Instance Hypervisor OS Primary_node Status Memory by default (-o for others:
    name, id, pnode, snodes, status, admin_state, oper_state, os, hypervisor, disk_template, be/maxmem, be/vcpus,
    oper_ram, disk.sizes, disk.count, disk_usage, nic.macs, nic.links, nic.count, tags, migration, disk_states)."""
    session.show_list("instance", "/api/v1/instances", [hostname(n) for n in names] if names else None)


@command(app, name="info")
def instance_info(session: Session, name: str = INSTANCE,
                  units: str = typer.Option("h", "--units", help="Sizes: h (human-readable), m, g or t.")) -> None:
    """Show an instance: state, nodes, OS, memory, NICs, disks and tags."""
    from urllib.parse import quote

    if units not in out.UNITS:
        raise typer.BadParameter(f"'{units}' is not one of {', '.join(out.UNITS)}", param_hint="--units")
    row = session.read(f"/api/v1/instances/{quote(hostname(name), safe='')}")
    session.show_object(row, out.instance_info(row, units))


DRAIN_S = 2.0


@command(app, name="console", kind="plain")
def instance_console(
    session: Session,
    name: str = INSTANCE,
    timeout: float = typer.Option(DRAIN_S, "--timeout", min=0, help="When stdin is not a terminal: seconds to "
                                  "keep printing the console's output after stdin ends, then detach."),
) -> None:
    """Attach to the serial console of a running kvm instance, on the node that runs it (operator role or above).

    On a terminal the session is raw (Ctrl-C goes to the instance) and Ctrl-] detaches.

    Otherwise stdin is sent as it is, and the session ends --timeout seconds after stdin does."""
    from appliance.client import console
    from appliance.client.config import resolve_target

    name = hostname(name)
    row = session.read(f"/api/v1/instances/{_segment(name)}")
    node = session.read(f"/api/v1/nodes/{_segment(row['pnode'])}")
    target = resolve_target(session.api, session.config)
    endpoint = _console_endpoint(session, node)
    try:
        link = console.connect(endpoint, f"/api/v1/instances/{_segment(name)}/console", target.token, target.ca_pem)
    except ValueError as error:
        raise Failed(f"cairn: cannot attach to the console of {name} on node {node['name']}: {error}") from None
    except OSError as error:
        why = error.strerror.lower() if error.strerror else (str(error) or type(error).__name__)
        raise Failed(f"cairn: cannot reach node {node['name']} at {endpoint} to attach to the console of {name} "
                     f"({why}); check that its daemon runs ('cairn node list' shows its liveness)") from None
    terminal = sys.stdin.isatty()
    if terminal:
        typer.echo(f"Connected to the console of instance {name} on node {node['name']}; "
                   "escape character is ^] (Ctrl + ])", err=True)
    with link, _raw_terminal(sys.stdin.fileno() if terminal else None):
        try:
            ending = link.attach(sys.stdin.fileno(), sys.stdout.fileno(), console.ESCAPE if terminal else None,
                                 None if terminal else timeout)
        except KeyboardInterrupt:
            raise Failed("", 130) from None
    _report_ending(ending, name, node["name"])


def _console_endpoint(session: Session, node: dict) -> str:
    """Where to attach: the local node's socket when it runs the instance, else the node's API address."""
    client = session.client
    local = client.endpoints[0]
    if local.startswith("unix:") and client.answered_by == local:
        _, status = client.get("/api/v1/status")
        if client.answered_by == local and status.get("node") == node["name"]:
            return local
    return node["address"]


def _segment(name: str) -> str:
    """A name as one path segment."""
    from urllib.parse import quote

    return quote(name, safe="")


@contextlib.contextmanager
def _raw_terminal(fd: int | None):
    """The terminal `fd` in raw mode for the block, restored after it whatever happens (None: no terminal)."""
    if fd is None:
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _report_ending(ending, name: str, node: str) -> None:
    """Say why a console session ended when the user did not end it; exit 1 then."""
    if ending.by == "escape":
        typer.echo(f"\r\nDetached from the console of instance {name}", err=True)
    elif ending.by == "server":
        raise Failed(f"cairn: node {node} ended the console session of {name}: {ending.reason or ending.code}")
    elif ending.by == "lost":
        raise Failed(f"cairn: the console session of {name} on node {node} broke off: {ending.reason}; attach "
                     f"again with 'cairn instance console {name}'")
    elif ending.by == "stdout":
        raise Failed("", 1)
