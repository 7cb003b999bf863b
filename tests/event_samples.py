"""Sample values and Hypothesis strategies for every registered event, built from its field annotations."""

from __future__ import annotations

from hypothesis import strategies as st

from appliance.model import events as ev
from appliance.model.codec import Envelope

_SAMPLES = {
    "str": "example",
    "int": 7,
    "bool": True,
    "float": 42.5,
    "float | None": 1764633600.5,
    "int | None": 2048,
    "str | None": "example",
    "bool | None": True,
    "tuple": ("a", "b"),
    "tuple | None": ("a", "b"),
    "dict": {"key": 1},
    "dict | None": {"key": 1},
    "Any": {"ok": True},
}

_scalar = st.one_of(st.integers(-2**63, 2**63 - 1), st.text(max_size=20), st.booleans(), st.none(),
                    st.binary(max_size=16), st.floats(allow_nan=False))
_plain = st.recursive(_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=4).map(tuple), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)

_tuples = st.lists(_plain, max_size=4).map(tuple)
_dicts = st.dictionaries(st.text(max_size=10), _plain, max_size=4)

_STRATEGIES = {
    "str": st.text(max_size=40),
    "int": st.integers(-2**63, 2**63 - 1),
    "bool": st.booleans(),
    "float": st.floats(allow_nan=False, allow_infinity=False),
    "float | None": st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
    "int | None": st.one_of(st.none(), st.integers(0, 2**40)),
    "str | None": st.one_of(st.none(), st.text(max_size=40)),
    "bool | None": st.one_of(st.none(), st.booleans()),
    "tuple": _tuples,
    "tuple | None": st.one_of(st.none(), _tuples),
    "dict": _dicts,
    "dict | None": st.one_of(st.none(), _dicts),
    "Any": _plain,
}


def annotations(cls: type) -> dict[str, str]:
    return {name: cls.ANNOTATIONS[name] for name in cls.FIELDS}


def sample_event(cls: type):
    """A fixed example of an event, for golden files."""
    return cls(**{name: _SAMPLES[kind] for name, kind in annotations(cls).items()})


def sample_envelope(cls: type) -> Envelope:
    """A fixed envelope of an event, caused by job 42 (golden files written before `job` existed have none)."""
    return Envelope(bytes(range(16)), sample_event(cls), "admin", f"golden sample of {cls.__name__}", 1764633600.25,
                    42)


def event_strategy(cls: type):
    """Any event of one class, with arbitrary plain-data values of the annotated kinds."""
    return st.builds(cls, **{name: _STRATEGIES[kind] for name, kind in annotations(cls).items()})


any_event = st.sampled_from(sorted(ev.REGISTRY.values(), key=lambda c: c.TYPE)).flatmap(event_strategy)

envelopes = st.builds(Envelope, st.binary(min_size=16, max_size=16), any_event, st.text(max_size=20),
                      st.text(max_size=60), st.floats(0, 4e9, allow_nan=False), st.integers(0, 2**40))


def golden_name(cls: type, version: int | None = None) -> str:
    return f"{cls.TYPE:04x}-{cls.__name__}-v{version or cls.VERSION}.cbor"
