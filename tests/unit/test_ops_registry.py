"""Tests of ops/registry.py: every operation has the shape ops/base.py describes."""

import dataclasses
import re

import pytest

from ops import registry
from ops.base import ROLE_RANK

MODULES = sorted(registry.OPERATIONS.items())


@pytest.mark.parametrize(("name", "module"), MODULES)
def test_operation_has_the_four_functions_and_constants(name, module):
    """Each operation has NAME (its registry key), an OPCODE, a frozen Params, claims, check and plan."""
    assert module.NAME == name and re.fullmatch(r"[A-Z]+(_[A-Z]+)*", module.OPCODE)
    assert dataclasses.is_dataclass(module.Params) and module.Params.__dataclass_params__.frozen
    assert all(callable(getattr(module, f)) for f in ("claims", "check", "plan"))
    assert getattr(module, "ROLE", "operator") in ROLE_RANK


def test_only_the_mode_switch_runs_while_drained():
    """Only cluster_mode is exempt from the drained queue (undrain must work)."""
    assert [n for n, m in MODULES if getattr(m, "DRAIN_EXEMPT", False)] == ["cluster_mode"]


def test_unknown_operation_names_the_known_ones():
    """Asking for an unknown operation lists the known names."""
    with pytest.raises(KeyError, match="instance_add"):
        registry.get("instance_explode")
