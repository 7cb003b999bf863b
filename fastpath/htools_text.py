"""Ganeti's htools text backend format (`-t FILE`): parse it into a `Cluster` and write one back.

Written from the format description in shared/reference/htools.md section 2.
"""

from fastpath.model import STATUSES, TEMPLATES, Cluster, Group, Instance, Node, Policy, Spec


class FormatError(ValueError):
    """The text is not valid htools text format."""


_LIMIT = 2 ** 62  # the C core keeps figures in 64-bit integers and sums them


def _int(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise FormatError(f"{what}: cannot parse integer '{text}'; write a plain integer such as 12") from None
    if abs(value) >= _LIMIT:
        raise FormatError(f"{what}: integer '{text}' is out of range; sizes are in MiB and must stay below 2^62")
    return value


def _float(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FormatError(f"{what}: cannot parse number '{text}'; write a number such as 12 or 12.5") from None
    if not abs(value) < _LIMIT:  # also NaN and infinities, which htools cannot read either
        raise FormatError(f"{what}: number '{text}' is not a finite number below 2^62; write one such as 12.5")
    return value


def _list(text: str) -> list[str]:
    return [item for item in text.split(",") if item] if text else []


def _sections(text: str) -> list[list[str]]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    sections: list[list[str]] = [[]]
    for line in lines:
        if line == "":
            sections.append([])
        else:
            sections[-1].append(line)
    return sections


def _parse_group(line: str) -> Group:
    fields = line.split("|")
    if len(fields) < 4:
        raise FormatError(f"group line '{line}' has {len(fields)} fields; it needs name|uuid|policy|tags[|networks]")
    networks = _list(fields[4]) if len(fields) > 4 else []
    return Group(fields[0], fields[1], fields[2], _list(fields[3]), networks)


def _parse_node(line: str, uuids: set[str]) -> Node:
    f = line.split("|")
    if len(f) < 9:
        raise FormatError(f"node line '{line}' has {len(f)} fields; it needs at least 9")
    name = f[0]
    if f[8] not in uuids:
        raise FormatError(f"Unknown group '{f[8]}' for node {name}; add it to the first section")
    unknown = "?" in f[1:7]
    node = Node(
        name=name,
        t_mem=0.0 if unknown else _float(f[1], name),
        n_mem=0 if unknown else _int(f[2], name),
        f_mem=0 if unknown else _int(f[3], name),
        t_dsk=0.0 if unknown else _float(f[4], name),
        f_dsk=0 if unknown else _int(f[5], name),
        t_cpu=0.0 if unknown else _float(f[6], name),
        offline=unknown or f[7] == "Y",
        group=f[8],
        master=f[7] == "M",
    )
    if len(f) > 9 and f[9]:
        node.spindles = _int(f[9], name)
    if len(f) > 10:
        node.tags = _list(f[10])
    if len(f) > 11 and f[11]:
        if f[11] not in ("Y", "N"):
            raise FormatError(f"node {name}: exclusive storage flag '{f[11]}' must be Y or N")
        node.excl_stor = f[11] == "Y"
    if len(f) > 12 and f[12]:
        node.free_spindles = _int(f[12], name)
    if len(f) > 13 and f[13]:
        node.node_cpus = _int(f[13], name)
    if len(f) > 14 and f[14]:
        node.cpu_speed = _float(f[14], name)
    return node


def _parse_instance(line: str, names: set[str]) -> Instance:
    f = line.split("|")
    if len(f) < 10:
        raise FormatError(f"instance line '{line}' has {len(f)} fields; it needs at least 10")
    name = f[0]
    for node in (f[6], f[7]):
        if node and node not in names:
            raise FormatError(f"Unknown node '{node}' for instance {name}")
    if f[8] not in TEMPLATES:
        raise FormatError(f"instance {name}: unknown disk template '{f[8]}'; use one of {', '.join(TEMPLATES)}")
    if f[4] not in STATUSES:
        raise FormatError(f"instance {name}: unknown status '{f[4]}'")
    if f[7] and f[7] == f[6]:
        raise FormatError(f"instance {name}: secondary equals primary '{f[6]}'; clear the secondary field")
    inst = Instance(name, _int(f[1], name), _int(f[2], name), _int(f[3], name), f[4], f[5] == "Y",
                    f[6], f[7], f[8], _list(f[9]))
    if len(f) > 10 and f[10]:
        inst.spindle_use = _int(f[10], name)
    if len(f) > 11 and f[11]:
        if f[11] != "-":
            _int(f[11], f"instance {name}: spindles ('-' when unknown)")
        inst.spindles = f[11]
    if len(f) > 12 and f[12]:
        inst.forthcoming = f[12] == "Y"
    inst.disks = [inst.dsk]
    return inst


def _parse_spec(text: str) -> Spec:
    values = [_int(v, "policy spec") for v in text.split(",")]
    if len(values) != 6:
        raise FormatError(f"policy spec '{text}' has {len(values)} values; it needs six "
                          "(memory,cpu,disk,disk_count,nic_count,spindle_use)")
    return Spec(*values)


def _parse_policy(line: str) -> tuple[str, Policy]:
    f = line.split("|")
    if len(f) < 6:
        raise FormatError(f"policy line '{line}' has {len(f)} fields; it needs 6")
    specs = [_parse_spec(s) for s in f[2].split(";") if s]
    if len(specs) % 2:
        raise FormatError(f"policy line '{line}': min/max specs must come in pairs")
    pairs = [(specs[i], specs[i + 1]) for i in range(0, len(specs), 2)]
    unknown = [t for t in _list(f[3]) if t not in TEMPLATES]
    if unknown:
        raise FormatError(f"policy line '{line}': unknown disk template '{unknown[0]}'; use one of "
                          f"{', '.join(TEMPLATES)}")
    return f[0], Policy(_parse_spec(f[1]), pairs, _list(f[3]), _float(f[4], "vcpu ratio"),
                        _float(f[5], "spindle ratio"))


def parse(text: str) -> Cluster:
    """Parse htools text format into a Cluster (file order kept)."""
    sections = _sections(text)
    if len(sections) < 4:
        raise FormatError(f"Invalid format of the input file: {len(sections)} sections instead of 4 or more")
    cluster = Cluster()
    cluster.groups = [_parse_group(line) for line in sections[0]]
    uuids = {g.uuid for g in cluster.groups}
    cluster.nodes = [_parse_node(line, uuids) for line in sections[1]]
    names = {n.name for n in cluster.nodes}
    cluster.instances = [_parse_instance(line, names) for line in sections[2]]
    cluster.tags = list(sections[3])
    if len(sections) > 4:
        for line in sections[4]:
            owner, policy = _parse_policy(line)
            if owner:
                cluster.group_policies[owner] = policy
            else:
                cluster.policy = policy
                cluster.policy_given = True
    return cluster


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _node_line(n: Node) -> str:
    role = "Y" if n.offline else ("M" if n.master else "N")
    return "|".join([n.name, str(int(n.t_mem)), str(n.n_mem), str(n.f_mem), str(int(n.t_dsk)), str(n.f_dsk),
                     str(int(n.t_cpu)), role, n.group, str(n.spindles), ",".join(n.tags),
                     "Y" if n.excl_stor else "N", str(n.free_spindles), str(n.node_cpus), repr(float(n.cpu_speed))])


def _instance_line(i: Instance) -> str:
    return "|".join([i.name, str(i.mem), str(i.dsk), str(i.vcpus), i.status, "Y" if i.auto_balance else "N",
                     i.pnode, i.snode, i.template, ",".join(i.tags), str(i.spindle_use), i.spindles,
                     "Y" if i.forthcoming else "N"])


def _policy_line(owner: str, p: Policy) -> str:
    specs = ";".join(f"{','.join(map(str, lo.values()))};{','.join(map(str, hi.values()))}" for lo, hi in p.minmax)
    return "|".join([owner, ",".join(map(str, p.std.values())), specs, ",".join(p.templates),
                     repr(float(p.vcpu_ratio)), repr(float(p.spindle_ratio))])


def write(cluster: Cluster) -> str:
    """Write a Cluster in htools text format (the layout htools' own writer uses)."""
    groups = ["|".join([g.name, g.uuid, g.alloc_policy, ",".join(g.tags), ",".join(g.networks)])
              for g in cluster.groups]
    nodes = [_node_line(n) for n in cluster.nodes]
    instances = [_instance_line(i) for i in cluster.instances]
    policies = [_policy_line("", cluster.policy)]
    policies += [_policy_line(name, p) for name, p in cluster.group_policies.items()]
    sections = [groups, nodes, instances, list(cluster.tags), policies]
    # Every line ends in a newline and sections are separated by one empty line, so an empty
    # section shows up as two consecutive blank lines, as htools expects.
    return "\n".join("".join(line + "\n" for line in s) for s in sections)
