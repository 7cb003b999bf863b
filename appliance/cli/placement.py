"""`cairn balance`, `cairn capacity` and `cairn iallocator`: Ganeti's hbal, hspace and hail on fastpath.

The options of the three commands are declared once, in `COMMANDS`. `lean_main` parses a
well-formed command line from that table without importing typer, so that the commands start
about as fast as Python does (Ganeti runs an iallocator as a whole process per request, and
operators time hbal the same way); anything it does not recognise (`--help`, a bad or unknown
option) goes to the typer commands that `register` builds from the same table, which print
typer's help and error texts.
"""

from __future__ import annotations

import sys


class Opt:
    """One option (or, with kind "arg", the positional argument) of a placement command.

    A plain class rather than a NamedTuple or dataclass: the lean path must not pay for `typing`.
    """

    __slots__ = ("name", "flags", "kind", "default", "help", "hidden")

    def __init__(self, name: str, flags: tuple[str, ...], kind: str, default: object, help: str,
                 hidden: bool = False):
        # kind is "str", "int", "float", "optfloat", "flag", "list" or "arg".
        self.name, self.flags, self.kind, self.default, self.help, self.hidden = (name, flags, kind, default,
                                                                                  help, hidden)


class Failed(Exception):
    """The command stops with this message on stderr and exit code 1."""


ENGINE = Opt("engine", ("--engine",), "str", "c", "c or pure (for testing).", True)
TEXT_FILE = Opt("text_file", ("-t", "--text-data"), "str", None,
                "Cluster in htools text format; without it, the live cluster (read from its API).")
API = Opt("api", ("--api",), "str", None,
          "Without -t: call this node (HOST:PORT, or unix:PATH) instead of the config's nodes; also CAIRN_API.")
CONFIG = Opt("config", ("--config",), "str", None,
             "Without -t: the client config (default: $CAIRN_CONFIG, else ~/.config/cairn/client.toml).")
IGNORE_SOFT = Opt("ignore_soft_errors", ("--ignore-soft-errors",), "flag", False, "Skip soft placement checks.")
OUTPUT = Opt("output", ("--output",), "str", "text", "text (hbal's/hspace's layout) or json (one document, for scripts).")

BALANCE = (
    TEXT_FILE,
    Opt("max_length", ("-l", "--max-length"), "int", -1, "At most this many moves (-1: no limit)."),
    Opt("min_gain", ("-g", "--min-gain"), "float", 0.01, "Minimum gain per step below --min-gain-limit."),
    Opt("min_gain_limit", ("--min-gain-limit",), "float", 0.1, "Score under which -g applies."),
    Opt("epsilon", ("-e", "--epsilon"), "float", 1e-9, "Stop within this much of the lower bound."),
    Opt("no_disk_moves", ("--no-disk-moves",), "flag", False, "Only failovers."),
    Opt("no_instance_moves", ("--no-instance-moves",), "flag", False, "Only secondary replacements."),
    Opt("evac_mode", ("-E", "--evac-mode"), "flag", False, "Only move instances off offline nodes."),
    Opt("offline", ("-O", "--offline"), "list", None, "Treat these nodes as offline (repeatable, or a comma list)."),
    Opt("group", ("-G", "--group"), "str", None, "Node group (name or uuid) to balance."),
    Opt("print_commands", ("-C", "--print-commands"), "flag", False, "Print the gnt-instance commands."),
    Opt("save", ("-S", "--save"), "str", None, "Write PREFIX.original and PREFIX.balanced."),
    IGNORE_SOFT,
    Opt("restricted_migration", ("--restricted-migration",), "flag", False,
        "No moves that migrate to a new primary (unless it is offline)."),
    Opt("exclusion_tags", ("--exclusion-tags",), "str", None, "Extra exclusion tag prefixes."),
    Opt("dynu_file", ("-U", "--dynu-file"), "str", None,
        "Dynamic utilisation: lines 'instance cpu mem disk net' (hbal's -U; default load 1 each)."),
    Opt("ignore_dynu", ("--ignore-dynu",), "flag", False, "Ignore dynamic utilisation (loads 0)."),
    Opt("select_instances", ("--select-instances",), "str", None, "Only move these instances."),
    Opt("exclude_instances", ("--exclude-instances",), "str", None, "Never move these instances."),
    Opt("max_cpu", ("--max-cpu",), "optfloat", None, "Override the vCPU ratio limit."),
    Opt("min_disk", ("--min-disk",), "optfloat", None, "Minimum free disk fraction per node."),
    Opt("execute", ("-X", "--exec"), "flag", False,
        "Live cluster only: submit the moves as jobs, jobset by jobset, waiting for each set (hbal's -X)."),
    OUTPUT,
    API,
    CONFIG,
    ENGINE,
)
IALLOCATOR = (
    Opt("request_file", (), "arg", None, "The iallocator request (JSON); '-' reads stdin."),
    Opt("no_capacity_checks", ("--no-capacity-checks",), "flag", False, "Skip the global N+1 check."),
    IGNORE_SOFT,
    Opt("static_kvm_node_memory", ("--static-kvm-node-memory",), "int", 4096,
        "Reserved node memory on kvm clusters (0: as reported)."),
    ENGINE,
)
CAPACITY = (
    TEXT_FILE,
    Opt("machine_readable", ("--machine-readable",), "flag", False, "HTS_* key=value lines (hspace's)."),
    Opt("accept_existing_errors", ("--accept-existing-errors",), "flag", False,
        "Plan even if the cluster already fails N+1."),
    Opt("disk_template", ("--disk-template",), "str", None, "Template of the new instances."),
    Opt("max_length", ("-l", "--max-length"), "int", -1, "At most this many allocations per phase."),
    Opt("no_tiered", ("--no-tiered",), "flag", False, "Skip the tiered phase."),
    Opt("tiered_alloc", ("--tiered-alloc",), "str", None,
        "Start the tiered phase at DISK,RAM,CPU[,SPINDLES] (hspace's order; spindles default 1)."),
    OUTPUT,
    API,
    CONFIG,
    ENGINE,
)


def _out(line: str) -> None:
    print(line, file=sys.stdout)


# What each input file must be, and where a good one comes from, for the error when it is not text.
CLUSTER_TEXT = ("a text cluster file",
                "give a file written by Ganeti's hscan or hbal -S, or by 'cairn balance -S PREFIX'")
DYNU_TEXT = ("a text utilisation file", "give lines 'instance cpu mem disk net', as hbal -U reads them")
REQUEST_TEXT = ("an iallocator request", "give the JSON document Ganeti passes to an iallocator script")


def _read(path: str, kind: tuple[str, str]) -> str:
    """The text of `path` ('-': standard input); Failed naming the file when it cannot be read or is
    not text (a binary file, say), so that no command shows a decoding traceback."""
    name = "standard input" if path == "-" else f"'{path}'"
    # open() rather than pathlib: importing pathlib (with re and enum) costs every placement process ~7 ms.
    try:
        if path == "-":
            stdin = getattr(sys.stdin, "buffer", None)  # bytes, so stdin decodes as strictly as a file
            data = stdin.read() if stdin is not None else sys.stdin.read().encode("utf-8", "surrogateescape")
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as error:
        raise Failed(f"cannot read '{path}': {error.strerror}; check the path") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Failed(f"{name} is not {kind[0]}: byte {error.start} is not UTF-8 text; {kind[1]}") from None
    # A binary file can decode as UTF-8 (all zeros, say), but no text file holds a NUL.
    if "\0" in text:
        raise Failed(f"{name} is not {kind[0]}: byte {data.index(0)} is a NUL, which no text file holds; {kind[1]}")
    return text


def _names(text: str | None) -> list[str]:
    return [n for n in (text or "").split(",") if n]


def _check_output(output: str) -> None:
    if output not in ("text", "json"):
        raise Failed(f"unknown --output '{output}'; use text or json")


def _print_json(document: dict) -> None:
    import json

    _out(json.dumps(document, indent=2))


def _live_cluster(api, config):
    """(client, htools text) of the live cluster, read from its API like any `cairn` command does."""
    from appliance.client import ApiError, Client, ConfigError, resolve_target

    try:
        target = resolve_target(api, config)
        client = Client(target.addresses, target.ca_pem, target.token, target.socket_path)
        _, answer = client.get("/api/v1/cluster/htools")
    except ConfigError as error:
        raise Failed(f"{error}; or give a cluster file with -t FILE") from None
    except ApiError as error:
        raise Failed(f"cannot read the live cluster: {error.message}; check that the cairn daemons run and that "
                     "--api or the client config names them, or give a cluster file with -t FILE") from None
    except ValueError as error:
        raise Failed(f"the client config is not usable: {error}") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("text"), str):
        raise Failed(f"the cluster answered /api/v1/cluster/htools with {str(answer)[:80]!r}, not its htools text; "
                     "is the node running an older cairn?")
    return client, answer["text"]


def _execute(client, moves: list[dict], emit) -> tuple[int, list]:
    """Submit the moves as jobs, one jobset at a time, waiting for each set (hbal -X); (exit code, job ids)."""
    from appliance.allocator import move_operations
    from appliance.client import ApiError, jobs

    jobsets: dict[int, list[dict]] = {}
    for move in moves:
        jobsets.setdefault(move["jobset"], []).append(move)
    submitted = []
    try:
        for number in sorted(jobsets):
            members = jobsets[number]
            emit("Executing jobset for instances " + ", ".join(move["instance"] for move in members))
            try:
                ids = [jobs.submit(client, list(move_operations(move["instance"], move["move"])),
                                   "cairn balance -X") for move in members]
            except ValueError as error:
                raise Failed(str(error)) from None
            submitted.append(ids)
            emit("Got job IDs " + ", ".join(str(job_id) for job_id in ids))
            failed = []
            for move, job_id in zip(members, ids):
                row = jobs.wait(client, job_id)
                if row.get("status") != "success":
                    failed.append(f"job {job_id} ({move['instance']}): "
                                  f"{row.get('error_message') or row.get('status')}")
            if failed:
                print("cairn: not all jobs completed successfully: " + "; ".join(failed)
                      + "; stopped before the next jobset. Run 'cairn balance' again to see what is left.",
                      file=sys.stderr)
                return 1, submitted
    except ApiError as error:
        raise Failed(f"the cluster answered {error.status} {error.code}: {error.message}; the jobs submitted so "
                     "far go on: 'cairn job list' shows them") from None
    return 0, submitted


def balance(text_file, max_length, min_gain, min_gain_limit, epsilon, no_disk_moves, no_instance_moves, evac_mode,
            offline, group, print_commands, save, ignore_soft_errors, restricted_migration, exclusion_tags,
            dynu_file, ignore_dynu, select_instances, exclude_instances, max_cpu, min_disk, execute, output, api,
            config, engine) -> int:
    """Balance the cluster like Ganeti's hbal: greedy moves that lower the cluster score (-t FILE, or the live
    cluster, whose moves -X submits as jobs)."""
    from fastpath.balance import BalanceOptions
    from fastpath.hbal import HbalError, HbalRequest, run

    _check_output(output)
    client = None
    if text_file is None:
        client, text = _live_cluster(api, config)
    elif execute:
        raise Failed("-X executes the moves on the live cluster; leave out -t FILE (a file has no cluster to "
                     "run jobs on)")
    else:
        text = _read(text_file, CLUSTER_TEXT)
    options = BalanceOptions(max_length, min_gain, min_gain_limit, epsilon, no_disk_moves, no_instance_moves,
                             evac_mode, ignore_soft_errors, restricted_migration)
    offline_names = [name for item in offline or [] for name in _names(item)]
    request = HbalRequest(text, options, offline_names, group, print_commands, save,
                          _names(exclusion_tags), ignore_dynu, engine, _names(select_instances),
                          _names(exclude_instances), max_cpu, min_disk,
                          _read(dynu_file, DYNU_TEXT) if dynu_file is not None else None)
    report: dict = {}
    try:
        files = run(request, _out if output == "text" else lambda line: None, report)
    except (HbalError, ValueError) as error:  # FormatError is one; flatten's limits raise the others
        raise Failed(str(error)) from None
    for path, content in files.items():
        with open(path, "w", encoding="utf-8") as f:
            f.write(content)
    code = 0
    if execute and report.get("moves"):
        code, report["jobs"] = _execute(client, report["moves"], _out if output == "text" else lambda line: None)
    if output == "json":
        report["saved"] = sorted(files)
        _print_json(report)
    return code


def iallocator(request_file, no_capacity_checks, ignore_soft_errors, static_kvm_node_memory, engine) -> int:
    """Answer a Ganeti iallocator request like hail: one line of JSON on stdout."""
    from fastpath.iallocator import Options, answer

    options = Options(not no_capacity_checks, ignore_soft_errors, static_kvm_node_memory, engine)
    try:
        _out(answer(_read(request_file, REQUEST_TEXT), options))
    except ValueError as error:  # RequestError is one; the engines' limits raise the others
        print(f"Error: {error}", file=sys.stderr)
        return 1
    return 0


def _tiered_spec(tiered_alloc: str | None):
    if not tiered_alloc:
        return None
    try:
        values = [int(v) for v in tiered_alloc.split(",")]
        if len(values) not in (3, 4) or min(values) < 1:
            raise ValueError
    except ValueError:
        raise Failed(f"--tiered-alloc '{tiered_alloc}' must be DISK,RAM,CPU[,SPINDLES] in MiB, MiB, CPUs and "
                     "spindles, each at least 1, e.g. 10240,1024,1") from None
    disk, ram, cpu, spindles = (values + [1])[:4]
    return ram, disk, cpu, spindles


def capacity(text_file, machine_readable, accept_existing_errors, disk_template, max_length, no_tiered, tiered_alloc,
             output, api, config, engine) -> int:
    """Plan capacity like Ganeti's hspace: how many more instances fit (-t FILE, or the live cluster)."""
    from fastpath.capacity import CapacityRequest, plan
    from fastpath.htools_text import FormatError, parse

    _check_output(output)
    if output == "json" and machine_readable:
        raise Failed("--machine-readable and --output json are two layouts of the same keys; give one")
    text = _live_cluster(api, config)[1] if text_file is None else _read(text_file, CLUSTER_TEXT)
    template = {"replicated": "drbd"}.get(disk_template, disk_template)
    try:
        cluster = parse(text)
    except FormatError as error:
        raise Failed(str(error)) from None
    request = CapacityRequest(cluster, accept_existing_errors, template, max_length, not no_tiered, engine,
                              _tiered_spec(tiered_alloc))
    try:
        values = plan(request)
    except ValueError as error:  # what the engines cannot hold, e.g. too many distinct exclusion tags
        raise Failed(str(error)) from None
    if output == "json":
        _print_json({key: _json_value(value) for key, value in values})
        return 0
    if machine_readable:
        for key, value in values:
            _out(f"{key}={value}")
        return 0
    found = dict(values)
    _out(f"The cluster has {found['HTS_CLUSTER_NODES']} nodes and {found['HTS_INI_INST_CNT']} instances.")
    if "HTS_TSPEC" in found:
        _out(f"Tiered allocation: {found['HTS_TRL_INST_CNT'] - found['HTS_INI_INST_CNT']} instances "
             f"({found['HTS_TSPEC'].strip(chr(39)) or 'none'})")
    _out(f"Standard allocation: {found['HTS_ALLOC_INSTANCES']} instances of "
         f"{found['HTS_SPEC_MEM']} MiB / {found['HTS_SPEC_DSK']} MiB / {found['HTS_SPEC_CPU']} CPU "
         f"({found['HTS_SPEC_DISK_TEMPLATE']}); most likely failure reason: {found['HTS_ALLOC_FAIL_REASON']}")
    _out(f"Initial cluster score: {found['HTS_INI_SCORE']}, final: {found['HTS_FIN_SCORE']}")
    return 0


def _json_value(value):
    """An HTS value as JSON: numbers as numbers (hspace's NaN as null), the rest as text."""
    if isinstance(value, int) or not isinstance(value, str):
        return value
    for convert in (int, float):
        try:
            number = convert(value)
        except ValueError:
            continue
        return None if number != number else number
    return value


# name: (help in `cairn --help`, options, implementation)
COMMANDS = {
    "balance": ("Balance a cluster like Ganeti's hbal (the live cluster, or a text file with -t).", BALANCE,
                balance),
    "capacity": ("Plan capacity like Ganeti's hspace (the live cluster, or a text file with -t).", CAPACITY,
                 capacity),
    "iallocator": ("Answer a Ganeti iallocator request like hail (installable as an iallocator script).",
                   IALLOCATOR, iallocator),
}
CONVERT = {"str": str, "int": int, "float": float, "optfloat": float}


def _run(implementation, values: dict) -> int:
    try:
        return implementation(**values)
    except Failed as error:
        print(f"cairn: {error}", file=sys.stderr)
        return 1


def _parse(options: tuple[Opt, ...], args: list[str]) -> dict | None:
    """The parameter values of a well-formed command line, or None for anything else (help, errors)."""
    by_flag = {flag: opt for opt in options for flag in opt.flags}
    values = {opt.name: opt.default for opt in options}
    positional = [opt for opt in options if opt.kind == "arg"]
    args = list(args)
    while args:
        arg = args.pop(0)
        flag, _, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        opt = by_flag.get(flag)
        if opt is None:
            if arg.startswith("-") and arg != "-" or not positional:
                return None
            values[positional.pop(0).name] = arg
            continue
        if opt.kind == "flag":
            if inline:
                return None
            values[opt.name] = True
            continue
        if not inline and not args:
            return None
        text = inline or args.pop(0)
        if opt.kind == "list":
            values[opt.name] = (values[opt.name] or []) + [text]
            continue
        try:
            values[opt.name] = CONVERT[opt.kind](text)
        except ValueError:
            return None
    return None if positional else values


def lean_main(argv: list[str]) -> int | None:
    """Run `cairn balance|capacity|iallocator ...` without typer: the exit code, or None to let typer
    handle the command line (help, unknown options, bad values)."""
    if not argv or argv[0] not in COMMANDS:
        return None
    _, options, implementation = COMMANDS[argv[0]]
    values = _parse(options, argv[1:])
    return None if values is None else _run(implementation, values)


def _annotation(opt: Opt):
    from typing import Optional

    return {"str": Optional[str], "int": int, "float": float, "optfloat": Optional[float], "flag": bool,
            "list": Optional[list[str]], "arg": str}[opt.kind]


def _typer_command(name: str, options: tuple[Opt, ...], implementation):
    """A typer command with the parameters of `options` that runs `implementation`."""
    import inspect

    import typer

    def command(**values) -> None:
        code = _run(implementation, values)
        if code:
            raise typer.Exit(code)

    parameters = []
    for opt in options:
        default = (typer.Argument(..., help=opt.help) if opt.kind == "arg" else
                   typer.Option(opt.default, *opt.flags, help=opt.help, hidden=opt.hidden))
        parameters.append(inspect.Parameter(opt.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                            annotation=_annotation(opt)))
    command.__signature__ = inspect.Signature(parameters)
    command.__annotations__ = {opt.name: _annotation(opt) for opt in options}
    command.__name__ = name
    command.__doc__ = implementation.__doc__
    return command


def register(app) -> None:
    """Add the placement commands to the top-level typer app."""
    for name, (help_text, options, implementation) in COMMANDS.items():
        app.command(name=name, help=help_text)(_typer_command(name, options, implementation))
