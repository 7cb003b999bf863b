"""The list layout, sizes and texts of appliance.cli.output, checked against what Ganeti 3.0.2 printed.

The expected tables are copied from shared/reference/ganeti-behaviour.md, section 2.
"""

import json

import pytest

from appliance.cli import output as out

INSTANCES = [
    {"name": "st-running.gnt.test", "hypervisor": "fake", "os": "noop+default", "pnode": "node1.gnt.test",
     "status": "running", "oper_state": True, "admin_state": "up", "be/maxmem": 128, "oper_ram": 128,
     "nic.links": ["xen-br0"], "disk_template": "diskless"},
    {"name": "st-admindown.gnt.test", "hypervisor": "fake", "os": "noop+default", "pnode": "node1.gnt.test",
     "status": "ADMIN_down", "oper_state": False, "admin_state": "down", "be/maxmem": 128, "oper_ram": None,
     "nic.links": ["xen-br0"], "disk_template": "diskless"},
    {"name": "st-errorup.gnt.test", "hypervisor": "fake", "os": "noop+default", "pnode": "node1.gnt.test",
     "status": "ERROR_up", "oper_state": True, "admin_state": "down", "be/maxmem": 128, "oper_ram": 128,
     "nic.links": ["xen-br0"], "disk_template": "diskless"},
]
NODE = {"name": "node1.gnt.test", "dtotal": 258019, "dfree": 80758, "mtotal": 24105, "mnode": 313, "mfree": 16345,
        "pinst_cnt": 54, "sinst_cnt": 0, "role": "M", "offline": False, "drained": False}


def instance_table(**kwargs) -> list[str]:
    rows = out.pick("instance", INSTANCES, None)
    return out.table("instance", rows, out.select_fields("instance", kwargs.pop("fields", None)), **kwargs)


def test_the_default_instance_list_is_ganetis():
    """Default columns, nice-sorted rows, padding, right-aligned Memory, `-` for a stopped instance."""
    assert instance_table() == [
        "Instance              Hypervisor OS           Primary_node   Status     Memory",
        "st-admindown.gnt.test fake       noop+default node1.gnt.test ADMIN_down      -",
        "st-errorup.gnt.test   fake       noop+default node1.gnt.test ERROR_up     128M",
        "st-running.gnt.test   fake       noop+default node1.gnt.test running      128M",
    ]


def test_a_separator_joins_cells_unpadded_with_sizes_in_mib():
    """`--separator='|'` with fields in argument order prints bare MiB and Y/N, as Ganeti did."""
    rows = out.pick("instance", INSTANCES, ["st-running.gnt.test", "st-admindown.gnt.test"])
    fields = out.select_fields("instance", "name,status,oper_state,admin_state,pnode,be/maxmem,oper_ram,nic.links,"
                                           "disk_template")
    assert out.table("instance", rows, fields, separator="|") == [
        "Instance|Status|Running|InstanceState|Primary_node|ConfigMaxMem|Memory|NIC_links|Disk_template",
        "st-running.gnt.test|running|Y|up|node1.gnt.test|128|128|xen-br0|diskless",
        "st-admindown.gnt.test|ADMIN_down|N|down|node1.gnt.test|128|-|xen-br0|diskless",
    ]


def test_the_node_list_has_human_sizes_and_right_aligned_numbers():
    """gnt-node list's default columns and sizes (252.0G, 313M), then the leader's view of the node's liveness."""
    assert out.table("node", [{**NODE, "liveness": "suspect"}], out.select_fields("node", None)) == [
        "Node           DTotal DFree MTotal MNode MFree Pinst Sinst Liveness",
        "node1.gnt.test 252.0G 78.9G  23.5G  313M 16.0G    54     0 suspect",
    ]


def test_node_info_says_liveness_with_the_lease_age():
    """`node info` says how the leader sees the node and when its lease was last renewed."""
    lines = out.node_info({**NODE, "liveness": "alive", "lease_age_s": 0.3})
    assert "  liveness: alive (lease renewed 0.3 s ago)" in lines
    assert "  liveness: unknown" in out.node_info(NODE)


def test_units_m_prints_bare_mib():
    """`--units m` prints sizes as bare MiB."""
    assert out.table("node", [{**NODE, "mnode": 314, "liveness": "alive"}], out.select_fields("node", None),
                     units="m") == [
        "Node           DTotal DFree MTotal MNode MFree Pinst Sinst Liveness",
        "node1.gnt.test 258019 80758  24105   314 16345    54     0 alive",
    ]


def test_the_job_list_right_aligns_the_id():
    """gnt-job list: ` ID Status  Summary`, ids right-aligned."""
    jobs = [{"id": 1, "status": "success", "summary": ["CLUSTER_POST_INIT"]},
            {"id": 2, "status": "success", "summary": ["CLUSTER_SET_PARAMS"]},
            {"id": 171, "status": "error", "summary": ["NODE_QUERY_STORAGE"]}]
    assert out.table("job", jobs, out.select_fields("job", None)) == [
        " ID Status  Summary",
        "  1 success CLUSTER_POST_INIT",
        "  2 success CLUSTER_SET_PARAMS",
        "171 error   NODE_QUERY_STORAGE",
    ]


def test_zero_rows_print_the_header_unpadded():
    """With no rows the header is the titles joined by single spaces."""
    assert out.table("instance", [], out.select_fields("instance", None)) == [
        "Instance Hypervisor OS Primary_node Status Memory"]


def test_no_headers_drops_the_header():
    """`--no-headers` prints only the rows."""
    assert instance_table(headers=False)[0].startswith("st-admindown.gnt.test fake")


def test_plus_fields_are_appended_to_the_defaults():
    """`-o +id` keeps the default columns and adds UUID last."""
    assert out.select_fields("instance", "+id") == ["name", "hypervisor", "os", "pnode", "status", "oper_ram", "id"]


def test_an_unknown_field_is_titled_by_its_name_with_question_marks():
    """An unknown field gets its name as title and `??` in every cell, and is reported."""
    fields = ["name", "nosuchfield"]
    lines = out.table("instance", INSTANCES[:1], fields)
    assert lines == ["Instance            nosuchfield", "st-running.gnt.test ??"]
    assert out.unknown_fields("instance", fields) == ["nosuchfield"]


def test_json_rows_are_whole_rows_or_just_the_fields_asked():
    """JSON: the rows as the API gave them, or objects of the -o fields (null for an unknown one)."""
    assert json.loads(out.json_rows("instance", INSTANCES[:1], None)) == INSTANCES[:1]
    assert json.loads(out.json_rows("instance", INSTANCES[:1], ["name", "oper_ram", "nosuch", "disk.count"])) == [
        {"name": "st-running.gnt.test", "oper_ram": 128, "nosuch": None, "disk.count": None}]


@pytest.mark.parametrize(("mib", "units", "text"), [
    (128, "h", "128M"), (1023, "h", "1023M"), (1024, "h", "1.0G"), (24105, "h", "23.5G"), (258019, "h", "252.0G"),
    (1024 * 1024, "h", "1.0T"), (24105, "m", "24105"), (24105, "g", "23.5"), (2 * 1024 * 1024, "t", "2.0"),
])
def test_sizes_print_like_ganeti(mib, units, text):
    """Sizes in MiB print as Ganeti's FormatUnit does."""
    assert out.size_text(mib, units) == text


@pytest.mark.parametrize(("text", "mib"), [
    ("512", 512), ("512M", 512), ("512m", 512), ("10G", 10240), ("1.5g", 1536), ("1T", 1048576), ("2GiB", 2048),
    ("10GB", 10240), ("0.5M", 1),
])
def test_sizes_parse_like_ganeti(text, mib):
    """Bare numbers are MiB; M, G and T (any case, with or without B/iB) multiply; fractions round up."""
    assert out.parse_size(text) == mib


@pytest.mark.parametrize("text", ["lots", "10X", "", "-1G", "1.2.3G"])
def test_a_bad_size_is_refused(text):
    """A size that is not a number with a known suffix is a ValueError saying how to write one."""
    with pytest.raises(ValueError, match="not a valid size"):
        out.parse_size(text)


def test_rows_are_nice_sorted_without_names():
    """inst1, inst2, inst10, inst-b: digit runs compare as numbers."""
    rows = [{"name": n} for n in ("inst10", "inst-b", "inst2", "inst1")]
    assert [r["name"] for r in out.pick("instance", rows, None)] == ["inst1", "inst2", "inst10", "inst-b"]


def test_named_rows_come_in_argument_order_and_an_unknown_name_fails():
    """Names select rows in the order given; a name not listed raises NotFound in Ganeti's words."""
    rows = [{"name": "a"}, {"name": "b"}]
    assert out.pick("node", rows, ["b", "a"]) == [{"name": "b"}, {"name": "a"}]
    with pytest.raises(out.NotFound, match="Node name c not found"):
        out.pick("node", rows, ["a", "c"])


def test_a_prerequisite_failure_reads_like_ganeti():
    """Prerequisite codes give the three-line form with `error type:` that scripts grep."""
    assert out.failure_text("already_exists", "Instance 'x' is already in the cluster") == (
        "Failure: prerequisites not met for this operation:\nerror type: already_exists, error details:\n"
        "Instance 'x' is already in the cluster")


def test_an_execution_failure_reads_like_ganeti():
    """Other failures give Ganeti's command execution error form."""
    assert out.failure_text("execution_error", "the VM did not start") == (
        "Failure: command execution error:\nthe VM did not start")


def test_results_print_texts_and_changes():
    """A text result prints as it is, a dict of changes as ` - key -> value`, nothing for None."""
    assert out.result_lines([None, "done", {"memory_mib": 1024}]) == ["done", " - memory_mib -> 1024"]


def test_yes_no_and_durations_parse():
    """yes/no words and Ganeti-style durations parse; anything else is a ValueError."""
    assert (out.parse_bool("yes"), out.parse_bool("No")) == (True, False)
    assert (out.parse_duration("90"), out.parse_duration("30m"), out.parse_duration("2h")) == (90, 1800, 7200)
    for bad in (lambda: out.parse_bool("maybe"), lambda: out.parse_duration("soon")):
        with pytest.raises(ValueError):
            bad()


def test_cluster_info_lists_the_known_keys_then_the_rest():
    """cluster info prints titled lines for known keys, the modes, then any other key as it came."""
    lines = out.cluster_info({"name": "c1", "master": "node1", "leader": "node1", "term": 3, "seq": 42,
                              "enabled_hypervisors": ["kvm", "fake"], "modes": [], "ipolicy": {"vcpu_ratio": 4}})
    assert lines == ["Cluster name: c1", "Master node: node1", "Raft leader: node1", "Raft term: 3", "Log seq: 42",
                     "Enabled hypervisors: kvm, fake", "Modes: (none)", 'ipolicy: {"vcpu_ratio":4}']
