"""Identifiers and names: entity ids, event ids, host names and MAC addresses.

Entity ids never change for an entity's life (names can be renamed); they are
strings with a kind prefix so a log line reads on its own (`inst-3f2a...`).
"""

import re
from typing import NewType

NodeId = NewType("NodeId", str)
InstanceId = NewType("InstanceId", str)
GroupId = NewType("GroupId", str)
JobId = NewType("JobId", int)
EventId = NewType("EventId", bytes)

EVENT_ID_BYTES = 16
DEFAULT_GROUP_NAME = "default"

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_MAC_PREFIX = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){2}$")
_TAG = re.compile(r"^[\w.+*/:@-]{1,128}$")


def is_hostname(name: str) -> bool:
    """True for a valid DNS host name (lower case, as Ganeti stores them)."""
    return bool(_HOSTNAME.match(name))


def is_simple_name(name: str) -> bool:
    """True for a valid user or group name."""
    return bool(_NAME.match(name))


def is_mac(mac: str) -> bool:
    """True for a MAC address in lower-case colon form."""
    return bool(_MAC.match(mac))


def is_mac_prefix(prefix: str) -> bool:
    """True for a three-octet MAC prefix such as 'aa:00:00'."""
    return bool(_MAC_PREFIX.match(prefix))


def is_tag(tag: str) -> bool:
    """True for a tag Ganeti would accept (1-128 characters, no spaces)."""
    return bool(_TAG.match(tag))


def node_id(token: str) -> NodeId:
    """The id of a node from a unique token."""
    return NodeId(f"node-{token}")


def instance_id(token: str) -> InstanceId:
    """The id of an instance from a unique token."""
    return InstanceId(f"inst-{token}")


def group_id(token: str) -> GroupId:
    """The id of a node group from a unique token."""
    return GroupId(f"group-{token}")


def mac_from_int(prefix: str, value: int) -> str:
    """The MAC with the cluster prefix and the low three octets taken from `value`."""
    low = value & 0xFFFFFF
    return f"{prefix}:{low >> 16:02x}:{(low >> 8) & 0xFF:02x}:{low & 0xFF:02x}"
