"""What the cluster commands print, built from API rows: Ganeti's list tables, info dumps, job texts, sizes.

Standard library only, and no I/O: every function returns text (or lines) for
the command to print, so the layout rules are tested without a cluster. The
table rules are Ganeti's (shared/reference/ganeti-behaviour.md, section 1):
one space between columns padded to the widest cell, numbers and sizes
right-aligned, the last column unpadded, field titles in the header, `-` for
a value that does not apply, `??` under a field nobody knows.
"""

from __future__ import annotations

import json
import re
import time

TEXT, NUMBER, SIZE, SIZES, BOOL, LIST, TIME, DATA = "text", "number", "size", "sizes", "bool", "list", "time", "data"
DISK_STATES = "disk_states"
RIGHT_ALIGNED = (NUMBER, SIZE)
UNITS = ("h", "m", "g", "t")
UNKNOWN_CELL = "??"

# field -> (title, kind), per listed object; keys are the API rows' keys (Ganeti's field names).
FIELDS: dict[str, dict[str, tuple[str, str]]] = {
    "instance": {
        "name": ("Instance", TEXT), "id": ("UUID", TEXT), "pnode": ("Primary_node", TEXT),
        "snodes": ("Secondary_Nodes", LIST), "status": ("Status", TEXT), "admin_state": ("InstanceState", TEXT),
        "oper_state": ("Running", BOOL), "os": ("OS", TEXT), "hypervisor": ("Hypervisor", TEXT),
        "disk_template": ("Disk_template", TEXT), "be/maxmem": ("ConfigMaxMem", SIZE),
        "be/vcpus": ("ConfigVCPUs", NUMBER), "oper_ram": ("Memory", SIZE), "disk.sizes": ("Disk_sizes", SIZES),
        "disk.count": ("Disks", NUMBER), "disk_usage": ("DiskUsage", SIZE), "nic.macs": ("NIC_MACs", LIST),
        "nic.links": ("NIC_links", LIST), "nic.count": ("NICs", NUMBER), "tags": ("Tags", LIST),
        "migration": ("Migration", TEXT), "disk_states": ("Disk_states", DISK_STATES),
    },
    "node": {
        "name": ("Node", TEXT), "id": ("UUID", TEXT), "address": ("Address", TEXT), "group": ("Group", TEXT),
        "mtotal": ("MTotal", SIZE), "mnode": ("MNode", SIZE), "mfree": ("MFree", SIZE), "dtotal": ("DTotal", SIZE),
        "dfree": ("DFree", SIZE), "ctotal": ("CTotal", NUMBER), "pinst_cnt": ("Pinst", NUMBER),
        "sinst_cnt": ("Sinst", NUMBER), "pinst_list": ("PriInstances", LIST), "sinst_list": ("SecInstances", LIST),
        "offline": ("Offline", BOOL), "drained": ("Drained", BOOL), "master": ("IsMaster", BOOL),
        "master_capable": ("MasterCapable", BOOL), "vm_capable": ("VMCapable", BOOL), "role": ("Role", TEXT),
        "voter": ("Voter", BOOL), "fenced": ("Fenced", BOOL), "tags": ("Tags", LIST),
        "liveness": ("Liveness", TEXT), "lease_age_s": ("LeaseAge", NUMBER),
    },
    "job": {
        "id": ("ID", NUMBER), "status": ("Status", TEXT), "summary": ("Summary", LIST), "ops": ("OpCodes", DATA),
        "actor": ("Actor", TEXT), "reason": ("Reason", TEXT), "request_id": ("RequestID", TEXT),
        "received_ts": ("Received", TIME), "end_ts": ("End", TIME), "oplog": ("OpCode_log", DATA),
        "opresult": ("OpCode_result", DATA), "error_code": ("ErrorCode", TEXT), "error_message": ("Error", TEXT),
    },
    "group": {
        "name": ("Group", TEXT), "node_cnt": ("Nodes", NUMBER), "pinst_cnt": ("Instances", NUMBER),
        "tags": ("Tags", LIST),
    },
    "user": {"name": ("User", TEXT), "role": ("Role", TEXT)},
}
DEFAULT_FIELDS = {
    "instance": ("name", "hypervisor", "os", "pnode", "status", "oper_ram"),
    "node": ("name", "dtotal", "dfree", "mtotal", "mnode", "mfree", "pinst_cnt", "sinst_cnt", "liveness"),
    "job": ("id", "status", "summary"),
    "group": ("name", "node_cnt", "pinst_cnt"),
    "user": ("name", "role"),
}
# Fields computed from others of the same row.
DERIVED = {
    ("instance", "disk.count"): lambda row: _length(row.get("disk.sizes")),
    ("instance", "nic.count"): lambda row: _length(row.get("nic.macs")),
}
TITLE = {"instance": "Instance", "node": "Node", "job": "Job", "group": "Group", "user": "User"}


def _length(value):
    return len(value) if isinstance(value, list) else None


# -- sizes, booleans, durations


def size_text(mib, units: str = "h") -> str:
    """A size in MiB as Ganeti prints it: `128M`, `23.5G`, `1.2T` (units h), or bare in m, g or t."""
    if units == "m" or (units == "h" and mib < 1024):
        return f"{round(mib)}{'M' if units == 'h' else ''}"
    if units == "g" or (units == "h" and mib < 1024 * 1024):
        return f"{mib / 1024:0.1f}{'G' if units == 'h' else ''}"
    return f"{mib / 1024 / 1024:0.1f}{'T' if units == 'h' else ''}"


SIZE_SUFFIXES = {"": 1, "m": 1, "g": 1024, "t": 1024 * 1024}


def parse_size(text: str) -> int:
    """MiB of a size as Ganeti reads one: a number with an optional M, G or T (MB, GiB ... too); bare is MiB.

    Fractions round up to a whole MiB. ValueError says what was wrong.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", text)
    suffix = match.group(2).lower() if match else ""
    if suffix.endswith("ib"):
        suffix = suffix[:-2]
    elif suffix.endswith("b"):
        suffix = suffix[:-1]
    if not match or suffix not in SIZE_SUFFIXES:
        raise ValueError(f"'{text}' is not a valid size; give MiB, or a number with M, G or T (e.g. 512M, 10G)")
    value = float(match.group(1)) * SIZE_SUFFIXES[suffix]
    whole = int(value)
    return whole + (1 if value > whole else 0)


def parse_bool(text: str) -> bool:
    """yes/no (also true/false, on/off, y/n, 1/0) as a boolean; ValueError otherwise."""
    word = text.strip().lower()
    if word in ("yes", "y", "true", "on", "1"):
        return True
    if word in ("no", "n", "false", "off", "0"):
        return False
    raise ValueError(f"'{text}' is neither yes nor no")


DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """Seconds of a duration like Ganeti's: a number with s, m, h, d or w (bare: seconds)."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", text.lower())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"'{text}' is not a duration; give a number with s, m, h, d or w, e.g. 30m or 2h")
    return int(match.group(1)) * DURATION_UNITS[match.group(2)]


def parse_keyvals(text: str) -> dict[str, str]:
    """`key=value,key=value` as a dict; a bare `key` means `key=yes`, a `no_key` means `key=no` (Ganeti's forms)."""
    found: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        key, equals, value = item.partition("=")
        if not equals:
            key, value = (key[3:], "no") if key.startswith("no_") else (key, "yes")
        found[key.strip()] = value.strip()
    return found


def localtime_text(ts) -> str:
    """A timestamp as local `YYYY-MM-DD HH:MM:SS`, `-` when there is none."""
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


# -- tables


def select_fields(kind: str, spec: str | None) -> list[str]:
    """The fields to show: the defaults, `-o f1,f2` instead of them, or `-o +f1,f2` after them."""
    if not spec:
        return list(DEFAULT_FIELDS[kind])
    if spec.startswith("+"):
        return list(DEFAULT_FIELDS[kind]) + [f for f in spec[1:].split(",") if f]
    return [f for f in spec.split(",") if f]


def unknown_fields(kind: str, fields: list[str]) -> list[str]:
    """The fields of `fields` that `kind` does not have, in order."""
    return [f for f in fields if f not in FIELDS[kind]]


def value_of(kind: str, row: dict, field: str):
    """The value of a field in a row (computed for derived fields); None when the row lacks it."""
    derive = DERIVED.get((kind, field))
    return derive(row) if derive is not None else row.get(field)


def disk_state_text(entry: dict, with_disk: bool = False) -> str:
    """One copy's recorded state: "node2:UPTODATE", "node2:SYNCING(42%)" ("0/node2:..." with the disk)."""
    state = str(entry.get("state", "?"))
    if state == "SYNCING":
        state += f"({entry.get('sync_percent', 0):g}%)"
    prefix = f"{entry.get('disk')}/" if with_disk else ""
    return f"{prefix}{entry.get('node', '?')}:{state}"


def cell(value, field_kind: str, units: str) -> str:
    """One table cell: `-` for no value, Y/N, sizes in `units`, lists joined by commas."""
    if value is None:
        return "-"
    if field_kind == BOOL or isinstance(value, bool):
        return "Y" if value else "N"
    if field_kind == SIZE and isinstance(value, (int, float)):
        return size_text(value, units)
    if field_kind == SIZES and isinstance(value, list):
        return ",".join(size_text(v, units) if isinstance(v, (int, float)) else str(v) for v in value)
    if field_kind == TIME:
        return localtime_text(value)
    if field_kind == DISK_STATES and isinstance(value, list):
        return ",".join(disk_state_text(entry, with_disk=True) for entry in value if isinstance(entry, dict)) or "-"
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) for v in value):
        return ",".join(str(v) for v in value)
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def table(kind: str, rows: list[dict], fields: list[str], separator: str | None = None, headers: bool = True,
          units: str | None = None) -> list[str]:
    """The lines of a Ganeti list: a header of titles (unless `headers` is off) and one line per row.

    Units default to human-readable, but to bare MiB with a separator (for scripts), as in Ganeti.
    """
    units = units or ("m" if separator is not None else "h")
    known = FIELDS[kind]
    kinds = [known[f][1] if f in known else TEXT for f in fields]
    body = [[cell(value_of(kind, row, f), k, units) if f in known else UNKNOWN_CELL for f, k in zip(fields, kinds)]
            for row in rows]
    grid = ([[known[f][0] if f in known else f for f in fields]] if headers else []) + body
    if separator is not None:
        return [separator.join(line) for line in grid]
    widths = [max((len(line[i]) for line in grid), default=0) for i in range(len(fields))]
    lines = []
    for line in grid:
        cells = []
        for i, text in enumerate(line):
            if kinds[i] in RIGHT_ALIGNED:
                cells.append(text.rjust(widths[i]))
            elif i == len(line) - 1:
                cells.append(text)
            else:
                cells.append(text.ljust(widths[i]))
        lines.append(" ".join(cells))
    return lines


def json_rows(kind: str, rows: list[dict], fields: list[str] | None) -> str:
    """Rows as a JSON array: whole rows, or objects of just `fields` (null for an unknown one)."""
    if fields is None:
        return json.dumps(rows, indent=2)
    known = FIELDS[kind]
    return json.dumps([{f: (value_of(kind, row, f) if f in known else None) for f in fields} for row in rows],
                      indent=2)


def nice_key(name: str) -> tuple:
    """Ganeti's nice sort: digit runs compare as numbers (inst2 before inst10)."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.findall(r"\d+|\D+", name))


class NotFound(LookupError):
    """A name given on the command line is not in the listing."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{TITLE[kind]} name {name} not found")
        self.message = str(self)


def pick(kind: str, rows: list[dict], names: list[str] | None, key: str = "name") -> list[dict]:
    """The rows of `names`, in argument order; every row nice-sorted when no name is given. NotFound otherwise."""
    if not names:
        return sorted(rows, key=lambda row: nice_key(str(row.get(key, ""))))
    by_name = {str(row.get(key)): row for row in rows}
    picked = []
    for name in names:
        if name not in by_name:
            raise NotFound(kind, name)
        picked.append(by_name[name])
    return picked


# -- jobs


PREREQ_CODES = frozenset({"wrong_input", "wrong_state", "unknown_entity", "already_exists", "insufficient_resources",
                          "not_unique", "queue_drained", "permission_denied", "feature_level", "resolver_error"})


def failure_text(code: str, message: str) -> str:
    """Ganeti's failure text: the prerequisite form (with `error type:`, which scripts grep) or the execution form."""
    if code in PREREQ_CODES:
        return f"Failure: prerequisites not met for this operation:\nerror type: {code}, error details:\n{message}"
    return f"Failure: command execution error:\n{message}"


def job_failure_text(row: dict) -> str:
    """Why a job did not succeed, as Ganeti says it."""
    if row.get("status") == "canceled":
        return f"Job {row.get('id')} was canceled"
    return failure_text(str(row.get("error_code") or ""), str(row.get("error_message") or "(no message)"))


def log_line(ts, message: str) -> str:
    """A progress line: Ganeti's local ctime stamp, then the message."""
    if isinstance(ts, (int, float)) and not isinstance(ts, bool):
        return f"{time.ctime(ts)} {message}"
    return message


def result_lines(results) -> list[str]:
    """What to print of a finished job's results (one per operation): texts as they are, changes as ` - k -> v`."""
    lines = []
    for result in results or []:
        if result is None or result == "" or result == []:
            continue
        if isinstance(result, str):
            lines.append(result)
        elif isinstance(result, dict):
            lines.extend(f" - {key} -> {_plain(value)}" for key, value in result.items())
        elif isinstance(result, list):
            lines.extend(_plain(item) for item in result)
        else:
            lines.append(_plain(result))
    return lines


def _plain(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in value):
        return ",".join(str(v) for v in value)
    return json.dumps(value, separators=(",", ":"))


def event_line(event: dict) -> str:
    """One event of `cairn events tail`: seq, type, actor and reason."""
    reason = event.get("reason") or "-"
    return f"{event.get('seq', '-')} {event.get('type', '-')} {event.get('actor') or '-'} {reason}"


# -- info dumps (Ganeti's indented `key: value` style)


def _names_text(value) -> str:
    return ", ".join(str(v) for v in value) if isinstance(value, list) and value else "(none)"


def _yes(value) -> str:
    return "-" if value is None else str(bool(value))


def instance_info(row: dict, units: str = "h") -> list[str]:
    """`cairn instance info`: Ganeti's layout for the keys an instance row has."""
    def size(value) -> str:
        return size_text(value, units) if isinstance(value, (int, float)) else "-"

    up = "up" if row.get("admin_state") == "up" else "down"
    running = "up" if row.get("oper_state") else "down"
    lines = [f"- Instance name: {row.get('name')}", f"  UUID: {row.get('id', '-')}",
             f"  State: configured to be {up}, actual state is {running}", f"  Status: {row.get('status', '-')}",
             "  Nodes:", f"    - primary: {row.get('pnode', '-')}",
             f"    - secondaries: {', '.join(row.get('snodes') or [])}",
             f"  Operating system: {row.get('os', '-')}", f"  Hypervisor: {row.get('hypervisor', '-')}"]
    if row.get("migration"):
        lines.append(f"  Migration: {row['migration']}")
    lines += ["  Back-end parameters:", f"    maxmem: {size(row.get('be/maxmem'))}",
              f"    vcpus: {row.get('be/vcpus', '-')}", f"  Memory in use: {size(row.get('oper_ram'))}", "  NICs:"]
    links = row.get("nic.links") or []
    for index, mac in enumerate(row.get("nic.macs") or []):
        link = links[index] if index < len(links) else "-"
        lines.append(f"    - nic/{index}: MAC: {mac}, link: {link}")
    lines += [f"  Disk template: {row.get('disk_template', '-')}", "  Disks:"]
    states = [entry for entry in row.get("disk_states") or [] if isinstance(entry, dict)]
    for index, mib in enumerate(row.get("disk.sizes") or []):
        copies = ", ".join(disk_state_text(entry) for entry in states if entry.get("disk") == index)
        state = f", copies {copies}" if copies else ""
        lines.append(f"    - disk/{index}: {row.get('disk_template', '-')}, size {size(mib)}{state}")
    lines.append(f"  Tags: {_names_text(row.get('tags'))}")
    return lines


def _liveness_text(row: dict) -> str:
    """"alive (lease renewed 0.3 s ago)": the leader's view of the node, from its leases."""
    liveness, age = row.get("liveness") or "unknown", row.get("lease_age_s")
    return liveness if age is None else f"{liveness} (lease renewed {age:g} s ago)"


def node_info(row: dict, units: str = "h") -> list[str]:
    """`cairn node info`: Ganeti's layout for the keys a node row has."""
    def size(key: str) -> str:
        value = row.get(key)
        return size_text(value, units) if isinstance(value, (int, float)) else "-"

    lines = [f"- Node name: {row.get('name')}", f"  UUID: {row.get('id', '-')}",
             f"  address: {row.get('address', '-')}", f"  group: {row.get('group', '-')}",
             f"  role: {row.get('role', '-')}", f"  master: {_yes(row.get('master'))}",
             f"  voter: {_yes(row.get('voter'))}", f"  master_capable: {_yes(row.get('master_capable'))}",
             f"  vm_capable: {_yes(row.get('vm_capable'))}", f"  offline: {_yes(row.get('offline'))}",
             f"  drained: {_yes(row.get('drained'))}", f"  fenced: {_yes(row.get('fenced'))}",
             f"  liveness: {_liveness_text(row)}",
             f"  memory: total {size('mtotal')}, node {size('mnode')}, free {size('mfree')}",
             f"  disk: total {size('dtotal')}, free {size('dfree')}", f"  cpus: {row.get('ctotal', '-')}",
             "  primary for instances:"]
    lines += [f"    - {name}" for name in row.get("pinst_list") or []]
    lines.append("  secondary for instances:")
    lines += [f"    - {name}" for name in row.get("sinst_list") or []]
    lines.append(f"  Tags: {_names_text(row.get('tags'))}")
    return lines


CLUSTER_KEYS = (
    ("name", "Cluster name"), ("master", "Master node"), ("leader", "Raft leader"), ("term", "Raft term"),
    ("voters", "Raft voters"),
    ("seq", "Log seq"), ("at", "State at seq"), ("digest", "State digest"), ("node", "Answered by node"),
    ("applied_seq", "Applied seq on that node"), ("default_hypervisor", "Default hypervisor"),
    ("enabled_hypervisors", "Enabled hypervisors"), ("enabled_disk_templates", "Enabled disk templates"),
    ("mac_prefix", "MAC prefix"), ("feature_level", "Feature level"), ("node_count", "Nodes"),
    ("instance_count", "Instances"), ("tags", "Tags"),
)


def mode_text(mode: dict) -> str:
    """One operational mode: its name, target and expiry."""
    target = f" on {mode['target']}" if mode.get("target") else ""
    until = f" until {localtime_text(mode['until'])}" if mode.get("until") else ""
    return f"{mode.get('mode')}{target}{until}"


def cluster_info(cluster: dict) -> list[str]:
    """`cairn cluster info`: one `key: value` line per fact, the modes, then any other key the server sent."""
    lines = []
    for key, title in CLUSTER_KEYS:
        if key in cluster and not (key == "at" and cluster[key] is None):
            value = cluster[key]
            lines.append(f"{title}: {_names_text(value) if isinstance(value, list) else _plain(value)}")
    modes = cluster.get("modes") or []
    lines.append("Modes:" if modes else "Modes: (none)")
    lines += [f"  {mode_text(mode)}" for mode in modes]
    shown = {key for key, _ in CLUSTER_KEYS} | {"modes"}
    lines += [f"{key}: {_plain(value)}" for key, value in cluster.items() if key not in shown]
    return lines


def job_info(row: dict) -> list[str]:
    """`cairn job info`: the job, each operation with its input and result, then the execution log."""
    lines = [f"- Job ID: {row.get('id')}", f"  Status: {row.get('status')}", f"  Actor: {row.get('actor') or '-'}",
             f"  Reason: {row.get('reason') or '-'}", f"  Request ID: {row.get('request_id') or '-'}",
             f"  Received: {localtime_text(row.get('received_ts'))}",
             f"  Processing end: {localtime_text(row.get('end_ts'))}"]
    received, ended = row.get("received_ts"), row.get("end_ts")
    if isinstance(received, (int, float)) and isinstance(ended, (int, float)):
        lines.append(f"  Total processing time: {ended - received:.6f} seconds")
    if row.get("error_code") or row.get("error_message"):
        lines.append(f"  Error: {row.get('error_code') or '-'}: {row.get('error_message') or ''}")
    lines.append("  Opcodes:")
    summaries, results = row.get("summary") or [], row.get("opresult") or []
    for index, op in enumerate(row.get("ops") or []):
        title = summaries[index] if index < len(summaries) else (op.get("op") if isinstance(op, dict) else op)
        lines.append(f"    - Opcode: {title}")
        params = op.get("params", {}) if isinstance(op, dict) else {}
        lines.append("      Input fields:")
        lines += [f"        {key}: {_plain(value)}" for key, value in params.items()]
        if index < len(results):
            lines.append(f"      Result: {_plain(results[index])}")
    lines.append("  Execution log:")
    for entry in row.get("oplog") or []:
        if isinstance(entry, (list, tuple)) and len(entry) == 2:
            lines.append(f"    - {localtime_text(entry[0])} {entry[1]}")
        else:
            lines.append(f"    - {_plain(entry)}")
    return lines
