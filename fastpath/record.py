"""`record`: a lean stand-in for `dataclasses.dataclass` (init, repr, eq) for fastpath's records.

`import dataclasses` costs about 6 ms of CPU (it imports `inspect`) and each dataclass a few
hundred microseconds of code generation: a fifth of what a whole `cairn balance` process spends
before its answer on small clusters. fastpath's records use none of the rest of dataclasses.
"""

_MISSING = object()


class _Factory:
    """A default made afresh for each record (`field(default_factory=...)`)."""

    __slots__ = ("make",)

    def __init__(self, make):
        self.make = make


def field(*, default_factory):
    """A field whose default is made per record, as `dataclasses.field(default_factory=...)`."""
    return _Factory(default_factory)


def _repr(self) -> str:
    values = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__record_fields__)
    return f"{type(self).__name__}({values})"


def _eq(self, other):
    if type(other) is not type(self):
        return NotImplemented
    return all(getattr(self, name) == getattr(other, name) for name in self.__record_fields__)


def record(cls):
    """Give `cls` an __init__ over its annotated fields (in order, with their defaults), a __repr__
    and an __eq__, like `@dataclass`; records are unhashable, as dataclasses with eq are."""
    names = list(cls.__dict__.get("__annotations__", {}))
    namespace, params, body = {"_MISSING": _MISSING}, [], []
    for name in names:
        default = cls.__dict__.get(name, _MISSING)
        if isinstance(default, _Factory):
            namespace[f"_f_{name}"] = default.make
            params.append(f"{name}=_MISSING")
            body.append(f"    self.{name} = _f_{name}() if {name} is _MISSING else {name}")
            delattr(cls, name)
            continue
        if default is not _MISSING:
            namespace[f"_d_{name}"] = default
        params.append(name if default is _MISSING else f"{name}=_d_{name}")
        body.append(f"    self.{name} = {name}")
    source = f"def __init__(self, {', '.join(params)}):\n" + ("\n".join(body) or "    pass") + "\n"
    exec(source, namespace)  # noqa: S102 - generated from the class's own field names, as dataclasses does
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__, cls.__repr__, cls.__eq__, cls.__hash__ = init, _repr, _eq, None
    cls.__record_fields__ = tuple(names)
    return cls
