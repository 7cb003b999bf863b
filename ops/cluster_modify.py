"""Change cluster parameters: hypervisors, disk templates, instance policy, MAC prefix, feature level, intervals.

Disabling a hypervisor or disk template that an instance still uses is
refused (naming one such instance). The feature level only goes up, and never
above the highest level this code knows (the newest event's SINCE_LEVEL):
proposing events a node cannot decode would stop that node.
"""

from dataclasses import dataclass

from appliance.model import events as ev
from appliance.model.errors import FEATURE_LEVEL, WRONG_INPUT, WRONG_STATE, PrereqError
from appliance.model.ids import is_mac_prefix
from ops import _common
from ops.base import Claims, Plan, one_step, no_prepare

NAME = "cluster_modify"
OPCODE = "CLUSTER_SET_PARAMS"
ROLE = "admin"
DRAIN_EXEMPT = False
BEFORE_INIT = False
REFERENCES = {}
prepare = no_prepare
HIGHEST_FEATURE_LEVEL = max(cls.SINCE_LEVEL for cls in ev.REGISTRY.values())
CHANGES = ("enabled_hypervisors", "enabled_disk_templates", "default_hypervisor", "ipolicy", "mac_prefix",
           "feature_level", "fencing_interval_s", "recovery_interval_s")


@dataclass(frozen=True)
class Params:
    enabled_hypervisors: tuple | None = None
    enabled_disk_templates: tuple | None = None
    default_hypervisor: str | None = None
    ipolicy: dict | None = None
    mac_prefix: str | None = None
    feature_level: int | None = None
    fencing_interval_s: int | None = None
    recovery_interval_s: int | None = None


def claims(state, params: Params) -> Claims:
    return Claims(cluster=True)


def changes_of(state, params: Params) -> dict:
    """The parameters given that differ from the cluster's (lists as tuples)."""
    changes = {}
    for key in CHANGES:
        value = getattr(params, key)
        if isinstance(value, list):
            value = tuple(value)
        if value is not None and value != getattr(state.cluster, key):
            changes[key] = value
    return changes


def check(state, params: Params) -> None:
    if all(getattr(params, key) is None for key in CHANGES):
        raise _common.nothing_given("the cluster", CHANGES)
    cluster = state.cluster
    if params.enabled_hypervisors is not None:
        _check_enabled(state, "hypervisor", params.enabled_hypervisors, _common.HYPERVISORS)
    if params.enabled_disk_templates is not None:
        _check_enabled(state, "disk_template", params.enabled_disk_templates, _common.DISK_TEMPLATES)
    enabled = tuple(params.enabled_hypervisors or cluster.enabled_hypervisors)
    default = params.default_hypervisor or cluster.default_hypervisor
    if default not in enabled:
        raise PrereqError(WRONG_INPUT, f"Default hypervisor '{default}' would not be enabled (enabled: "
                                       f"{','.join(enabled)}); give a default among the enabled ones")
    if params.ipolicy is not None:
        _common.check_ipolicy(params.ipolicy)
    if params.mac_prefix is not None and not is_mac_prefix(params.mac_prefix):
        raise PrereqError(WRONG_INPUT, f"Invalid MAC prefix '{params.mac_prefix}': give three octets like 'aa:00:00'")
    if params.feature_level is not None:
        _check_level(cluster.feature_level, params.feature_level)
    if params.fencing_interval_s is not None or params.recovery_interval_s is not None:
        _common.intervals(_given(params.fencing_interval_s, cluster.fencing_interval_s),
                          _given(params.recovery_interval_s, cluster.recovery_interval_s))


def _given(value, current):
    return current if value is None else value


def _check_enabled(state, attribute: str, values, known: tuple) -> None:
    """Refuse an empty or unknown list, or one that drops a value an instance still uses."""
    word = attribute.replace("_", " ")
    if not values:
        raise PrereqError(WRONG_INPUT, f"Enable at least one {word}")
    for value in values:
        if value not in known:
            raise PrereqError(WRONG_INPUT, f"Unknown {word} '{value}'; choose from {', '.join(known)}")
    dropped = set(getattr(state.cluster, f"enabled_{attribute}s")) - set(values)
    if not dropped:
        return
    users = sorted(i.name for i in state.instances.values() if getattr(i, attribute) in dropped)
    if users:
        value = getattr(state.instance_by_name(users[0]), attribute)
        raise PrereqError(WRONG_STATE, f"Cannot disable {word} '{value}': instance '{users[0]}' still uses it"
                                       f"{f' (and {len(users) - 1} more)' if len(users) > 1 else ''}; "
                                       "remove or convert those instances first")


def _check_level(current: int, wanted: int) -> None:
    _common.positive(wanted, "feature level")
    if wanted < current:
        raise PrereqError(WRONG_INPUT, f"The feature level only goes up: the cluster is at {current}, "
                                       f"cannot go back to {wanted}")
    if wanted > HIGHEST_FEATURE_LEVEL:
        raise PrereqError(FEATURE_LEVEL, f"This version of cairn knows feature levels up to "
                                         f"{HIGHEST_FEATURE_LEVEL}, not {wanted}; upgrade cairn on every node first")


def plan(state, params: Params) -> Plan:
    changes = changes_of(state, params)
    if not changes:
        return Plan(steps=(), result="the cluster already has the requested settings")
    event = ev.ClusterModified(**{key: changes.get(key) for key in CHANGES})
    return one_step("modifying cluster parameters", event, result=changes)
