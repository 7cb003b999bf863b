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


INT, NUMBER, TEXT, FLAG = "an integer", "a number", "a string", "true or false"
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


def _fail(path: tuple, wanted: str, value) -> None:
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    raise RequestError(f"invalid iallocator message: {_path(path)} must be {wanted}, not {_kind(value)} ({shown}); "
                       "fix what wrote the request (Ganeti writes these documents)")


def _path(path: tuple) -> str:
    return "/".join(map(str, path))


# Leaf shapes: (test, what the value must be). The tests run once per field of every node and
# instance (25000 instances at 1000 nodes), so they are plain type tests and the path of a field
# is only spelled out when it fails.
_LEAVES = {
    INT: (lambda v: type(v) is int and -_LIMIT < v < _LIMIT, "an integer below 2^62"),
    NUMBER: (lambda v: type(v) in (int, float) and -_LIMIT < v < _LIMIT, "a finite number below 2^62"),
    TEXT: (lambda v: type(v) is str and v != "", "a non-empty string"),
    FLAG: (lambda v: type(v) is bool, "true or false"),
}


def _check(value, shape, path: tuple) -> None:
    if type(shape) is Required:
        shape = shape.shape
    if type(shape) is dict:
        if not isinstance(value, dict):
            _fail(path, "an object", value)
        for key, inner in shape.items():
            inner_value = value.get(key)
            if inner_value is None:
                if key in value:
                    del value[key]  # null counts as absent, for the readers too
                if isinstance(inner, Required):
                    raise RequestError(f"invalid iallocator message: key '{key}' not found in {_path(path)}, "
                                       f"object contains only {sorted(value)}")
            elif type(inner) is str:
                test, wanted = _LEAVES[inner]
                if not test(inner_value):
                    _fail(path + (key,), wanted, inner_value)
            else:
                _check(inner_value, inner, path + (key,))
    elif isinstance(shape, MapOf):
        if not isinstance(value, dict):
            _fail(path, "an object of names", value)
        for key, inner in value.items():
            _check(inner, shape.shape, path + (key,))
    elif isinstance(shape, list):
        if not isinstance(value, list):
            _fail(path, "a list", value)
        if isinstance(shape[0], str):  # a list of names or numbers: tested in one loop
            test, wanted = _LEAVES[shape[0]]
            for k, inner in enumerate(value):
                if not test(inner):
                    _fail(path + (k,), wanted, inner)
            return
        for k, inner in enumerate(value):
            _check(inner, shape[0], path + (k,))
    elif isinstance(shape, OneOf):
        if isinstance(value, bool) or value not in shape.choices:
            _fail(path, "one of " + ", ".join(map(str, shape.choices)), value)
    else:
        test, wanted = _LEAVES[shape]
        if not test(value):
            _fail(path, wanted, value)


def check_document(document) -> None:
    """Raise RequestError naming the first field of `document` whose shape is wrong; drops the
    keys (of those checked) whose value is null, so that readers see them as absent."""
    _check(document, DOCUMENT, ("the document",))
    request = document["request"]
    if request["type"] == "multi-allocate":
        _check(request.get("instances"), Required([NEW_INSTANCE]), ("request", "instances"))
    elif request["type"] in ("node-evacuate", "change-group"):
        _check(request.get("instances"), Required(NAMES), ("request", "instances"))
    if request["type"] in ("allocate", "relocate", "allocate-secondary"):
        _check(request.get("name"), Required(TEXT), ("request", "name"))
