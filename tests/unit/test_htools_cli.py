"""The placement CLI: `cairn balance -t`, `cairn capacity -t` and their files and errors."""

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from appliance.cli import app
from fastpath.htools_text import parse

DATA = Path(__file__).resolve().parents[1] / "data" / "htools"
# The first bytes of an ELF program (as /bin/ls begins) and every byte value: not UTF-8, and with NULs.
BINARY = b"\x7fELF\x02\x01\x01\x00" + bytes(range(256))
runner = CliRunner()


def test_balance_prints_what_hbal_printed():
    """`cairn balance -t FILE` prints hbal's lines for the same file (recorded in example.hbal)."""
    result = runner.invoke(app, ["balance", "-t", str(DATA / "example.txt")])
    assert result.exit_code == 0
    assert result.output == (DATA / "example.hbal").read_text()


def test_balance_options_reach_the_engine():
    """hbal's options (-O, --evac-mode) give hbal's recorded output."""
    result = runner.invoke(app, ["balance", "-t", str(DATA / "n4.txt"), "-O", "node-0001", "--evac-mode"])
    assert result.output == (DATA / "n4.evac.hbal").read_text()


def test_save_writes_original_and_balanced(tmp_path):
    """-S PREFIX writes PREFIX.original (the input) and PREFIX.balanced (the solution, reloadable)."""
    prefix = tmp_path / "out"
    runner.invoke(app, ["balance", "-t", str(DATA / "example.txt"), "-S", str(prefix)])
    assert (tmp_path / "out.original").read_text() == (DATA / "example.txt").read_text()
    balanced = parse((tmp_path / "out.balanced").read_text())
    assert {i.name: (i.pnode, i.snode) for i in balanced.instances}["web1"] == ("delta", "charlie")


def test_save_with_forthcoming_instances_equals_hbal(tmp_path):
    """-S writes what hbal -S writes when forthcoming instances move (their new nodes, no real
    disk taken); before, every forthcoming instance was saved on the last node."""
    prefix = tmp_path / "out"
    runner.invoke(app, ["balance", "-t", str(DATA / "n20-forth.txt"), "-l", "20", "-S", str(prefix)])
    assert (tmp_path / "out.balanced").read_text() == (DATA / "n20-forth.l20.balanced").read_text()


def test_multi_group_file_needs_a_group():
    """A file with several groups and no -G fails like hbal, naming the groups."""
    result = runner.invoke(app, ["balance", "-t", str(DATA / "n20-groups-locations.txt")])
    assert result.exit_code == 1 and "Found multiple node groups" in result.output


def test_balance_without_file_says_what_to_do(tmp_path):
    """Without -t and with no cluster to talk to, the command says to give one or a file."""
    result = runner.invoke(app, ["balance", "--config", str(tmp_path / "none.toml")])
    assert result.exit_code == 1 and "-t FILE" in result.output


def test_capacity_machine_readable_ends_ok():
    """`cairn capacity --machine-readable` prints HTS_* lines ending in HTS_OK=1."""
    result = runner.invoke(app, ["capacity", "-t", str(DATA / "example.txt"), "--machine-readable"])
    lines = result.output.splitlines()
    assert lines[-1] == "HTS_OK=1" and "HTS_ALLOC_INSTANCES=145" in lines


def test_capacity_tiered_alloc_matches_hspace_tiers():
    """--tiered-alloc starts the tiered phase at the given spec, as hspace does (recorded for n20)."""
    result = runner.invoke(app, ["capacity", "-t", str(DATA / "n20.txt"), "--machine-readable",
                                 "--accept-existing-errors", "--tiered-alloc", "10240,1024,1"])
    # hspace -t n20.txt --machine-readable --accept-existing-errors --tiered-alloc 10240,1024,1 printed these.
    assert "HTS_TSPEC='1024,10240,1,1=414 960,10240,1,1=5 896,10240,1,1=1'" in result.output
    assert "HTS_ALLOC_INSTANCES=414" in result.output


def test_lean_path_prints_what_the_typer_command_prints(capsys):
    """The lean command-line path gives the typer command's output for the same options."""
    from appliance.cli.placement import lean_main

    args = ["balance", "-t", str(DATA / "n4.txt"), "-O", "node-0001", "--evac-mode"]
    assert lean_main(args) == 0
    assert capsys.readouterr().out == runner.invoke(app, args).output


def test_lean_path_leaves_help_and_bad_options_to_typer():
    """--help, unknown options, missing values and bad numbers go to typer (None), which explains them."""
    from appliance.cli.placement import lean_main

    for args in (["balance", "--help"], ["balance", "--bogus"], ["balance", "-t"], ["balance", "-l", "x"],
                 ["iallocator"], ["iallocator", "a.json", "b.json"], ["events", "verify"]):
        assert lean_main(args) is None, args
    assert "No such option: --bogus" in runner.invoke(app, ["balance", "--bogus"]).output


def test_lean_path_reports_errors_like_the_command(capsys):
    """A failing lean run prints the command's error text on stderr and exits 1."""
    from appliance.cli.placement import lean_main

    assert lean_main(["balance", "--config", "/nonexistent/client.toml"]) == 1
    assert "give a cluster file with -t FILE" in capsys.readouterr().err


def test_what_the_engines_cannot_hold_is_a_clear_error(tmp_path, capsys):
    """More distinct exclusion tags than the engines count (4096): each placement command names the
    limit and the fix and exits 1, without a traceback."""
    from appliance.cli.placement import lean_main
    from fastpath.htools_text import parse
    from fastpath.iallocator import request_document

    lines = []
    for k, line in enumerate((DATA / "n20.txt").read_text().splitlines()):
        fields = line.split("|")
        if line.startswith("inst-"):  # 199 x 21 distinct values under the cluster's htools:iextags:service
            fields[9] = ",".join(f"service:t{k}-{j}" for j in range(21))
        lines.append("|".join(fields))
    text = tmp_path / "tags.txt"
    text.write_text("\n".join(lines))
    request = tmp_path / "tags.json"
    request.write_text(json.dumps(request_document(parse(text.read_text()), {
        "type": "allocate", "name": "new", "required_nodes": 1, "disk_template": "plain", "memory": 512,
        "vcpus": 1, "disk_space_total": 1024, "disks": [{"size": 1024}], "nics": [], "tags": [], "spindle_use": 1})))
    for argv in (["balance", "-t", str(text)], ["capacity", "-t", str(text)], ["iallocator", str(request)]):
        assert lean_main(argv) == 1
        assert "more than 4096 distinct exclusion tags; use fewer distinct values or shorter prefixes" in \
            capsys.readouterr().err


def test_more_location_tags_than_the_engines_hold_is_a_clear_error(tmp_path, capsys):
    """More distinct location tags than the engines count (4096): `cairn balance` names the limit
    and the fix and exits 1, without a traceback."""
    from appliance.cli.placement import lean_main

    lines = []
    for k, line in enumerate((DATA / "n20.txt").read_text().splitlines()):
        fields = line.split("|")
        if line.startswith("node-"):  # 20 x 205 distinct values under htools:nlocation:rack
            fields[10] = ",".join(f"rack:r{k}-{j}" for j in range(205))
        lines.append(line if line.startswith("htools:iextags") else "|".join(fields))
        if line.startswith("htools:iextags"):
            lines.append("htools:nlocation:rack")
    text = tmp_path / "racks.txt"
    text.write_text("\n".join(lines))
    assert lean_main(["balance", "-t", str(text)]) == 1
    assert "more than 4096 distinct location tags; use fewer distinct values or shorter prefixes" in \
        capsys.readouterr().err


def test_placement_commands_do_not_import_typer():
    """`cairn balance` as a process never imports typer, the model, re, enum or collections beyond
    what Python's start-up loaded (it starts about as fast as Python; re and enum alone cost ~8 ms,
    collections ~1.3 ms)."""
    code = ("import sys; sys.argv = ['cairn', 'balance', '-t', sys.argv[1], '-l', '1']\n"
            "before = set(sys.modules)\n"
            "from appliance.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in set(sys.modules) - before if m.split('.')[0] in "
            "('typer', 'click', 'pydantic', 're', 'enum', 'collections') or m.startswith('appliance.model')]\n"
            "print('HEAVY', heavy)")
    result = subprocess.run([sys.executable, "-c", code, str(DATA / "n4.txt")], capture_output=True, text=True,
                            timeout=60)
    assert result.stdout.splitlines()[-1] == "HEAVY []"


def _hbal_commands(text: str) -> list[tuple[int, list[str]]]:
    """(jobset, commands) of each job, in order, from hbal -C's "Commands to run" section."""
    jobs, jobset = [], 0
    for line in text.split("Commands to run to reach the above solution:")[1].splitlines():
        words = line.split()
        if words[:2] == ["echo", "jobset"]:
            jobset = int(words[2].rstrip(","))
        elif words[:2] == ["echo", "job"]:
            jobs.append((jobset, []))
        elif words:
            jobs[-1][1].append(" ".join(words))
    return jobs


def test_balance_json_has_hbal_moves_jobsets_and_commands():
    """`cairn balance --output json` gives, per move, what hbal -C printed for the same file
    (n20.commands.hbal): the instance, old and new nodes, the score, the move code, its jobset
    and its gnt-instance commands; plus the initial check and both scores."""
    import json

    recorded = (DATA / "n20.commands.hbal").read_text()
    result = runner.invoke(app, ["balance", "-t", str(DATA / "n20.txt"), "--output", "json"])
    assert result.exit_code == 0
    report = json.loads(result.output)
    lines = [line.split() for line in recorded.splitlines() if line.split(".")[0].strip().isdigit()]
    moves = report["moves"]
    assert [(m["instance"], ":".join(m["from"]), ":".join(m["to"]), f"{m['score']:.8f}", "a=" + m["move"])
            for m in moves] == [(w[1], w[2], w[4], w[5], " ".join(w[6:])) for w in lines]
    assert [(m["jobset"], m["commands"]) for m in moves] == _hbal_commands(recorded)
    assert f"Initial score: {report['initial_score']:.8f}" in recorded
    assert f"to {report['final_score']:.8f}" in recorded
    assert (report["outcome"], report["nodes"], report["instances"]) == ("improved", 20, 199)
    assert (len(report["n1_bad_nodes"]), report["n1_bad_instances"]) == (6, 98)


def test_balance_json_outcomes_and_bad_output():
    """An empty cluster and a cluster with nothing to gain say so in JSON; an unknown --output
    value is refused, naming the choices."""
    import json

    empty = json.loads(runner.invoke(app, ["balance", "-t", str(DATA / "empty.txt"), "--output", "json"]).output)
    assert (empty["outcome"], empty["moves"]) == ("empty", [])
    recorded = (DATA / "example.e10.hbal").read_text()  # hbal -e 10: already well balanced
    done = json.loads(runner.invoke(app, ["balance", "-t", str(DATA / "example.txt"), "-e", "10",
                                          "--output", "json"]).output)
    assert "already well balanced" in recorded and (done["outcome"], done["moves"]) == ("balanced", [])
    bad = runner.invoke(app, ["balance", "-t", str(DATA / "example.txt"), "--output", "yaml"])
    assert bad.exit_code == 1 and "unknown --output 'yaml'; use text or json" in bad.output


def test_capacity_json_has_every_hts_key_with_its_value():
    """`cairn capacity --output json` carries the --machine-readable keys and values, numbers as
    numbers; asking for both layouts is refused."""
    import json

    args = ["capacity", "-t", str(DATA / "example.txt")]
    lines = runner.invoke(app, args + ["--machine-readable"]).output.splitlines()
    report = json.loads(runner.invoke(app, args + ["--output", "json"]).output)
    pairs = [line.split("=", 1) for line in lines]
    assert list(report) == [key for key, _ in pairs]
    assert all(str(report[key]) == text if isinstance(report[key], (int, str)) else report[key] == float(text)
               for key, text in pairs)
    assert isinstance(report["HTS_INI_SCORE"], float) and isinstance(report["HTS_SPEC_DISK_TEMPLATE"], str)
    assert report["HTS_ALLOC_INSTANCES"] == 145 and report["HTS_OK"] == 1
    both = runner.invoke(app, args + ["--machine-readable", "--output", "json"])
    assert both.exit_code == 1 and "give one" in both.output


def test_balance_reads_hbal_utilisation_file():
    """-U FILE gives what hbal -U printed for the same files (n20.dynu.no-disk-moves.hbal); a
    missing file is named."""
    args = ["balance", "-t", str(DATA / "n20.txt"), "-U", str(DATA / "n20.dynu"), "--no-disk-moves", "-l", "10"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0
    assert result.output == (DATA / "n20.dynu.no-disk-moves.hbal").read_text()
    missing = runner.invoke(app, ["balance", "-t", str(DATA / "n20.txt"), "-U", str(DATA / "no-such.dynu")])
    assert missing.exit_code == 1 and "cannot read" in missing.output and "no-such.dynu" in missing.output


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`cairn balance ... | head -1`: when the reader has closed the pipe the command exits 1
    without a traceback on stderr."""
    import os

    cairn = Path(sys.executable).parent / "cairn"
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written
    try:
        writer = subprocess.run([str(cairn), "balance", "-t", str(DATA / "n20.txt"), "-C"], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert writer.returncode == 1 and writer.stderr == ""


def test_binary_cluster_file_is_a_clear_error(tmp_path, capsys):
    """A binary file given with -t makes balance and capacity name it, say what to give instead and
    exit 1, without a traceback."""
    from appliance.cli.placement import lean_main

    binary = tmp_path / "ls"
    binary.write_bytes(BINARY)
    for command in ("balance", "capacity"):
        assert lean_main([command, "-t", str(binary)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"cairn: '{binary}' is not a text cluster file: byte 136 is not UTF-8 text;")
        assert "give a file written by Ganeti's hscan or hbal -S" in err and "Traceback" not in err


def test_binary_cluster_file_is_a_clear_error_on_the_typer_path(tmp_path):
    """The typer command reports a binary -t file as the lean path does."""
    binary = tmp_path / "ls"
    binary.write_bytes(BINARY)
    result = runner.invoke(app, ["capacity", "-t", str(binary)])
    assert result.exit_code == 1 and f"'{binary}' is not a text cluster file" in result.output
    assert isinstance(result.exception, SystemExit)


def test_utf8_file_with_nuls_is_not_a_cluster_file(tmp_path, capsys):
    """A file of NULs (valid UTF-8, but no text) is refused the same way, with where the first NUL is."""
    from appliance.cli.placement import lean_main

    zeros = tmp_path / "zeros"
    zeros.write_bytes(b"group|uuid\x00" + bytes(64))
    assert lean_main(["balance", "-t", str(zeros)]) == 1
    assert f"'{zeros}' is not a text cluster file: byte 10 is a NUL" in capsys.readouterr().err


def test_binary_utilisation_file_is_a_clear_error(tmp_path, capsys):
    """A binary file given with -U is named as a utilisation file, with the line format to give."""
    from appliance.cli.placement import lean_main

    binary = tmp_path / "ls"
    binary.write_bytes(BINARY)
    assert lean_main(["balance", "-t", str(DATA / "n4.txt"), "-U", str(binary)]) == 1
    err = capsys.readouterr().err
    assert f"'{binary}' is not a text utilisation file" in err and "'instance cpu mem disk net'" in err


def test_cairn_balance_on_a_binary_file_prints_no_traceback(tmp_path):
    """`cairn balance -t` on a binary file, as a process: one line on stderr, exit 1."""
    binary = tmp_path / "ls"
    binary.write_bytes(BINARY)
    cairn = Path(sys.executable).with_name("cairn")
    result = subprocess.run([str(cairn), "balance", "-t", str(binary)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("cairn: ") and len(result.stderr.splitlines()) == 1


# --- the live cluster (no -t): its htools text from the API ----------------------------

from tests.unit.test_client_support import Reply, cairn, job_row, tls  # noqa: E402,F401 (cairn and tls are fixtures)


def unbalanced_text() -> str:
    """The htools text appliance.allocator writes for a four-node cluster with every instance on n1/n2."""
    from appliance import allocator
    from tests.unit.test_allocator import four_nodes
    from tests.unit.test_ops_support import add

    box = four_nodes()
    for number in range(6):
        add(box, f"web{number}.example.com", memory_mib=1024, disks=(4096,))
    return allocator.htools_text(box.state)


def test_live_balance_equals_balance_of_the_same_text_in_a_file(cairn, tmp_path):
    """Without -t, balance reads the cluster's htools text from the API and prints what -t FILE prints for it."""
    text = unbalanced_text()
    cairn.api.routes[("GET", "/api/v1/cluster/htools")] = Reply(200, {"text": text, "seq": 9})
    path = tmp_path / "cluster.txt"
    path.write_text(text)
    live = cairn("balance", "-C")
    from_file = cairn("balance", "-C", "-t", str(path), api=False)
    assert live.exit_code == 0 and from_file.exit_code == 0, live.output + from_file.output
    assert live.stdout == from_file.stdout and "Cluster score improved" in live.stdout


def test_live_capacity_equals_capacity_of_the_same_text_in_a_file(cairn, tmp_path):
    """Without -t, capacity plans on the cluster's htools text, as -t FILE does on it."""
    text = unbalanced_text()
    cairn.api.routes[("GET", "/api/v1/cluster/htools")] = Reply(200, {"text": text, "seq": 9})
    path = tmp_path / "cluster.txt"
    path.write_text(text)
    live = cairn("capacity", "--machine-readable")
    assert live.exit_code == 0, live.output
    assert live.stdout == cairn("capacity", "--machine-readable", "-t", str(path), api=False).stdout


def test_balance_x_submits_each_jobset_and_prints_the_job_ids(cairn):
    """-X submits one job per move (migrate for f, replace-disks for r:NODE), jobset by jobset, like hbal -X."""
    text = unbalanced_text()
    cairn.api.routes[("GET", "/api/v1/cluster/htools")] = Reply(200, {"text": text, "seq": 9})
    bodies = cairn.accept_jobs()
    for job_id in range(1, 21):
        cairn.api.routes[("GET", f"/api/v1/jobs/{job_id}/wait")] = Reply(200, job_row(job_id))
    report = json.loads(cairn("balance", "--output", "json").stdout)
    result = cairn("balance", "-X")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    jobsets = sorted({move["jobset"] for move in report["moves"]})
    assert sum(line.startswith("Executing jobset for instances ") for line in lines) == len(jobsets)
    assert sum(line.startswith("Got job IDs ") for line in lines) == len(jobsets)
    assert len(bodies) == len(report["moves"])
    first = report["moves"][0]
    expected = []
    for part in first["move"].split():
        expected.append({"op": "instance_migrate", "params": {"instance": first["instance"], "allow_failover": True}}
                        if part == "f" else
                        {"op": "instance_replace_disks", "params": {"instance": first["instance"], "node": part[2:]}})
    assert bodies[0]["operations"] == expected and bodies[0]["reason"] == "cairn balance -X"


def test_balance_x_stops_after_a_failed_jobset(cairn):
    """A failed job stops -X before the next jobset, exit 1, naming the job."""
    cairn.api.routes[("GET", "/api/v1/cluster/htools")] = Reply(200, {"text": unbalanced_text(), "seq": 9})
    bodies = cairn.accept_jobs()
    for job_id in range(1, 21):
        cairn.api.routes[("GET", f"/api/v1/jobs/{job_id}/wait")] = Reply(
            200, job_row(job_id, "error", error_code="wrong_state", error_message="node gone"))
    result = cairn("balance", "-X")
    assert result.exit_code == 1 and "job 1 (" in result.stderr and "node gone" in result.stderr
    assert result.stdout.count("Executing jobset") == 1 and bodies


def test_balance_x_refuses_a_file(tmp_path):
    """-X runs jobs on the live cluster: with -t FILE it is refused, saying so."""
    path = tmp_path / "c.txt"
    path.write_text(unbalanced_text())
    result = runner.invoke(app, ["balance", "-X", "-t", str(path)])
    assert result.exit_code == 1 and "-X executes the moves on the live cluster; leave out -t FILE" in result.output
