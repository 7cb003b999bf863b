"""The cluster as htools sees it: groups, nodes, instances, tags and policies as plain records.

This is the parsed, name-keyed form; `fastpath.arrays` flattens it for the engines.
"""

from fastpath.record import field, record

# Disk templates as htools names them; Cairn's `replicated` is htools `drbd`.
TEMPLATES = ("diskless", "file", "sharedfile", "plain", "blockdev", "drbd", "rbd", "ext", "gluster")
MIRRORED = {"drbd"}
SHARED = {"sharedfile", "blockdev", "rbd", "ext", "gluster"}
LOCAL_STORAGE = {"plain", "drbd"}
MEMORY_STATUSES = {"running", "ERROR_up", "ERROR_nodedown", "ERROR_nodeoffline"}
STATUSES = MEMORY_STATUSES | {"ADMIN_down", "ADMIN_offline", "ERROR_down", "ERROR_wrongnode", "USER_down"}
CAIRN_TO_HTOOLS = {"replicated": "drbd", "file": "file", "diskless": "diskless"}
HTOOLS_TO_CAIRN = {"drbd": "replicated"}


@record
class Spec:
    """One instance spec: the six values of an htools policy spec."""

    memory: int = 128
    cpu: int = 1
    disk: int = 1024
    disk_count: int = 1
    nic_count: int = 1
    spindle_use: int = 1

    def values(self) -> list[int]:
        """The six values in text-format order."""
        return [self.memory, self.cpu, self.disk, self.disk_count, self.nic_count, self.spindle_use]


@record
class Policy:
    """An instance policy: std spec, (min, max) pairs, allowed templates and the two ratios."""

    std: Spec = field(default_factory=Spec)
    minmax: list[tuple[Spec, Spec]] = field(default_factory=lambda: [
        (Spec(), Spec(32768, 8, 1048576, 16, 8, 12))])
    templates: list[str] = field(default_factory=lambda: list(TEMPLATES))
    vcpu_ratio: float = 4.0
    spindle_ratio: float = 32.0


@record
class Group:
    """A node group."""

    name: str
    uuid: str
    alloc_policy: str = "preferred"
    tags: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)


@record
class Node:
    """A node with its load-time figures (MiB, CPUs)."""

    name: str
    t_mem: float
    n_mem: int
    f_mem: int
    t_dsk: float
    f_dsk: int
    t_cpu: float
    offline: bool
    group: str  # group uuid
    master: bool = False
    spindles: int = 1
    tags: list[str] = field(default_factory=list)
    excl_stor: bool = False
    free_spindles: int = 0
    node_cpus: int = 1
    cpu_speed: float = 1.0


@record
class Instance:
    """An instance: its size, status, nodes and template."""

    name: str
    mem: int
    dsk: int
    vcpus: int
    status: str
    auto_balance: bool
    pnode: str
    snode: str
    template: str
    tags: list[str] = field(default_factory=list)
    spindle_use: int = 1
    spindles: str = "-"
    forthcoming: bool = False
    disks: list[int] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)  # of its NICs (iallocator input only)
    util: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)  # dynamic load: cpu, mem, disk, net (hbal -U)


@record
class Cluster:
    """A whole htools cluster description, in file order (order decides ties)."""

    groups: list[Group] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    policy: Policy = field(default_factory=Policy)
    group_policies: dict[str, Policy] = field(default_factory=dict)  # by group name
    policy_given: bool = False

    def group_by_uuid(self, uuid: str) -> Group:
        """The group with this uuid."""
        for group in self.groups:
            if group.uuid == uuid:
                return group
        raise KeyError(uuid)

    def find_group(self, key: str) -> Group:
        """The group named `key` or with uuid `key`."""
        for group in self.groups:
            if key in (group.name, group.uuid):
                return group
        raise KeyError(key)

    def policy_of(self, group_uuid: str) -> Policy:
        """The policy that applies to the nodes of a group."""
        try:
            name = self.group_by_uuid(group_uuid).name
        except KeyError:
            return self.policy
        return self.group_policies.get(name, self.policy)
