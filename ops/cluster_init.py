"""Initialise the cluster: parameters, the default group and the first admin user."""

from dataclasses import dataclass

from appliance.model import events as ev
from appliance.model.errors import ALREADY_EXISTS, WRONG_INPUT, PrereqError
from appliance.model.ids import group_id, is_mac_prefix, is_simple_name
from ops import _common
from ops.base import Claims, Plan, one_step, no_prepare

NAME = "cluster_init"
OPCODE = "CLUSTER_INIT"
ROLE = "admin"
BEFORE_INIT = True
DRAIN_EXEMPT = False
REFERENCES = {}
prepare = no_prepare
FEATURE_LEVEL = 1


@dataclass(frozen=True)
class Params:
    name: str
    admin: str = "admin"
    enabled_hypervisors: tuple = ("kvm", "fake")
    enabled_disk_templates: tuple = ("diskless", "file", "replicated")
    default_hypervisor: str = ""
    mac_prefix: str = "aa:00:00"
    ipolicy: dict | None = None
    fencing_interval_s: int = 5
    recovery_interval_s: int = 8
    # SHA-256 (hex) of the first admin's bearer token; the token itself never reaches the log.
    admin_credential_hash: str = ""


def claims(state, params: Params) -> Claims:
    return Claims(cluster=True)


def check(state, params: Params) -> None:
    if state.cluster is not None:
        raise PrereqError(ALREADY_EXISTS, f"Cluster '{state.cluster.name}' is already initialised")
    _common.hostname(params.name, "cluster")
    if not is_simple_name(params.admin):
        raise PrereqError(WRONG_INPUT, f"Invalid user name '{params.admin}': use lower-case letters, digits, ._-")
    for hv in params.enabled_hypervisors:
        if hv not in _common.HYPERVISORS:
            raise PrereqError(WRONG_INPUT, f"Unknown hypervisor '{hv}'; choose from {', '.join(_common.HYPERVISORS)}")
    for template in params.enabled_disk_templates:
        if template not in _common.DISK_TEMPLATES:
            raise PrereqError(WRONG_INPUT, f"Unknown disk template '{template}'; "
                                           f"choose from {', '.join(_common.DISK_TEMPLATES)}")
    if not params.enabled_hypervisors or not params.enabled_disk_templates:
        raise PrereqError(WRONG_INPUT, "Enable at least one hypervisor and one disk template")
    if params.default_hypervisor and params.default_hypervisor not in params.enabled_hypervisors:
        raise PrereqError(WRONG_INPUT, f"Default hypervisor '{params.default_hypervisor}' is not among the enabled "
                                       f"ones ({','.join(params.enabled_hypervisors)})")
    if not is_mac_prefix(params.mac_prefix):
        raise PrereqError(WRONG_INPUT, f"Invalid MAC prefix '{params.mac_prefix}': give three octets like 'aa:00:00'")
    _common.intervals(params.fencing_interval_s, params.recovery_interval_s)
    if params.ipolicy is not None:
        _common.check_ipolicy(params.ipolicy)
    if params.admin_credential_hash:
        _common.credential_hash(params.admin_credential_hash)


def plan(state, params: Params) -> Plan:
    default_group = group_id("default")
    initialized = ev.ClusterInitialized(
        name=params.name,
        enabled_hypervisors=tuple(params.enabled_hypervisors),
        enabled_disk_templates=tuple(params.enabled_disk_templates),
        default_hypervisor=params.default_hypervisor or params.enabled_hypervisors[0],
        ipolicy=params.ipolicy or _common.DEFAULT_IPOLICY,
        mac_prefix=params.mac_prefix,
        feature_level=FEATURE_LEVEL,
        fencing_interval_s=params.fencing_interval_s,
        recovery_interval_s=params.recovery_interval_s,
        default_group=default_group,
    )
    events = [initialized, ev.UserAdded(params.admin, "admin")]
    if params.admin_credential_hash:
        events.append(ev.CredentialAdded(params.admin, params.admin_credential_hash, "initial admin token"))
    return one_step(f"initialising cluster {params.name}", *events)
