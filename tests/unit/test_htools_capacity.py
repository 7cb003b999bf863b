"""Capacity planning (`cairn capacity`): hspace's standard-allocation count, failure reason and final score."""

from pathlib import Path

import pytest

from fastpath.capacity import CapacityRequest, plan
from fastpath.htools_text import parse

DATA = Path(__file__).resolve().parents[1] / "data" / "htools"
# X.hspace is `hspace -t X.txt --machine-readable` (Ganeti 3.0.2); X.accept.hspace adds
# --accept-existing-errors. See tests/data/htools/README.md.
STANDARD_KEYS = ("HTS_INI_SCORE", "HTS_INI_INST_CNT", "HTS_FIN_SCORE", "HTS_FIN_INST_CNT", "HTS_ALLOC_INSTANCES",
                 "HTS_ALLOC_FAIL_REASON", "HTS_SPEC_MEM", "HTS_SPEC_DSK", "HTS_SPEC_CPU", "HTS_SPEC_DISK_TEMPLATE",
                 "HTS_CLUSTER_MEM", "HTS_CLUSTER_DSK", "HTS_CLUSTER_CPU", "HTS_CLUSTER_VCPU", "HTS_CLUSTER_NODES",
                 "HTS_OK")


@pytest.fixture(params=["c", "pure"])
def implementation(request):
    """Every test runs against the compiled core and the pure twin."""
    return request.param


def recorded(name: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (DATA / name).read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs}


def planned(text_file: str, implementation: str, **args) -> dict[str, str]:
    cluster = parse((DATA / text_file).read_text())
    return {k: str(v) for k, v in plan(CapacityRequest(cluster, implementation=implementation, **args))}


def test_failure_counts_of_the_last_allocation_equal_hspace(implementation):
    """The per-reason failure counts of the allocation that stopped are hspace's."""
    expected = recorded("example.hspace")
    got = planned("example.txt", implementation)
    keys = [k for k in expected if k.startswith("HTS_ALLOC_FAIL") and k.endswith("_CNT")]
    assert {k: got[k] for k in keys} == {k: expected[k] for k in keys}


def test_existing_n1_failure_stops_allocation(implementation):
    """Without --accept-existing-errors a cluster failing N+1 gets no new instance (FAILN1)."""
    got = planned("n4.txt", implementation)
    assert got["HTS_ALLOC_INSTANCES"] == "0" and got["HTS_ALLOC_FAIL_REASON"] == "FAILN1"


def test_allocation_limit_caps_each_phase(implementation):
    """-l caps the number of allocations."""
    got = planned("example.txt", implementation, max_allocations=7)
    assert got["HTS_ALLOC_INSTANCES"] == "7"


def test_report_ends_with_ok(implementation):
    """The machine-readable report ends with HTS_OK=1, as scripts expect."""
    cluster = parse((DATA / "example.txt").read_text())
    assert plan(CapacityRequest(cluster, implementation=implementation))[-1] == ("HTS_OK", 1)


def report(text_file: str, implementation: str, **args) -> list[str]:
    """The machine-readable report as `cairn capacity --machine-readable` prints it."""
    cluster = parse((DATA / text_file).read_text())
    return [f"{k}={v}" for k, v in plan(CapacityRequest(cluster, implementation=implementation, **args))]


def test_n100_report_equals_hspace():
    """On 100 nodes / 1479 instances with --tiered-alloc the whole report equals hspace's, line for
    line: 4628 instances after the tiered phase, its tiers, the standard count and every figure
    (compiled core only: thousands of allocations are minutes in the pure twin)."""
    expected = (DATA / "n100.accept.tiered-std.hspace").read_text().splitlines()
    assert report("n100.txt", "c", accept_existing_errors=True, tiered_spec=(1024, 10240, 1)) == expected


@pytest.mark.parametrize(("text_file", "answer", "args"), [
    ("example.txt", "example.hspace", {}), ("n4.txt", "n4.hspace", {}),
    ("n4.txt", "n4.accept.hspace", {"accept_existing_errors": True}),
    ("n20-excl.txt", "n20-excl.accept.hspace", {"accept_existing_errors": True}),
    ("gen-4.txt", "gen-4.accept.t10240-1024-1.l10.hspace",
     {"accept_existing_errors": True, "tiered_spec": (1024, 10240, 1), "max_allocations": 10}),
    ("gen-12.txt", "gen-12.accept.l1.hspace", {"accept_existing_errors": True, "max_allocations": 1}),
    ("gen-20.txt", "gen-20.accept.l3.hspace", {"accept_existing_errors": True, "max_allocations": 3}),
    ("gen-25.txt", "gen-25.accept.hspace", {"accept_existing_errors": True})])
def test_report_equals_hspace(implementation, text_file, answer, args):
    """The whole machine-readable report equals hspace's, line for line, tiered phase included
    (gen-*: hspace's -l limit, handed on less everything placed, and the failure counts of the
    attempt after the last placement)."""
    expected = (DATA / answer).read_text().splitlines()
    assert report(text_file, implementation, **args) == expected


def test_initial_resource_figures_equal_hspace_on_n100():
    """The HTS_INI_* resource family on 100 nodes equals hspace's (no allocation needed; the FIN_* family
    and HTS_KM_USED_* are compared in test_n100_capacity_equals_hspace)."""
    from fastpath.capacity import _resource_stats
    expected = recorded("n100.accept.tiered-std.hspace")
    got = {k: str(v) for k, v in _resource_stats(parse((DATA / "n100.txt").read_text()), "INI")}
    assert got == {k: expected[k] for k in got}


def test_a_cluster_without_spindles_prints_hspace_nan_ratios(implementation):
    """Zero spindles (or zero instances) make hspace divide by zero: it prints NaN, and so does Cairn.

    Only the scores differ: hspace's are NaN, Cairn counts a node without spindles as having no
    spindle load (docs/fastpath.md, compatibility notes).
    """
    expected = recorded("zero-spindles.hspace")
    got = planned("zero-spindles.txt", implementation)
    assert got["HTS_INI_SPN_EFF"] == got["HTS_FIN_SPN_EFF"] == got["HTS_ALLOC_USAGE"] == "NaN"
    compared = [k for k in expected if not k.endswith("_SCORE")]
    assert {k: got.get(k) for k in compared} == {k: expected[k] for k in compared}
