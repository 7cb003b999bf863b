"""Real Ganeti OS definitions from Debian, run unchanged through images.osdef.

`ganeti-os-noop` (API 10: create, rename, export and import, no verify) is
run against raw disk files; `ganeti-instance-debootstrap` (API 20) is loaded
and its `verify parameters` run (its create needs loop devices, root and a
Debian mirror, so it is not run here). Each test is skipped, saying which
package to install, when its package is missing: `apt-get install -y
ganeti-os-noop ganeti-instance-debootstrap`.
"""

from pathlib import Path

import pytest

from images import osdef
from images.osdef import Disk, Instance, OsError, ScriptFailed

pytestmark = pytest.mark.slow

PACKAGED = (Path("/usr/share/ganeti/os"),)
MIB = 1024 * 1024
needs_noop = pytest.mark.skipif(not (PACKAGED[0] / "noop").is_dir(),
                                reason="ganeti-os-noop is not installed (apt-get install -y ganeti-os-noop)")
needs_debootstrap = pytest.mark.skipif(
    not (PACKAGED[0] / "debootstrap").is_dir(),
    reason="ganeti-instance-debootstrap is not installed (apt-get install -y ganeti-instance-debootstrap)")


def disk_file(path: Path, size_bytes: int, marks: dict[int, bytes]) -> Path:
    with open(path, "wb") as disk:
        disk.truncate(size_bytes)
        for offset, data in marks.items():
            disk.seek(offset)
            disk.write(data)
    return path


def noop_instance(*disks: Path, name: str = "noop1.example.org") -> Instance:
    return Instance(name, "noop", disks=tuple(Disk(str(disk)) for disk in disks))


@needs_noop
def test_noop_is_a_valid_api_10_definition():
    """The packaged noop definition loads as API 10, without variants or parameters."""
    definition = osdef.find("noop", PACKAGED)
    assert definition.api_version == 10 and definition.variants == () and definition.parameters == ()
    assert definition.full_names == ("noop",)


@needs_noop
def test_noop_create_leaves_the_disk_as_it_was(tmp_path):
    """noop's create succeeds against a raw disk file and writes nothing to it."""
    disk = disk_file(tmp_path / "disk0.raw", 4 * MIB, {MIB: b"kept"})
    before = disk.read_bytes()
    osdef.create(noop_instance(disk), tmp_path / "add.log", path=PACKAGED)
    assert disk.read_bytes() == before


@needs_noop
def test_noop_rename_succeeds(tmp_path):
    """noop's rename runs with the old and the new name."""
    disk = disk_file(tmp_path / "disk0.raw", MIB, {})
    osdef.rename(noop_instance(disk, name="noop2.example.org"), "noop1.example.org", tmp_path / "rename.log",
                 path=PACKAGED)


@needs_noop
def test_noop_verify_accepts_no_parameters_and_refuses_some():
    """noop (API 10) has no verify script: no parameters pass, any parameter is refused."""
    osdef.verify("noop", {}, path=PACKAGED)
    with pytest.raises(OsError, match="takes no OS parameters"):
        osdef.verify("noop", {"dhcp": "yes"}, path=PACKAGED)


@needs_noop
def test_noop_refuses_a_variant():
    """noop has no variants, so `noop+default` is refused."""
    with pytest.raises(OsError, match="does not support variants"):
        osdef.verify("noop+default", {}, path=PACKAGED)


@needs_noop
def test_noop_export_then_import_copies_a_disk(tmp_path):
    """noop's export dumps a disk (announcing its size on EXP_SIZE_FD) and its import writes the dump back."""
    source = disk_file(tmp_path / "a.raw", 4 * MIB, {0: b"boot", 3 * MIB: b"data"})
    target = disk_file(tmp_path / "b.raw", 4 * MIB, {})
    with open(tmp_path / "dump", "wb") as stream:
        size = osdef.export(noop_instance(source), 0, stream, tmp_path / "export.log", path=PACKAGED)
    assert size == 4 * MIB
    with open(tmp_path / "dump", "rb") as stream:
        osdef.import_(noop_instance(target), 0, stream, tmp_path / "import.log", path=PACKAGED)
    assert target.read_bytes() == source.read_bytes()


@needs_debootstrap
def test_debootstrap_is_a_valid_api_20_definition():
    """The packaged debootstrap definition loads as API 20 with its variant and its filesystem parameter."""
    definition = osdef.find("debootstrap+default", PACKAGED)
    assert definition.api_version == 20 and "default" in definition.variants
    assert "filesystem" in dict(definition.parameters)
    assert "debootstrap+default" in definition.full_names


@needs_debootstrap
def test_debootstrap_verify_checks_the_filesystem_parameter():
    """debootstrap's `verify parameters` accepts ext4 and refuses xfs with its own message."""
    osdef.verify("debootstrap+default", {"filesystem": "ext4"}, path=PACKAGED)
    with pytest.raises(ScriptFailed, match="Invalid value 'xfs' for the filesystem parameter"):
        osdef.verify("debootstrap+default", {"filesystem": "xfs"}, path=PACKAGED)


@needs_debootstrap
def test_debootstrap_refuses_an_unknown_parameter():
    """A parameter debootstrap does not declare is refused before any script runs."""
    with pytest.raises(OsError, match="does not support the parameters swap; it supports filesystem"):
        osdef.verify("debootstrap+default", {"swap": "yes"}, path=PACKAGED)
