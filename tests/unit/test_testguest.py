"""Tests of the test guest's builder (with a fake package source), its cpio writer, its scripts and the host links."""

import gzip
import json
import lzma
import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from images import cpio, guestlink, testguest

BUSYBOX = shutil.which("busybox")
RELEASE = "6.1.0-99-cloud-amd64"


def parse_newc(archive: bytes) -> list[dict]:
    """The members of a newc archive, read independently of the writer (trailer included)."""
    members, offset = [], 0
    names = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor", "devminor", "rdevmajor",
             "rdevminor", "namesize", "check")
    while True:
        assert archive[offset:offset + 6] == b"070701", f"bad magic at {offset}"
        assert offset % 4 == 0
        fields = {name: int(archive[offset + 6 + 8 * i:offset + 14 + 8 * i], 16) for i, name in enumerate(names)}
        name_start = offset + 110
        name = archive[name_start:name_start + fields["namesize"] - 1].decode()
        assert archive[name_start + fields["namesize"] - 1] == 0
        data_start = (name_start + fields["namesize"] + 3) // 4 * 4
        data = archive[data_start:data_start + fields["filesize"]]
        members.append({**fields, "name": name, "data": data})
        offset = (data_start + fields["filesize"] + 3) // 4 * 4
        if name == cpio.TRAILER:
            assert offset == len(archive)
            return members


def sample_entries() -> list[cpio.Entry]:
    return [cpio.directory("bin"), cpio.directory("dev"), cpio.char_device("dev/console", 5, 1),
            cpio.regular("bin/busybox", b"\x7fELF" + bytes(range(256)) * 3, 0o755), cpio.symlink("bin/sh", "busybox"),
            cpio.regular("init", b"#!/bin/sh\necho hi\n", 0o755), cpio.regular("empty", b"")]


# -- the cpio writer


def test_newc_archive_parses_back_to_its_entries():
    """Every entry comes back with its name, mode, data and device numbers, owned by 0:0, then the trailer."""
    entries = sample_entries()
    members = parse_newc(cpio.newc(entries))
    assert [m["name"] for m in members] == [e.name for e in entries] + [cpio.TRAILER]
    for entry, member in zip(entries, members):
        assert (member["mode"], member["data"], member["uid"], member["gid"]) == (entry.mode, entry.data, 0, 0)
        assert (member["rdevmajor"], member["rdevminor"]) == (entry.rdev_major, entry.rdev_minor)
    assert members[0]["nlink"] == 2 and members[3]["nlink"] == 1
    assert len({m["ino"] for m in members[:-1]}) == len(entries)


def test_newc_archive_is_the_same_bytes_for_the_same_entries():
    """The archive has a fixed mtime, so the same entries always give the same bytes."""
    assert cpio.newc(sample_entries()) == cpio.newc(sample_entries())
    assert all(m["mtime"] == 0 for m in parse_newc(cpio.newc(sample_entries())))


@pytest.mark.parametrize("name", ["/init", "", cpio.TRAILER])
def test_newc_refuses_an_absolute_empty_or_reserved_name(name):
    """A name that is absolute, empty or the trailer's is refused."""
    with pytest.raises(ValueError, match="relative path"):
        cpio.newc([cpio.regular(name, b"x")])


def test_newc_refuses_a_name_twice():
    """Two entries of the same name are refused with the name."""
    with pytest.raises(ValueError, match="'init' appears twice"):
        cpio.newc([cpio.regular("init", b"a"), cpio.regular("init", b"b")])


@pytest.mark.skipif(BUSYBOX is None, reason="busybox is not installed (apt-get install busybox-static)")
def test_busybox_cpio_lists_and_extracts_the_archive(tmp_path):
    """busybox cpio lists every entry and extracts files and links with their contents and modes."""
    entries = [e for e in sample_entries() if not stat.S_ISCHR(e.mode)]
    archive = cpio.newc(entries)
    listed = subprocess.run([BUSYBOX, "cpio", "-t"], input=archive, capture_output=True, timeout=30, check=True)
    assert listed.stdout.decode().split() == [e.name for e in entries]
    subprocess.run([BUSYBOX, "cpio", "-id"], input=archive, cwd=tmp_path, capture_output=True, timeout=30,
                   check=True)
    assert (tmp_path / "init").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert os.access(tmp_path / "init", os.X_OK)
    assert os.readlink(tmp_path / "bin" / "sh") == "busybox"
    assert (tmp_path / "bin" / "busybox").read_bytes() == entries[2].data


# -- the guest's scripts


def script(name: str) -> str:
    return (testguest.GUEST_FILES / name).read_text()


def test_init_guards_the_control_shell_with_stty():
    """The ttyS1 respawn loop runs only if `stty -F /dev/ttyS1 raw -echo` succeeds (trap 7.4)."""
    text = script("init")
    guard = text.index("if stty -F /dev/ttyS1 raw -echo")
    loop = text.index("setsid sh /dev/ttyS1")
    assert guard < loop < text.index("fi", loop)
    assert "sleep 0.2" in text[loop:text.index("fi", loop)]


def test_init_prints_the_marker_before_the_ticker():
    """/init prints the boot marker with a boot id from the kernel's random uuid, then ticks every 100 ms."""
    text = script("init")
    assert "/proc/sys/kernel/random/uuid" in text
    marker = text.index('echo "GUEST-MARKER-BOOTED bootid=$bootid uptime=$up"')
    ticker = text.index('echo "TICK bootid=$bootid n=$n up=$up"')
    assert marker < ticker and "sleep 0.1" in text[ticker:]
    # The ticker reads /proc/uptime with the shell's `read`: no process per tick for that.
    assert "read -r up idle </proc/uptime" in text[text.index("n=0"):]


def test_init_reads_virtio_and_tick_from_the_command_line():
    """virtio=1 loads the modules named by the build; tick=0 sleeps instead of ticking."""
    text = script("init")
    assert '*" virtio=1 "*)' in text and "</lib/modules/load-order" in text and "GUEST-VIRTIO-LOADED" in text
    assert '*" tick=0 "*)' in text


@pytest.mark.skipif(BUSYBOX is None, reason="busybox is not installed (apt-get install busybox-static)")
@pytest.mark.parametrize("name", sorted(testguest.SCRIPTS.values()))
def test_guest_script_parses_in_busybox_sh(name):
    """Each script of the guest is valid busybox sh."""
    result = subprocess.run([BUSYBOX, "sh", "-n", str(testguest.GUEST_FILES / name)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(BUSYBOX is None, reason="busybox is not installed (apt-get install busybox-static)")
def test_records_writes_numbered_blocks_and_acknowledges_each(tmp_path):
    """`records` writes record n at n*4096 with its number and the boot id, printing ACK n after each.

    Run on the host with busybox against a file (O_DIRECT works on most host file systems; on one
    without it the test is skipped rather than failed).
    """
    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes(8 * 4096))
    bootid = tmp_path / "bootid"
    bootid.write_text("cafe0123\n")
    text = script("records").replace("/etc/bootid", str(bootid))
    result = subprocess.run([BUSYBOX, "sh", "-c", text, "records", str(disk), "2", "3"], capture_output=True,
                            text=True, timeout=30, env={"PATH": str(Path(BUSYBOX).parent)})
    if "ERR 2" in result.stdout:
        pytest.skip(f"O_DIRECT writes do not work in {tmp_path}")
    assert guestlink.acknowledged(result.stdout) == [2, 3, 4]
    assert [guestlink.record_on_disk(disk, n) for n in range(7)] == [None, None] + ["cafe0123"] * 3 + [None, None]


# -- the build, with a fake package source


class FakeArchive:
    """Resolves to fixed versions and 'downloads' a made-up kernel and busybox tree (some modules xz-compressed)."""

    def __init__(self, kernel_version: str = "6.1.1-1", compressed: tuple = ("virtio_blk",), missing=(),
                 builtin=()) -> None:
        self.kernel_version, self.compressed, self.missing, self.builtin = kernel_version, compressed, missing, builtin
        self.fetches = 0

    def resolve(self, recipe: str) -> testguest.Inputs:
        return testguest.Inputs(f"linux-image-{RELEASE}", self.kernel_version, "1:1.35.0-4", recipe)

    def fetch(self, inputs, workdir: Path, progress) -> testguest.Unpacked:
        self.fetches += 1
        progress("downloading (fake)")
        kernel, busybox = workdir / "k", workdir / "b"
        (kernel / "boot").mkdir(parents=True)
        (kernel / "boot" / f"vmlinuz-{RELEASE}").write_bytes(b"KERNEL " + inputs.kernel_version.encode())
        base = kernel / "lib" / "modules" / RELEASE
        (base / "kernel" / "drivers" / "virtio").mkdir(parents=True)
        (base / "modules.builtin").write_text("".join(f"kernel/drivers/virtio/{name}.ko\n" for name in self.builtin))
        for name in testguest.MODULES:
            if name in self.missing or name in self.builtin:
                continue
            data = module_bytes(name)
            if name in self.compressed:
                (base / "kernel" / "drivers" / "virtio" / f"{name}.ko.xz").write_bytes(lzma.compress(data))
            else:
                (base / "kernel" / "drivers" / "virtio" / f"{name}.ko").write_bytes(data)
        (busybox / "bin").mkdir(parents=True)
        (busybox / "bin" / "busybox").write_bytes(b"\x7fELF busybox")
        return testguest.Unpacked(kernel, busybox)


def module_bytes(name: str) -> bytes:
    return f"\x7fELF module {name}".encode()


def initrd_members(guest: testguest.Guest) -> dict[str, dict]:
    return {m["name"]: m for m in parse_newc(gzip.decompress(guest.initrd.read_bytes()))}


def test_build_writes_the_kernel_initrd_and_manifest(tmp_path):
    """A build writes vmlinuz, initrd.gz and a manifest with the packages, the files' sha256 and the cmdline."""
    guest = testguest.build(tmp_path, source=FakeArchive())
    assert guest.built and guest.directory == tmp_path / "testguest"
    manifest = json.loads((guest.directory / "testguest.json").read_text())
    assert manifest == guest.manifest
    assert manifest["kernel"] == {"package": f"linux-image-{RELEASE}", "version": "6.1.1-1", "release": RELEASE}
    assert manifest["busybox"]["version"] == "1:1.35.0-4"
    assert manifest["files"]["vmlinuz"]["size_bytes"] == len(b"KERNEL 6.1.1-1")
    assert guest.kernel.read_bytes() == b"KERNEL 6.1.1-1"
    assert guest.cmdline(virtio=True, tick=False) == "console=ttyS0 quiet panic=-1 virtio=1 tick=0"


def test_initramfs_holds_busybox_links_modules_and_scripts(tmp_path):
    """The initramfs has busybox with its applet links, the modules uncompressed, /init and the helper scripts."""
    members = initrd_members(testguest.build(tmp_path, source=FakeArchive()))
    assert members["bin/busybox"]["data"] == b"\x7fELF busybox" and members["bin/busybox"]["mode"] & 0o111
    assert members["bin/sh"]["data"] == b"busybox" and stat.S_ISLNK(members["bin/sh"]["mode"])
    assert stat.S_ISCHR(members["dev/console"]["mode"]) and members["dev/console"]["rdevmajor"] == 5
    for name in testguest.MODULES:
        assert members[f"lib/modules/{name}.ko"]["data"] == module_bytes(name)
    assert members["lib/modules/load-order"]["data"].decode().split() == list(testguest.MODULES)
    assert members["init"]["data"] == (testguest.GUEST_FILES / "init").read_bytes()
    assert {"bin/records", "bin/iops"} <= set(members) and members["init"]["mode"] == stat.S_IFREG | 0o755


def test_a_module_built_into_the_kernel_is_left_out(tmp_path):
    """A module the kernel builds in is neither shipped nor loaded."""
    members = initrd_members(testguest.build(tmp_path, source=FakeArchive(builtin=("virtio_ring",))))
    assert "lib/modules/virtio_ring.ko" not in members
    assert "virtio_ring" not in members["lib/modules/load-order"]["data"].decode().split()


def test_a_module_the_kernel_lacks_fails_the_build(tmp_path):
    """A kernel with neither the module nor it built in fails the build, naming the module, and writes nothing."""
    with pytest.raises(testguest.BuildError, match="no module virtio_blk"):
        testguest.build(tmp_path, source=FakeArchive(missing=("virtio_blk",)))
    assert not (tmp_path / "testguest" / "testguest.json").exists()


def test_a_second_build_of_the_same_inputs_does_nothing(tmp_path):
    """With the same package versions and recipe, the existing build is reused without a download."""
    source = FakeArchive()
    first = testguest.build(tmp_path, source=source)
    lines = []
    second = testguest.build(tmp_path, source=source, progress=lines.append)
    assert source.fetches == 1 and not second.built and second.manifest == first.manifest
    assert lines[-1].startswith("up to date")


def test_force_rebuilds(tmp_path):
    """--force downloads and packs again even when the build is current."""
    source = FakeArchive()
    testguest.build(tmp_path, source=source)
    assert testguest.build(tmp_path, source=source, force=True).built and source.fetches == 2


def test_a_new_kernel_version_rebuilds(tmp_path):
    """A new version of the kernel package makes the next build download and pack again."""
    testguest.build(tmp_path, source=FakeArchive("6.1.1-1"))
    guest = testguest.build(tmp_path, source=FakeArchive("6.1.2-1"))
    assert guest.built and guest.manifest["kernel"]["version"] == "6.1.2-1"


def test_a_damaged_file_rebuilds(tmp_path):
    """A file that no longer matches the manifest's sha256 makes the build run again."""
    source = FakeArchive()
    guest = testguest.build(tmp_path, source=source)
    guest.initrd.write_bytes(b"truncated")
    assert testguest.state(guest.directory)[1] == "damaged"
    assert testguest.build(tmp_path, source=source).built and source.fetches == 2
    assert testguest.load(guest.directory) is not None


def test_a_manifest_of_another_recipe_is_outdated(tmp_path):
    """A build made by another recipe (another /init, say) is outdated and not loaded."""
    guest = testguest.build(tmp_path, source=FakeArchive())
    manifest = {**guest.manifest, "recipe_sha256": "0" * 64}
    (guest.directory / "testguest.json").write_text(json.dumps(manifest))
    assert testguest.state(guest.directory)[1] == "outdated" and testguest.load(guest.directory) is None


def test_cache_directory_defaults_to_cairn_cache(monkeypatch, tmp_path):
    """The cache root is the argument, else $CAIRN_CACHE, else ~/.cache/cairn; the guest is in its testguest/."""
    monkeypatch.setenv("CAIRN_CACHE", str(tmp_path))
    assert testguest.cache_directory() == tmp_path / "testguest"
    assert testguest.cache_directory("/x") == Path("/x/testguest")
    monkeypatch.delenv("CAIRN_CACHE")
    assert testguest.cache_directory() == Path.home() / ".cache" / "cairn" / "testguest"


def test_missing_apt_is_a_clear_error(monkeypatch, tmp_path):
    """Without apt-cache on PATH the build says which tools it needs and where they come from."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(testguest.BuildError, match="apt-cache not found.*Debian"):
        testguest.build(tmp_path)


def test_a_failed_lookup_says_the_archive_must_be_reachable(monkeypatch, tmp_path):
    """When apt-cache fails, the error quotes it and says to run apt-get update with the archive reachable."""
    fake = tmp_path / "apt-cache"
    fake.write_text("#!/bin/sh\necho 'E: No packages found' >&2\nexit 100\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(testguest.BuildError, match="No packages found.*apt-get update.*Debian archive"):
        testguest.DebianArchive().resolve("x")


def test_a_failed_download_says_the_archive_must_be_reachable(monkeypatch, tmp_path):
    """When apt-get download fails, the error quotes apt and says the Debian archive must be reachable."""
    fake = tmp_path / "apt-get"
    fake.write_text("#!/bin/sh\necho 'E: Failed to fetch http://deb.debian.org/x.deb' >&2\nexit 100\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    inputs = testguest.Inputs("linux-image-x", "1", "1", "r")
    (tmp_path / "work").mkdir()
    with pytest.raises(testguest.BuildError, match="Failed to fetch.*Debian archive must be reachable"):
        testguest.DebianArchive().fetch(inputs, tmp_path / "work", lambda _: None)


# -- the host links


def test_wait_for_line_finds_a_line_written_later_and_its_offset(tmp_path):
    """wait_for_line returns the first matching complete line after the offset, and the offset after it."""
    log = tmp_path / "serial.log"
    log.write_bytes(b"noise\r\nGUEST-MARKER-BOOTED bootid=0badcafe uptime=2.31\nTICK bootid=0badcafe n=1 up=2")
    line = guestlink.wait_for_line(log, r"GUEST-MARKER-BOOTED bootid=(\w+)", timeout_s=1)
    assert line.match.group(1) == "0badcafe" and line.end_offset == log.read_bytes().index(b"TICK")
    assert line.start_offset == len(b"noise\r\n")
    with open(log, "ab") as growing:
        growing.write(b".40\n")
    assert guestlink.wait_for_line(log, r"^TICK", 1, start_offset=line.end_offset).text.endswith("up=2.40")


def test_wait_for_line_times_out_naming_the_last_line(tmp_path):
    """Without a match in time, TimeoutError names the pattern and the last line seen."""
    log = tmp_path / "serial.log"
    log.write_text("booting\n")
    with pytest.raises(TimeoutError, match="MARKER.*'booting'"):
        guestlink.wait_for_line(log, "MARKER", timeout_s=0.05)


def test_ticks_parses_complete_tick_lines(tmp_path):
    """ticks() returns boot id, counter and uptime of every complete TICK line; a partial last line is left."""
    log = tmp_path / "serial.log"
    log.write_text("GUEST-MARKER-BOOTED bootid=ab uptime=1\nTICK bootid=ab n=1 up=2.50\nTICK bootid=ab n=2 up=2.61\n"
                   "TICK bootid=ab n=3 up=2.7")
    assert guestlink.ticks(log) == [guestlink.Tick("ab", 1, 2.5), guestlink.Tick("ab", 2, 2.61)]


def test_tick_watcher_returns_new_ticks_stamped_with_the_host_clock(tmp_path):
    """Each poll returns only the ticks completed since the last, with the clock's reading."""
    log = tmp_path / "serial.log"
    log.write_text("TICK bootid=ab n=1 up=2.50\n")
    watcher = guestlink.TickWatcher(log, clock=lambda: 7.0)
    assert watcher.poll() == [guestlink.Tick("ab", 1, 2.5, 7.0)]
    with open(log, "a") as growing:
        growing.write("TICK bootid=ab n=2 up=2.60\nTICK bo")
    assert [t.n for t in watcher.poll()] == [2] and watcher.poll() == []


def test_iops_result_parses_the_guest_line():
    """iops_result reads count, elapsed milliseconds and rate; a missing line is a GuestLinkError."""
    assert guestlink.iops_result("IOPS count=500 elapsed_ms=1250 iops=400\n") == guestlink.Iops(500, 1250, 400)
    assert guestlink.iops_result("IOPS count=5 elapsed_ms=0 iops=-\n").iops is None
    with pytest.raises(guestlink.GuestLinkError, match="no IOPS line"):
        guestlink.iops_result("ERR\n")


@pytest.fixture
def fake_control_socket(tmp_path):
    """A unix socket served by a real `sh` reading commands from it, which, like a guest whose shell is not
    yet up, loses the first line sent."""
    path = tmp_path / "ctl.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    shells = []

    def serve() -> None:
        connection, _ = server.accept()
        lost = b""
        while not lost.endswith(b"\n"):
            lost += connection.recv(1)
        shells.append(subprocess.Popen(["sh", "-s"], stdin=connection.fileno(), stdout=connection.fileno(),
                                       stderr=subprocess.DEVNULL, start_new_session=True))
        connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        thread.join(timeout=10)
        server.close()
        for shell in shells:
            # The shell leads its own process group: this ends it and any command it still runs.
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait(timeout=10)


def test_control_shell_handshakes_then_runs_commands(fake_control_socket):
    """After a lost first handshake the shell answers; run returns output, execute the exit status too."""
    with guestlink.ControlShell.connect(fake_control_socket, timeout_s=10) as shell:
        assert shell.run("echo hi; echo there >&2", timeout_s=10) == "hi\nthere\n"
        assert shell.execute("echo 'it''s'; exit 3", timeout_s=10) == guestlink.Result("its\n", 3)
        with pytest.raises(guestlink.GuestLinkError, match="status 1"):
            shell.run("false", timeout_s=10)
        # A syntax error ends only the command's own sh, not the shell that reads the socket.
        assert shell.execute("if then", timeout_s=10).status == 2
        assert shell.run("printf 'ACK 1\\nACK 2\\n'", timeout_s=10) == "ACK 1\nACK 2\n"


def test_control_shell_times_out_with_the_partial_output(fake_control_socket):
    """A command still running at its timeout raises GuestTimeout carrying what it printed so far."""
    with guestlink.ControlShell.connect(fake_control_socket, timeout_s=10) as shell:
        with pytest.raises(guestlink.GuestTimeout) as raised:
            shell.run("echo ACK 7; sleep 5", timeout_s=0.5)
        assert guestlink.acknowledged(raised.value.output) == [7]
