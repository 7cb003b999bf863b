"""`cairn instance ...` against a fake node: the jobs it submits, what it prints, its exit codes."""

import json

from tests.unit.test_client_support import (  # noqa: F401 (cairn and tls are fixtures)
    Reply, cairn, job_row, tls,
)

ROWS = [
    {"name": "web10", "hypervisor": "kvm", "os": "debian-12", "pnode": "node1", "status": "running",
     "oper_ram": 2048, "be/maxmem": 2048},
    {"name": "web2", "hypervisor": "kvm", "os": "debian-12", "pnode": "node2", "status": "ADMIN_down",
     "oper_ram": None, "be/maxmem": 512},
]


def test_add_submits_instance_add_with_sizes_in_mib_and_follows_the_job(cairn):
    """-t, -n P:S, -o, -B and --disk become instance_add's params; progress goes to stderr, exit 0."""
    bodies = cairn.accept_jobs()
    result = cairn("instance", "add", "-t", "replicated", "-n", "node1:Node2", "-o", "debian-12",
                   "-B", "memory=512M,vcpus=2", "--disk", "1:size=1G", "--disk", "0:size=10G", "--no-start",
                   "--reason", "ticket 42", "Web1")
    assert result.exit_code == 0, result.output
    assert bodies[0]["operations"] == [{"op": "instance_add", "params": {
        "name": "web1", "primary": "node1", "secondary": "node2", "disk_template": "replicated", "os": "debian-12",
        "disks": [10240, 1024], "start": False, "memory_mib": 512, "vcpus": 2}}]
    assert bodies[0]["reason"] == "ticket 42"
    assert "job 1 running" in result.stderr and result.stdout == ""


def test_add_with_no_install_uses_the_noop_os_and_s_gives_one_disk(cairn):
    """--no-install installs the 'noop' OS definition; -s SIZE is a single disk."""
    bodies = cairn.accept_jobs()
    result = cairn("instance", "add", "-t", "file", "-n", "node1", "--no-install", "-s", "2G", "web1")
    assert result.exit_code == 0, result.output
    params = bodies[0]["operations"][0]["params"]
    assert (params["os"], params["disks"], "secondary" in params) == ("noop", [2048], False)


def test_submit_prints_the_job_id_and_does_not_wait(cairn):
    """--submit prints `JobID: N` on stdout and returns 0 without watching."""
    cairn.accept_jobs(first_id=17)
    result = cairn("instance", "startup", "web1", "--submit")
    assert (result.exit_code, result.stdout) == (0, "JobID: 17\n")
    assert not cairn.api.seen("GET", "/api/v1/jobs/17/watch")


def test_a_bad_size_is_a_parameter_error(cairn):
    """-B memory=lots fails before anything is sent, in Ganeti's words, exit 1."""
    result = cairn("instance", "add", "-t", "file", "-n", "node1", "-o", "x", "-B", "memory=lots", "web1")
    assert result.exit_code == 1
    assert result.stderr.startswith("Parameter Error: 'memory' (value lots) is not a valid size")
    assert not cairn.api.requests


def test_an_unknown_backend_parameter_is_refused(cairn):
    """-B with a key cairn does not know is a parameter error naming it."""
    result = cairn("instance", "add", "-t", "file", "-n", "node1", "-o", "x", "-B", "spindle_use=1", "web1")
    assert result.exit_code == 1 and "Unknown parameter 'spindle_use'" in result.stderr


def test_a_failed_prerequisite_prints_ganetis_text_and_exits_1(cairn):
    """A job that fails a prerequisite prints the `error type:` form on stderr and exits 1."""
    cairn.accept_jobs(rows={1: job_row(1, "error", error_code="already_exists",
                                       error_message="Instance 'web1' is already in the cluster")})
    result = cairn("instance", "add", "-t", "diskless", "-n", "node1", "-o", "noop", "web1")
    assert result.exit_code == 1
    assert ("Failure: prerequisites not met for this operation:\nerror type: already_exists, error details:\n"
            "Instance 'web1' is already in the cluster") in result.stderr


def test_an_execution_error_prints_the_command_execution_form(cairn):
    """A job that fails while running prints `Failure: command execution error:` and exits 1."""
    cairn.accept_jobs(rows={1: job_row(1, "error", error_code="execution_error", error_message="VM did not start")})
    result = cairn("instance", "startup", "web1")
    assert result.exit_code == 1
    assert "Failure: command execution error:\nVM did not start" in result.stderr


def test_shutdown_reboot_migrate_failover_rename_send_their_params(cairn):
    """Each command sends its operation with only the parameters given."""
    bodies = cairn.accept_jobs()
    for args in (["shutdown", "web1", "--timeout", "30"], ["reboot", "web1", "--type", "soft"],
                 ["migrate", "web1", "--allow-failover"], ["failover", "web1"], ["rename", "web1", "web9"],
                 ["remove", "web1", "-f"]):
        result = cairn("instance", *args)
        assert result.exit_code == 0, result.output
    assert [b["operations"][0] for b in bodies] == [
        {"op": "instance_shutdown", "params": {"instance": "web1", "timeout_s": 30}},
        {"op": "instance_reboot", "params": {"instance": "web1", "reboot_type": "soft"}},
        {"op": "instance_migrate", "params": {"instance": "web1", "allow_failover": True}},
        {"op": "instance_failover", "params": {"instance": "web1"}},
        {"op": "instance_rename", "params": {"instance": "web1", "new_name": "web9"}},
        {"op": "instance_remove", "params": {"instance": "web1"}},
    ]


def test_remove_without_force_and_without_a_terminal_says_how_to_confirm(cairn):
    """remove asks first; with no terminal to ask on it says to give -f, and submits nothing."""
    result = cairn("instance", "remove", "web1")
    assert result.exit_code == 1 and "--force" in result.stderr and not cairn.api.requests


def test_modify_sends_the_changes(cairn):
    """-B, --disk add/grow and --net become instance_modify's fields."""
    bodies = cairn.accept_jobs()
    result = cairn("instance", "modify", "web1", "-B", "memory=1G", "--disk", "add:size=5G", "--disk", "0:size=20G",
                   "--net", "add:link=br1", "--net", "1:remove")
    assert result.exit_code == 0, result.output
    assert bodies[0]["operations"][0]["params"] == {
        "instance": "web1", "memory_mib": 1024, "disk_add": [5120], "disk_grow": [[0, 20480]],
        "nic_add": [{"link": "br1"}], "nic_remove": [1]}


def test_modify_without_changes_is_refused(cairn):
    """modify with nothing to change is a parameter error, nothing is sent."""
    result = cairn("instance", "modify", "web1")
    assert result.exit_code == 1 and "nothing to change" in result.stderr and not cairn.api.requests


def test_list_prints_ganetis_table(cairn):
    """The default list, nice-sorted, from GET /api/v1/instances."""
    cairn.api.routes[("GET", "/api/v1/instances")] = Reply(200, ROWS)
    result = cairn("instance", "list")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "Instance Hypervisor OS        Primary_node Status     Memory",
        "web2     kvm        debian-12 node2        ADMIN_down      -",
        "web10    kvm        debian-12 node1        running      2.0G",
    ]


def test_list_with_names_keeps_their_order_and_asks_for_them(cairn):
    """Names select rows in argument order and go to the API as names=."""
    cairn.api.routes[("GET", "/api/v1/instances")] = Reply(200, ROWS)
    result = cairn("instance", "list", "--no-headers", "-o", "name", "web10", "web2")
    assert result.stdout.splitlines() == ["web10", "web2"]
    assert cairn.api.requests[0].query == {"names": "web10,web2"}


def test_list_of_an_unknown_name_fails_like_ganeti(cairn):
    """A name the cluster does not list fails with unknown_entity, exit 1."""
    cairn.api.routes[("GET", "/api/v1/instances")] = Reply(200, ROWS)
    result = cairn("instance", "list", "nosuch")
    assert result.exit_code == 1
    assert "error type: unknown_entity, error details:\nInstance name nosuch not found" in result.stderr


def test_list_with_an_unknown_field_warns_and_exits_14(cairn):
    """An unknown field: ?? in the table, Ganeti's warning on stderr, exit 14."""
    cairn.api.routes[("GET", "/api/v1/instances")] = Reply(200, ROWS[:1])
    result = cairn("instance", "list", "-o", "name,nosuchfield")
    assert result.exit_code == 14
    assert result.stdout.splitlines() == ["Instance nosuchfield", "web10    ??"]
    assert "Warning: Queried for unknown fields nosuchfield" in result.stderr


def test_list_json_is_an_array_of_rows_and_stale_asks_for_stale(cairn):
    """--output json prints the rows; --stale adds stale=1."""
    cairn.api.routes[("GET", "/api/v1/instances")] = Reply(200, ROWS)
    result = cairn("instance", "list", "--output", "json", "-o", "name,status", "--stale")
    assert json.loads(result.stdout) == [{"name": "web2", "status": "ADMIN_down"},
                                         {"name": "web10", "status": "running"}]
    assert cairn.api.requests[0].query == {"stale": "1"}


def test_info_json_is_the_row_and_text_is_ganetis_dump(cairn):
    """info --output json prints the row as one object; text starts with `- Instance name:`."""
    cairn.api.routes[("GET", "/api/v1/instances/web10")] = Reply(200, ROWS[0])
    assert json.loads(cairn("instance", "info", "web10", "--output", "json").stdout) == ROWS[0]
    text = cairn("instance", "info", "web10").stdout
    assert text.startswith("- Instance name: web10\n") and "    maxmem: 2.0G" in text


def test_info_of_an_unknown_instance_fails_with_the_clusters_words(cairn):
    """A 404 unknown_entity answer prints Ganeti's failure text and exits 1."""
    cairn.api.routes[("GET", "/api/v1/instances/nosuch")] = Reply(404, {"error": "unknown_entity",
                                                                        "message": "Instance 'nosuch' not known"})
    result = cairn("instance", "info", "nosuch")
    assert result.exit_code == 1 and "error type: unknown_entity" in result.stderr


def test_add_with_iallocator_sends_it_instead_of_nodes(cairn):
    """-I hail goes to instance_add as its iallocator, with no nodes; the allocator chooses when the job is planned."""
    bodies = cairn.accept_jobs()
    result = cairn("instance", "add", "-t", "replicated", "-I", "hail", "-o", "debian-12", "-s", "1G", "web1")
    assert result.exit_code == 0, result.output
    params = bodies[0]["operations"][0]["params"]
    assert params["iallocator"] == "hail" and "primary" not in params and "secondary" not in params


def test_add_refuses_iallocator_with_nodes_and_neither(cairn):
    """-I with -n, or neither, is a parameter error before anything is sent."""
    both = cairn("instance", "add", "-t", "file", "-n", "node1", "-I", "hail", "-o", "x", "web1")
    neither = cairn("instance", "add", "-t", "file", "-o", "x", "web1")
    assert both.exit_code == 1 and "give either -n PRIMARY[:SECONDARY] or -I hail, not both" in both.stderr
    assert neither.exit_code == 1 and "-I hail to let the allocator choose" in neither.stderr
    assert not cairn.api.requests


def test_replace_disks_sends_the_new_secondary_or_the_allocator(cairn):
    """replace-disks -n NODE and -I hail become instance_replace_disks params; one of the two is required."""
    bodies = cairn.accept_jobs()
    assert cairn("instance", "replace-disks", "-n", "Node3", "web1").exit_code == 0
    assert cairn("instance", "replace-disks", "-I", "hail", "web1").exit_code == 0
    assert [b["operations"] for b in bodies] == [
        [{"op": "instance_replace_disks", "params": {"instance": "web1", "node": "node3"}}],
        [{"op": "instance_replace_disks", "params": {"instance": "web1", "iallocator": "hail"}}]]
    result = cairn("instance", "replace-disks", "web1")
    assert result.exit_code == 1 and "give the new secondary with -n NODE, or -I hail" in result.stderr


def test_add_takes_nics_as_ganeti_does(cairn):
    """--net N:link=...,mode=...,mac=... gives the NICs in index order; --no-nics none; both, a gap or an
    unknown key are parameter errors."""
    bodies = cairn.accept_jobs()
    result = cairn("instance", "add", "-t", "diskless", "-n", "node1", "--no-install", "--net", "1:link=br1",
                   "--net", "0:link=br0,mac=aa:00:00:00:00:01", "web1")
    assert result.exit_code == 0, result.output
    assert bodies[0]["operations"][0]["params"]["nics"] == [
        {"mode": "bridged", "mac": "aa:00:00:00:00:01", "link": "br0"}, {"mode": "bridged", "mac": "", "link": "br1"}]
    result = cairn("instance", "add", "-t", "diskless", "-n", "node1", "--no-install", "--no-nics", "web2")
    assert result.exit_code == 0, result.output
    assert bodies[1]["operations"][0]["params"]["nics"] == []
    for bad, why in ((["--no-nics", "--net", "0:link=br0"], "not both"), (["--net", "1:link=br0"], "without gaps"),
                     (["--net", "0:bridge=br0"], "is not N:link=BRIDGE")):
        result = cairn("instance", "add", "-t", "diskless", "-n", "node1", "--no-install", *bad, "web3")
        assert result.exit_code == 1 and why in result.stderr, result.output
