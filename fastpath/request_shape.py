"""The shape of an iallocator request document, checked before anything reads it.

Ganeti writes these documents, so a bad one means a bug or a hand edit upstream; the answer is
one error naming the field by its path (`nodes/node1/free_memory`), what it should be and what
it is, instead of a traceback from deep inside the allocator. Fields Cairn does not read are not
checked; fields Ganeti may write as null (a NIC's network, a disk's spindles, group_name, an
absent ipolicy) count as absent. Written from shared/reference/htools.md section 4.
"""

from fastpath.model import TEMPLATES

_LIMIT = 2 ** 62  # the C core keeps figures in 64-bit integers and sums them


class RequestError(ValueError):
    """The request document is not a valid iallocator message."""


class Required:
    """A key the object must have."""

    def __init__(self, shape):
        self.shape = shape


class MapOf:
    """An object whose keys are names (of nodes, groups, instances) and whose values all have one shape."""

    def __init__(self, shape):
        self.shape = shape


class OneOf:
    """A string from a fixed set."""

    def __init__(self, *choices: str):
        self.choices = choices


INT, NUMBER, TEXT, FLAG, ANY = "an integer", "a number", "a string", "true or false", "anything"
NAMES = [TEXT]
TEMPLATE = OneOf(*TEMPLATES)
SPEC = {key: INT for key in ("memory-size", "cpu-count", "disk-size", "disk-count", "nic-count", "spindle-use")}
IPOLICY = {"std": SPEC, "minmax": [{"min": Required(SPEC), "max": Required(SPEC)}], "disk-templates": [TEMPLATE],
           "vcpu-ratio": NUMBER, "spindle-ratio": NUMBER}
GROUP = {"name": TEXT, "alloc_policy": OneOf("preferred", "last_resort", "unallocable"), "tags": NAMES,
         "networks": NAMES, "ipolicy": IPOLICY}
NODE = {"group": Required(TEXT), "offline": FLAG, "drained": FLAG, "vm_capable": FLAG, "tags": NAMES,
        "ndparams": {"exclusive_storage": FLAG, "spindle_count": INT},
        "total_memory": NUMBER, "reserved_memory": INT, "free_memory": INT, "total_disk": NUMBER, "free_disk": INT,
        "total_cpus": NUMBER, "reserved_cpus": INT, "total_spindles": INT, "free_spindles": INT}
DISK = {"size": INT, "spindles": INT}
NIC = {"network": TEXT}
SIZES = {"memory": INT, "vcpus": INT, "disks": [DISK], "disk_space_total": INT, "disk_template": TEMPLATE,
         "spindle_use": INT, "tags": NAMES, "nics": [NIC]}
INSTANCE = {**SIZES, "nodes": Required(NAMES), "memory": Required(INT), "vcpus": Required(INT),
            "admin_state": OneOf("up", "down", "offline"), "forthcoming": FLAG}
NEW_INSTANCE = {**SIZES, "name": Required(TEXT), "required_nodes": OneOf(1, 2), "restrict-to-nodes": NAMES}
REQUEST = {"type": Required(TEXT), "name": TEXT, "required_nodes": OneOf(1, 2), "restrict-to-nodes": NAMES,
           "relocate_from": NAMES, "evac_mode": OneOf("primary-only", "secondary-only", "all"),
           "target_groups": NAMES, "group_name": TEXT, **SIZES}
# hail reads the request first, so a document without one says that first.
DOCUMENT = {"request": Required(REQUEST), "nodegroups": Required(MapOf(GROUP)), "nodes": Required(MapOf(NODE)),
            "instances": Required(MapOf(INSTANCE)), "cluster_tags": NAMES, "enabled_hypervisors": NAMES}


def _kind(value) -> str:
    if value is None:
        return "null"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def _fail(path: str, wanted: str, value) -> None:
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    raise RequestError(f"invalid iallocator message: {path} must be {wanted}, not {_kind(value)} ({shown}); "
                       "fix what wrote the request (Ganeti writes these documents)")


def _check(value, shape, path: str) -> None:
    if isinstance(shape, Required):
        shape = shape.shape
    if shape == ANY:
        return
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            _fail(path, "an object", value)
        for key, inner in shape.items():
            if key in value and value[key] is None:
                del value[key]  # null counts as absent, for the readers too
            if key in value:
                _check(value[key], inner, f"{path}/{key}")
            elif isinstance(inner, Required):
                raise RequestError(f"invalid iallocator message: key '{key}' not found in {path}, object "
                                   f"contains only {sorted(value)}")
    elif isinstance(shape, MapOf):
        if not isinstance(value, dict):
            _fail(path, "an object of names", value)
        for key, inner in value.items():
            _check(inner, shape.shape, f"{path}/{key}")
    elif isinstance(shape, list):
        if not isinstance(value, list):
            _fail(path, "a list", value)
        for k, inner in enumerate(value):
            _check(inner, shape[0], f"{path}/{k}")
    elif isinstance(shape, OneOf):
        if isinstance(value, bool) or value not in shape.choices:
            _fail(path, "one of " + ", ".join(map(str, shape.choices)), value)
    elif shape == INT:
        if isinstance(value, bool) or not isinstance(value, int) or abs(value) >= _LIMIT:
            _fail(path, "an integer below 2^62", value)
    elif shape == NUMBER:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) < _LIMIT:
            _fail(path, "a finite number below 2^62", value)
    elif shape == TEXT:
        if not isinstance(value, str) or not value:
            _fail(path, "a non-empty string", value)
    elif shape == FLAG:
        if not isinstance(value, bool):
            _fail(path, "true or false", value)


def check_document(document) -> None:
    """Raise RequestError naming the first field of `document` whose shape is wrong; drops the
    keys (of those checked) whose value is null, so that readers see them as absent."""
    _check(document, DOCUMENT, "the document")
    request = document["request"]
    if request["type"] == "multi-allocate":
        _check(request.get("instances"), Required([NEW_INSTANCE]), "request/instances")
    elif request["type"] in ("node-evacuate", "change-group"):
        _check(request.get("instances"), Required(NAMES), "request/instances")
    if request["type"] in ("allocate", "relocate", "allocate-secondary"):
        _check(request.get("name"), Required(TEXT), "request/name")
