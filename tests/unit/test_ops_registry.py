"""Tests of ops/registry.py: every operation has the shape ops/base.py describes."""

import dataclasses
import re

import pytest

import types

from ops import base, registry
from ops.base import ROLE_RANK

MODULES = sorted(registry.OPERATIONS.items())


@pytest.mark.parametrize(("name", "module"), MODULES)
def test_operation_has_the_four_functions_and_constants(name, module):
    """Each operation has NAME (its registry key), an OPCODE, a frozen Params, claims, check and plan."""
    assert module.NAME == name and re.fullmatch(r"[A-Z]+(_[A-Z]+)*", module.OPCODE)
    assert dataclasses.is_dataclass(module.Params) and module.Params.__dataclass_params__.frozen
    assert all(callable(getattr(module, f)) for f in ("prepare", "claims", "check", "plan"))
    assert module.ROLE in ROLE_RANK and base.conforms(module) is module


def test_a_module_without_a_constant_is_refused():
    """A misspelt constant fails loudly: conforms names what is missing."""
    broken = types.ModuleType("ops.broken")
    for name in base.OPERATION_MEMBERS:
        setattr(broken, name, getattr(registry.get("instance_startup"), name))
    del broken.DRAIN_EXEMPT
    broken.DRAIN_EXCEMPT = False
    with pytest.raises(TypeError, match="lacks DRAIN_EXEMPT"):
        base.conforms(broken)


def test_a_reference_to_no_field_is_refused():
    """REFERENCES must name Params fields, with a known kind."""
    broken = types.ModuleType("ops.broken")
    for name in base.OPERATION_MEMBERS:
        setattr(broken, name, getattr(registry.get("instance_startup"), name))
    broken.REFERENCES = {"instanse": "instance"}
    with pytest.raises(TypeError, match="instanse"):
        base.conforms(broken)


def test_only_the_mode_switch_and_healing_run_while_drained():
    """cluster_mode is exempt from the drained queue (undrain must work), and so is healing: a node that dies
    while the queue is drained is still fenced and its instances recovered."""
    assert sorted(n for n, m in MODULES if m.DRAIN_EXEMPT) == ["cluster_mode", "instance_recover", "node_fence"]


def test_unknown_operation_names_the_known_ones():
    """Asking for an unknown operation lists the known names."""
    with pytest.raises(KeyError, match="instance_add"):
        registry.get("instance_explode")
