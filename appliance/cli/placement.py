"""`cairn balance`, `cairn capacity` and `cairn iallocator`: Ganeti's hbal, hspace and hail on fastpath.

Imports of fastpath happen inside the commands, so `cairn iallocator` starts fast as a Ganeti
iallocator script.
"""

from pathlib import Path
from typing import Optional

import typer


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"cairn: {message}", err=True)
    raise typer.Exit(code)


def _read(path: str) -> str:
    try:
        return Path(path).read_text() if path != "-" else typer.get_text_stream("stdin").read()
    except OSError as error:
        _fail(f"cannot read '{path}': {error.strerror}; check the path")
    return ""


def _names(text: Optional[str]) -> list[str]:
    return [n for n in (text or "").split(",") if n]


def balance(
    text_file: Optional[str] = typer.Option(None, "-t", "--text-data", help="Cluster in htools text format."),
    max_length: int = typer.Option(-1, "-l", "--max-length", help="At most this many moves (-1: no limit)."),
    min_gain: float = typer.Option(0.01, "-g", "--min-gain", help="Minimum gain per step below --min-gain-limit."),
    min_gain_limit: float = typer.Option(0.1, "--min-gain-limit", help="Score under which -g applies."),
    epsilon: float = typer.Option(1e-9, "-e", "--epsilon", help="Stop within this much of the lower bound."),
    no_disk_moves: bool = typer.Option(False, "--no-disk-moves", help="Only failovers."),
    no_instance_moves: bool = typer.Option(False, "--no-instance-moves", help="Only secondary replacements."),
    evac_mode: bool = typer.Option(False, "-E", "--evac-mode", help="Only move instances off offline nodes."),
    offline: Optional[list[str]] = typer.Option(None, "-O", "--offline",
                                                help="Treat these nodes as offline (repeatable, or a comma list)."),
    group: Optional[str] = typer.Option(None, "-G", "--group", help="Node group (name or uuid) to balance."),
    print_commands: bool = typer.Option(False, "-C", "--print-commands", help="Print the gnt-instance commands."),
    save: Optional[str] = typer.Option(None, "-S", "--save", help="Write PREFIX.original and PREFIX.balanced."),
    ignore_soft_errors: bool = typer.Option(False, "--ignore-soft-errors", help="Skip soft placement checks."),
    restricted_migration: bool = typer.Option(False, "--restricted-migration",
                                              help="No moves that migrate to a new primary (unless it is offline)."),
    exclusion_tags: Optional[str] = typer.Option(None, "--exclusion-tags", help="Extra exclusion tag prefixes."),
    ignore_dynu: bool = typer.Option(False, "--ignore-dynu", help="Ignore dynamic utilisation (loads 0)."),
    select_instances: Optional[str] = typer.Option(None, "--select-instances", help="Only move these instances."),
    exclude_instances: Optional[str] = typer.Option(None, "--exclude-instances", help="Never move these instances."),
    max_cpu: Optional[float] = typer.Option(None, "--max-cpu", help="Override the vCPU ratio limit."),
    min_disk: Optional[float] = typer.Option(None, "--min-disk", help="Minimum free disk fraction per node."),
    engine: str = typer.Option("c", "--engine", hidden=True, help="c or pure (for testing)."),
) -> None:
    """Balance the cluster like Ganeti's hbal: greedy moves that lower the cluster score."""
    from fastpath.balance import BalanceOptions
    from fastpath.hbal import HbalError, HbalRequest, run
    from fastpath.htools_text import FormatError

    if text_file is None:
        _fail("balancing the live cluster is not available yet; give a cluster file with -t FILE")
    options = BalanceOptions(max_length, min_gain, min_gain_limit, epsilon, no_disk_moves, no_instance_moves,
                             evac_mode, ignore_soft_errors, restricted_migration)
    offline_names = [name for item in offline or [] for name in _names(item)]
    request = HbalRequest(_read(text_file), options, offline_names, group, print_commands, save,
                          _names(exclusion_tags), ignore_dynu, engine, _names(select_instances),
                          _names(exclude_instances), max_cpu, min_disk)
    try:
        files = run(request, typer.echo)
    except (HbalError, FormatError) as error:
        _fail(str(error))
    for path, content in files.items():
        Path(path).write_text(content)


def iallocator(
    request_file: str = typer.Argument(..., help="The iallocator request (JSON); '-' reads stdin."),
    no_capacity_checks: bool = typer.Option(False, "--no-capacity-checks", help="Skip the global N+1 check."),
    ignore_soft_errors: bool = typer.Option(False, "--ignore-soft-errors", help="Skip soft placement checks."),
    static_kvm_node_memory: int = typer.Option(4096, "--static-kvm-node-memory",
                                               help="Reserved node memory on kvm clusters (0: as reported)."),
    engine: str = typer.Option("c", "--engine", hidden=True, help="c or pure (for testing)."),
) -> None:
    """Answer a Ganeti iallocator request like hail: one line of JSON on stdout."""
    from fastpath.iallocator import Options, RequestError, answer

    options = Options(not no_capacity_checks, ignore_soft_errors, static_kvm_node_memory, engine)
    try:
        typer.echo(answer(_read(request_file), options))
    except RequestError as error:
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(1)


def capacity(
    text_file: Optional[str] = typer.Option(None, "-t", "--text-data", help="Cluster in htools text format."),
    machine_readable: bool = typer.Option(False, "--machine-readable", help="HTS_* key=value lines (hspace's)."),
    accept_existing_errors: bool = typer.Option(False, "--accept-existing-errors",
                                                help="Plan even if the cluster already fails N+1."),
    disk_template: Optional[str] = typer.Option(None, "--disk-template", help="Template of the new instances."),
    max_length: int = typer.Option(-1, "-l", "--max-length", help="At most this many allocations per phase."),
    no_tiered: bool = typer.Option(False, "--no-tiered", help="Skip the tiered phase."),
    tiered_alloc: Optional[str] = typer.Option(None, "--tiered-alloc",
                                               help="Start the tiered phase at DISK,RAM,CPU (hspace's order)."),
    engine: str = typer.Option("c", "--engine", hidden=True, help="c or pure (for testing)."),
) -> None:
    """Plan capacity like Ganeti's hspace: how many more instances fit."""
    from fastpath.capacity import CapacityRequest, plan
    from fastpath.htools_text import FormatError, parse

    if text_file is None:
        _fail("capacity of the live cluster is not available yet; give a cluster file with -t FILE")
    template = {"replicated": "drbd"}.get(disk_template, disk_template)
    try:
        cluster = parse(_read(text_file))
    except FormatError as error:
        _fail(str(error))
    tiered_spec = None
    if tiered_alloc:
        try:
            disk, ram, cpu = (int(v) for v in tiered_alloc.split(","))
        except ValueError:
            _fail(f"--tiered-alloc '{tiered_alloc}' must be DISK,RAM,CPU in MiB, MiB and CPUs, e.g. 10240,1024,1")
        tiered_spec = (ram, disk, cpu)
    request = CapacityRequest(cluster, accept_existing_errors, template, max_length, not no_tiered, engine,
                              tiered_spec)
    values = plan(request)
    if machine_readable:
        for key, value in values:
            typer.echo(f"{key}={value}")
        return
    found = dict(values)
    typer.echo(f"The cluster has {found['HTS_CLUSTER_NODES']} nodes and {found['HTS_INI_INST_CNT']} instances.")
    if "HTS_TSPEC" in found:
        typer.echo(f"Tiered allocation: {found['HTS_TRL_INST_CNT'] - found['HTS_INI_INST_CNT']} instances "
                   f"({found['HTS_TSPEC'].strip(chr(39)) or 'none'})")
    typer.echo(f"Standard allocation: {found['HTS_ALLOC_INSTANCES']} instances of "
               f"{found['HTS_SPEC_MEM']} MiB / {found['HTS_SPEC_DSK']} MiB / {found['HTS_SPEC_CPU']} CPU "
               f"({found['HTS_SPEC_DISK_TEMPLATE']}); most likely failure reason: {found['HTS_ALLOC_FAIL_REASON']}")
    typer.echo(f"Initial cluster score: {found['HTS_INI_SCORE']}, final: {found['HTS_FIN_SCORE']}")


def register(app: typer.Typer) -> None:
    """Add the placement commands to the top-level app."""
    app.command(help="Balance a cluster like Ganeti's hbal (text file with -t).")(balance)
    app.command(help="Plan capacity like Ganeti's hspace (text file with -t).")(capacity)
    app.command(help="Answer a Ganeti iallocator request like hail (installable as an iallocator script).")(
        iallocator)
