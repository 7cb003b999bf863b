"""Tests of Ganeti OS definitions: finding and checking them, the environment their scripts get, running them
(logs, failures, timeouts, import and export streams), and the `cairn os` commands that show them.

The definitions are written here: shell scripts that record their environment, arguments and working directory.
"""

import json
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from appliance.cli.os import app as os_app
from images import osdef
from images.osdef import Disk, Instance, Nic, OsError, OsInvalid, OsNotFound, ScriptFailed

RECORD = """#!/bin/sh
env > "{out}/{kind}.env"
echo "$@" > "{out}/{kind}.args"
pwd > "{out}/{kind}.cwd"
"""


def make_os(root: Path, name: str = "recorder", api: str = "20\n15\n10\n", variants: str | None = "default\nbig\n",
            parameters: str | None = "dhcp Whether to use DHCP\nroot_size\tThe root size in GiB\n",
            scripts: dict[str, str] | None = None, out: Path | None = None) -> Path:
    """An OS definition directory under `root` whose scripts record what they were given into `out`."""
    directory = root / name
    directory.mkdir(parents=True)
    out = out or root / "out"
    out.mkdir(exist_ok=True)
    (directory / "ganeti_api_version").write_text(api)
    if variants is not None:
        (directory / "variants.list").write_text(variants)
    if parameters is not None:
        (directory / "parameters.list").write_text(parameters)
    for kind in osdef.SCRIPTS:
        script = directory / kind
        script.write_text((scripts or {}).get(kind, RECORD).format(out=out, kind=kind))
        script.chmod(0o755)
    return directory


def recorded(out: Path, kind: str) -> dict[str, str]:
    """The environment a recording script saw, without what the shell itself adds."""
    lines = (out / f"{kind}.env").read_text().splitlines()
    environment = dict(line.split("=", 1) for line in lines)
    for added in ("PWD", "OLDPWD", "SHLVL", "_"):
        environment.pop(added, None)
    return environment


def instance(**changes) -> Instance:
    fields = {"name": "web1.example.org", "os": "recorder+big", "hypervisor": "kvm",
              "disks": (Disk("/data/i1/disk0.raw", uuid="d-0"), Disk("/data/i1/disk1.raw", access="ro", name="logs")),
              "nics": (Nic("aa:00:00:11:22:33", ip="192.0.2.10", mode="bridged", link="br0", uuid="n-0"),
                       Nic("aa:00:00:44:55:66", mode="routed", link="100")),
              "os_parameters": {"dhcp": "yes"}, "hvparams": {"disk_type": "paravirtual", "nic_type": "e1000"},
              "beparams": {"maxmem": 512, "vcpus": 2}, "uuid": "i-1", "primary_node": "node1",
              "secondary_nodes": ("node2",)}
    fields.update(changes)
    return Instance(**fields)


@pytest.fixture
def search(tmp_path) -> tuple[Path, ...]:
    """A one-directory search path holding the recording definition."""
    make_os(tmp_path / "os")
    return (tmp_path / "os",)


# -- loading and checking


def test_a_definition_reads_its_versions_variants_and_parameters(tmp_path):
    """load reads the API versions, the variants and the parameters with their descriptions."""
    definition = osdef.load(make_os(tmp_path, variants="# ours\ndefault\n\nbig\n"))
    assert definition.api_versions == (20, 15, 10) and definition.api_version == 20
    assert definition.variants == ("default", "big")
    assert definition.parameters == (("dhcp", "Whether to use DHCP"), ("root_size", "The root size in GiB"))
    assert definition.full_names == ("recorder+default", "recorder+big")


def test_a_missing_script_is_named(tmp_path):
    """A definition without its rename script is invalid, and the message names the file."""
    directory = make_os(tmp_path)
    (directory / "rename").unlink()
    with pytest.raises(OsInvalid, match="'rename' is missing"):
        osdef.load(directory)


def test_a_script_that_is_not_executable_is_named(tmp_path):
    """A create script without the execute bit is invalid, and the message says to chmod it."""
    directory = make_os(tmp_path)
    (directory / "create").chmod(0o644)
    with pytest.raises(OsInvalid, match="'create' is not executable; chmod \\+x it"):
        osdef.load(directory)


def test_unsupported_api_versions_are_refused(tmp_path):
    """A definition speaking only API 5 is invalid, naming what Cairn speaks."""
    with pytest.raises(OsInvalid, match=r"API versions \[5\] are not supported; Cairn runs scripts of API 20, 15, 10"):
        osdef.load(make_os(tmp_path, api="5\n"))


def test_an_api_file_that_is_not_numbers_is_refused(tmp_path):
    """An API version file holding words is invalid."""
    with pytest.raises(OsInvalid, match="must hold whole numbers"):
        osdef.load(make_os(tmp_path, api="twenty\n"))


def test_api_20_needs_parameters_list(tmp_path):
    """From API 20 on, parameters.list is required."""
    with pytest.raises(OsInvalid, match="'parameters.list' is missing"):
        osdef.load(make_os(tmp_path, parameters=None))


def test_api_15_needs_neither_verify_nor_parameters(tmp_path):
    """An API 15 definition loads without a verify script or parameters.list, and without variants.list."""
    directory = make_os(tmp_path, api="15\n", variants=None, parameters=None)
    (directory / "verify").unlink()
    definition = osdef.load(directory)
    assert definition.api_version == 15 and definition.variants == () and definition.parameters == ()


def test_api_10_ignores_variants(tmp_path):
    """An API 10 definition's variants.list is not read (variants came with API 15)."""
    assert osdef.load(make_os(tmp_path, api="10\n")).variants == ()


def test_names_split_into_name_and_variant():
    """`debootstrap+default` splits at the first plus; a bare name has no variant."""
    assert osdef.split_name("debootstrap+default") == ("debootstrap", "default")
    assert osdef.split_name("noop") == ("noop", "")


def test_the_first_directory_of_the_search_path_wins(tmp_path):
    """find takes the OS from the earliest directory of the search path holding it."""
    make_os(tmp_path / "a", api="15\n")
    make_os(tmp_path / "b")
    assert osdef.find("recorder", (tmp_path / "a", tmp_path / "b")).path == tmp_path / "a" / "recorder"


def test_the_search_path_comes_from_the_environment(tmp_path, monkeypatch):
    """$CAIRN_OS_SEARCH_PATH replaces Ganeti's default search path."""
    monkeypatch.setenv(osdef.SEARCH_PATH_VARIABLE, f"{tmp_path}/x:{tmp_path}/y")
    assert osdef.search_path() == (tmp_path / "x", tmp_path / "y")
    monkeypatch.delenv(osdef.SEARCH_PATH_VARIABLE)
    assert osdef.search_path() == osdef.DEFAULT_SEARCH_PATH


def test_an_unknown_os_says_it_is_not_on_the_search_path(search):
    """An OS no directory holds is reported as Ganeti does, with the search path."""
    with pytest.raises(OsNotFound, match="Directory for OS nosuch not found in search path"):
        osdef.find("nosuch+default", search)


def test_a_name_that_is_a_path_is_refused(search):
    """An OS name cannot climb out of the search path."""
    with pytest.raises(OsNotFound, match="is not an OS name"):
        osdef.find("../os", search)


def test_diagnose_reports_valid_invalid_and_shadowed_definitions(tmp_path):
    """diagnose lists every definition with its problem, and marks a later one of the same name as shadowed."""
    make_os(tmp_path / "a")
    broken = make_os(tmp_path / "a", name="broken")
    (broken / "export").unlink()
    make_os(tmp_path / "b")
    found = {(d.name, d.path.parent.name): d for d in osdef.diagnose((tmp_path / "a", tmp_path / "b",
                                                                      tmp_path / "absent"))}
    assert found["recorder", "a"].valid and found["recorder", "a"].shadowed_by is None
    assert found["recorder", "b"].shadowed_by == tmp_path / "a" / "recorder"
    assert not found["broken", "a"].valid and "'export' is missing" in found["broken", "a"].problem


def test_a_missing_variant_means_the_first_listed(tmp_path):
    """An OS name without a variant gets the definition's first variant."""
    assert osdef.check_variant(osdef.load(make_os(tmp_path)), "recorder") == "default"


def test_an_unknown_variant_is_refused_with_the_known_ones(tmp_path):
    """A variant the definition does not list is refused, naming those it does."""
    with pytest.raises(OsError, match="OS 'recorder' does not support variant 'tiny'; its variants are default, big"):
        osdef.check_variant(osdef.load(make_os(tmp_path)), "recorder+tiny")


def test_a_variant_for_an_os_without_variants_is_refused(tmp_path):
    """An OS without variants refuses a name that gives one."""
    with pytest.raises(OsError, match="does not support variants \\('x' given\\)"):
        osdef.check_variant(osdef.load(make_os(tmp_path, variants="")), "recorder+x")


def test_unknown_parameters_are_refused(tmp_path):
    """A parameter parameters.list does not declare is refused, naming those it does."""
    with pytest.raises(OsError, match="does not support the parameters colour; it supports dhcp, root_size"):
        osdef.check_parameters(osdef.load(make_os(tmp_path)), {"dhcp": "no", "colour": "red"})


def test_parameters_need_api_20(tmp_path):
    """An API 15 definition takes no OS parameters."""
    definition = osdef.load(make_os(tmp_path, api="15\n"))
    with pytest.raises(OsError, match="takes no OS parameters \\(its OS API is 15"):
        osdef.check_parameters(definition, {"dhcp": "no"})


# -- the environment of the scripts


def test_create_gets_every_variable_of_the_os_api(search):
    """create runs with exactly the OS API's variables for the instance, its disks and its NICs."""
    osdef.create(instance(), None, path=search)
    assert recorded(search[0] / "out", "create") == {
        "OS_API_VERSION": "20", "OS_NAME": "recorder", "OS_VARIANT": "big", "DEBUG_LEVEL": "0",
        "PATH": osdef.SCRIPT_PATH, "OSP_DHCP": "yes",
        "INSTANCE_NAME": "web1.example.org", "INSTANCE_OS": "recorder+big", "HYPERVISOR": "kvm",
        "INSTANCE_UUID": "i-1", "INSTANCE_PRIMARY_NODE": "node1", "INSTANCE_SECONDARY_NODES": "node2",
        "DISK_COUNT": "2",
        "DISK_0_PATH": "/data/i1/disk0.raw", "DISK_0_ACCESS": "rw", "DISK_0_UUID": "d-0",
        "DISK_0_FRONTEND_TYPE": "paravirtual", "DISK_0_BACKEND_TYPE": "file:loop",
        "DISK_1_PATH": "/data/i1/disk1.raw", "DISK_1_ACCESS": "ro", "DISK_1_NAME": "logs",
        "DISK_1_FRONTEND_TYPE": "paravirtual", "DISK_1_BACKEND_TYPE": "file:loop",
        "NIC_COUNT": "2",
        "NIC_0_MAC": "aa:00:00:11:22:33", "NIC_0_IP": "192.0.2.10", "NIC_0_MODE": "bridged", "NIC_0_LINK": "br0",
        "NIC_0_BRIDGE": "br0", "NIC_0_UUID": "n-0", "NIC_0_FRONTEND_TYPE": "e1000",
        "NIC_1_MAC": "aa:00:00:44:55:66", "NIC_1_MODE": "routed", "NIC_1_LINK": "100", "NIC_1_FRONTEND_TYPE": "e1000",
        "INSTANCE_BE_maxmem": "512", "INSTANCE_BE_vcpus": "2",
        "INSTANCE_HV_disk_type": "paravirtual", "INSTANCE_HV_nic_type": "e1000",
    }


def test_scripts_inherit_nothing_from_the_daemon(search, monkeypatch):
    """A variable of the calling process does not reach the script (Ganeti resets the environment)."""
    monkeypatch.setenv("CAIRN_SECRET_TOKEN", "do-not-leak")
    osdef.create(instance(), None, path=search)
    assert "CAIRN_SECRET_TOKEN" not in recorded(search[0] / "out", "create")


def test_scripts_run_in_their_definition_directory(search):
    """The working directory of a script is its OS definition's directory."""
    osdef.create(instance(), None, path=search)
    assert (search[0] / "out" / "create.cwd").read_text().strip() == str(search[0] / "recorder")


def test_a_reinstall_says_so(search):
    """create with reinstall sets INSTANCE_REINSTALL=1; a first install leaves it out."""
    osdef.create(instance(), None, path=search)
    assert "INSTANCE_REINSTALL" not in recorded(search[0] / "out", "create")
    osdef.create(instance(), None, path=search, reinstall=True, debug_level=1)
    environment = recorded(search[0] / "out", "create")
    assert environment["INSTANCE_REINSTALL"] == "1" and environment["DEBUG_LEVEL"] == "1"


def test_create_verifies_the_parameters_first(search):
    """create runs `verify parameters` with the OSP_ variables and no instance variables."""
    osdef.create(instance(), None, path=search)
    out = search[0] / "out"
    assert (out / "verify.args").read_text().strip() == "parameters"
    environment = recorded(out, "verify")
    assert environment["OSP_DHCP"] == "yes" and environment["OS_VARIANT"] == "big"
    assert "INSTANCE_NAME" not in environment and "DISK_COUNT" not in environment


def test_rename_gets_the_old_and_the_new_name(search):
    """rename sees the new name as INSTANCE_NAME and the old one as OLD_INSTANCE_NAME."""
    osdef.rename(instance(name="web2.example.org"), "web1.example.org", None, path=search)
    environment = recorded(search[0] / "out", "rename")
    assert environment["INSTANCE_NAME"] == "web2.example.org"
    assert environment["OLD_INSTANCE_NAME"] == "web1.example.org"


def test_an_older_api_gets_its_own_version_and_no_parameters(tmp_path):
    """An API 15 definition runs with OS_API_VERSION=15 and no verify step."""
    make_os(tmp_path / "os", api="15\n10\n", parameters=None)
    osdef.create(instance(os_parameters={}), None, path=(tmp_path / "os",))
    environment = recorded(tmp_path / "os" / "out", "create")
    assert environment["OS_API_VERSION"] == "15" and environment["OS_VARIANT"] == "big"
    assert not (tmp_path / "os" / "out" / "verify.env").exists()


def test_a_nic_in_routed_mode_has_no_bridge():
    """NIC_N_BRIDGE is set for bridged NICs only; an unknown mode is left out."""
    definition = osdef.OsDefinition("x", Path("/x"), (20,), (), ())
    nics = (Nic("aa:00:00:00:00:01", mode="routed", link="10"), Nic("aa:00:00:00:00:02"))
    environment = osdef.instance_environment(definition, instance(os="x", nics=nics, hvparams={}))
    assert "NIC_0_BRIDGE" not in environment and environment["NIC_0_MODE"] == "routed"
    assert {key for key in environment if key.startswith("NIC_1_")} == {"NIC_1_MAC"}


# -- running scripts


def test_a_failing_script_raises_with_its_last_lines(tmp_path):
    """A create that fails raises ScriptFailed with its exit code and the last 20 lines; the log has them all."""
    failing = '#!/bin/sh\nfor i in $(seq 1 30); do echo "line $i"; done\necho "no disk" >&2\nexit 3\n'
    make_os(tmp_path / "os", scripts={"create": failing})
    log = tmp_path / "add.log"
    with pytest.raises(ScriptFailed, match="exited with 3 \\(log: .*add.log\\); last lines") as caught:
        osdef.create(instance(), log, path=(tmp_path / "os",))
    assert caught.value.returncode == 3 and len(caught.value.tail) == 20
    assert caught.value.tail[-1] == "no disk" and caught.value.tail[0] == "line 12"
    assert "line 1\n" in log.read_text()


def test_the_tail_holds_only_this_runs_lines(tmp_path):
    """A log appended to by an earlier run does not leak that run's lines into the error."""
    make_os(tmp_path / "os", scripts={"create": "#!/bin/sh\necho failing now\nexit 1\n"})
    log = tmp_path / "add.log"
    log.write_text("an earlier run\n")
    with pytest.raises(ScriptFailed) as caught:
        osdef.create(instance(), log, path=(tmp_path / "os",))
    assert caught.value.tail == ["failing now"]


def test_a_script_past_its_timeout_is_killed_with_its_children(tmp_path):
    """A script that runs too long is killed, with the processes it started, and reported as timed out."""
    out = tmp_path / "os" / "out"
    hanging = f'#!/bin/sh\nsleep 60 &\necho $! > "{out}/child.pid"\nsleep 60\n'
    make_os(tmp_path / "os", scripts={"create": hanging})
    with pytest.raises(ScriptFailed, match="took longer than 0.5 s and was killed"):
        osdef.create(instance(), None, path=(tmp_path / "os",), timeout_s=0.5)
    child = int((out / "child.pid").read_text())
    for _ in range(100):  # a signal takes effect soon, not at once
        if not running(child):
            break
        time.sleep(0.05)
    assert not running(child)


def running(pid: int) -> bool:
    """Whether a process exists and is not a zombie (an unreaped zombie is dead enough)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_failing_verify_stops_the_install(tmp_path):
    """create does not run when `verify parameters` refuses a value; the error carries verify's message."""
    refusing = '#!/bin/sh\necho "Invalid value \'$OSP_DHCP\' for dhcp" >&2\nexit 1\n'
    make_os(tmp_path / "os", scripts={"verify": refusing})
    with pytest.raises(ScriptFailed, match="(?s)OS verify script of 'recorder' exited with 1.*Invalid value 'maybe'"):
        osdef.create(instance(os_parameters={"dhcp": "maybe"}), None, path=(tmp_path / "os",))
    assert not (tmp_path / "os" / "out" / "create.env").exists()


def test_a_missing_log_directory_is_reported(search, tmp_path):
    """A log path in a directory that does not exist is reported as such."""
    with pytest.raises(OsError, match="cannot open the log file .*check that its directory exists"):
        osdef.create(instance(), tmp_path / "no" / "add.log", path=search)


def test_export_streams_the_disk_and_announces_its_size(tmp_path):
    """export writes the script's stdout to the stream, sets EXPORT_*, and returns the size given on EXP_SIZE_FD."""
    out = tmp_path / "os" / "out"
    exporting = (f'#!/bin/bash\nenv > "{out}/export.env"\necho 7 >&"$EXP_SIZE_FD"\nprintf "DISKONE"\n'
                 'echo "exporting" >&2\n')
    make_os(tmp_path / "os", scripts={"export": exporting})
    log = tmp_path / "export.log"
    with open(tmp_path / "dump", "wb") as stream:
        size = osdef.export(instance(), 1, stream, log, path=(tmp_path / "os",))
    assert size == 7 and (tmp_path / "dump").read_bytes() == b"DISKONE"
    assert log.read_text() == "exporting\n"
    environment = recorded(out, "export")
    assert environment["EXPORT_INDEX"] == "1" and environment["EXPORT_DEVICE"] == "/data/i1/disk1.raw"
    assert environment["EXPORT_DISK_PATH"] == "/data/i1/disk1.raw"


def test_import_reads_the_stream(tmp_path):
    """import gets the stream on stdin and IMPORT_* naming the disk."""
    out = tmp_path / "os" / "out"
    importing = f'#!/bin/sh\nenv > "{out}/import.env"\ncat > "{out}/imported"\n'
    make_os(tmp_path / "os", scripts={"import": importing})
    (tmp_path / "dump").write_bytes(b"DISKZERO")
    with open(tmp_path / "dump", "rb") as stream:
        osdef.import_(instance(), 0, stream, None, path=(tmp_path / "os",))
    assert (out / "imported").read_bytes() == b"DISKZERO"
    environment = recorded(out, "import")
    assert environment["IMPORT_INDEX"] == "0" and environment["IMPORT_DEVICE"] == "/data/i1/disk0.raw"


def test_export_of_a_disk_the_instance_lacks_is_refused(search, tmp_path):
    """export names the disks the instance has when asked for another."""
    with open(tmp_path / "dump", "wb") as stream, pytest.raises(OsError, match="has no disk 2; its disks are 0 to 1"):
        osdef.export(instance(), 2, stream, None, path=search)


# -- the `cairn os` commands


runner = CliRunner()


def cli(*args: str):
    top = typer.Typer()
    top.add_typer(os_app, name="os")
    return runner.invoke(top, ["os", *args])


@pytest.fixture
def catalogue_file(tmp_path) -> Path:
    """An operator catalogue with one verified local image."""
    image = tmp_path / "tiny.raw"
    image.write_bytes(b"x" * 512)
    path = tmp_path / "images.json"
    path.write_text(json.dumps({"format": 1, "images": [
        {"name": "tiny", "kind": "image", "family": "test", "version": "1", "arch": "x86_64", "min_disk_mib": 1,
         "min_memory_mib": 16, "source": "tiny.raw", "format": "raw", "sha256": "a" * 64, "size_bytes": 512}]}))
    return path


def test_os_list_prints_names_with_variants_and_verified_images(search, catalogue_file):
    """`cairn os list` prints gnt-os list's Name column: each variant of a valid definition, then usable images."""
    result = cli("list", "--search-path", str(search[0]), "--catalogue", str(catalogue_file))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["Name", "recorder+default", "recorder+big", "tiny"]


def test_os_list_as_json_gives_kinds(search, catalogue_file):
    """`cairn os list --output json` gives each name with its kind."""
    result = cli("list", "--output", "json", "--search-path", str(search[0]), "--catalogue", str(catalogue_file))
    rows = json.loads(result.output)
    assert [(row["name"], row["kind"]) for row in rows] == [
        ("recorder+default", "os-definition"), ("recorder+big", "os-definition"), ("tiny", "image")]


def test_os_info_shows_versions_variants_parameters_and_path(search):
    """`cairn os info NAME` prints the definition in gnt-os info's layout, with its path."""
    result = cli("info", "recorder", "--search-path", str(search[0]))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[:8] == [
        "recorder:", "  - valid: True", f"  - path: {search[0] / 'recorder'}", "  - API versions:",
        "    - 10", "    - 15", "    - 20", "  - variants:"]
    assert "    - dhcp: Whether to use DHCP" in result.output


def test_os_info_of_an_unknown_name_fails(search):
    """`cairn os info nosuch` fails with Ganeti's unknown-entity text."""
    result = cli("info", "nosuch", "--search-path", str(search[0]))
    assert result.exit_code == 1 and "error type: unknown_entity" in result.output


def test_os_diagnose_reports_each_definition_and_fails_on_an_invalid_one(search):
    """`cairn os diagnose` gives a status per definition and exits 1 when one is invalid."""
    broken = make_os(search[0], name="broken")
    (broken / "verify").chmod(0o644)
    result = cli("diagnose", "--search-path", str(search[0]))
    assert result.exit_code == 1
    assert "OS: broken [global status: invalid]" in result.output and "'verify' is not executable" in result.output
    assert "OS: recorder [global status: valid]" in result.output


def test_os_diagnose_as_json(search, catalogue_file):
    """`cairn os diagnose --output json` gives definitions and images with their status."""
    result = cli("diagnose", "--output", "json", "--search-path", str(search[0]), "--catalogue", str(catalogue_file))
    document = json.loads(result.output)
    assert [d["name"] for d in document["definitions"] if d["valid"]] == ["recorder"]
    assert {"name": "tiny", "status": f"valid (path: {catalogue_file.parent / 'tiny.raw'})"} in document["images"]
