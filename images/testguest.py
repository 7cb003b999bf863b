"""The test guest: Debian's cloud kernel and a busybox initramfs, built from Debian packages into a cache directory.

`build` resolves the kernel package behind `linux-image-cloud-amd64`, downloads it
and `busybox-static` with apt-get, unpacks both with dpkg, and writes into
`<cache>/testguest/` (cache: `--cache-dir`, else `$CAIRN_CACHE`, else
`~/.cache/cairn`): `vmlinuz`, `initrd.gz` (a cpio "newc" archive packed here, in
Python) and `testguest.json`, the manifest (package versions, sha256 and size of
both files, the kernel command line). A build whose inputs (package versions and
this recipe) match a complete existing one does nothing. Nothing here prints.

What the guest does (shared/reference/qemu.md, 3.2) and what it prints, one line each:

On ttyS0 (the console):
  `GUEST-MARKER-BOOTED bootid=<8 hex> uptime=<s>` once per boot; the boot id is new on every boot.
  `GUEST-VIRTIO-LOADED <vda vdb ...|none>` after loading the virtio-blk modules, only with `virtio=1`.
  `GUEST-VIRTIO-FAILED module=<name>` when one of the modules would not load (with `virtio=1` or `ip4=`).
  `GUEST-NET-UP <ADDR/PREFIX>` once eth0 (the first virtio-net NIC) is up with the address of `ip4=ADDR/PREFIX`
    (the modules are loaded for it, virtio-net among them), or `GUEST-NET-FAILED <ADDR/PREFIX>` when it is not.
  `TICK bootid=<id> n=<n> up=<s>` every 100 ms, n counting from 1 in the shell's memory (none with `tick=0`).

On ttyS1 (the control shell, only when qemu has a second serial port): a non-interactive `sh`
reading commands from the port, with no prompt and no echo, respawned 0.2 s after it exits. Send a
handshake first (images.guestlink does): input sent before the shell opened the port is lost. The
boot id is in /etc/bootid. Two commands of its own:
  `records DEV START COUNT` writes records START .. START+COUNT-1, record n being one 4 KiB O_DIRECT
    write at byte n*4096: the line `CAIRN-RECORD n=<n> bootid=<id>` padded with zeros. It prints
    `ACK <n>` after each completed write, or `ERR <n>` and stops with status 1.
  `iops DEV COUNT [START]` does COUNT 4 KiB O_DIRECT writes of zeros from block START (default 0) of DEV
    at queue depth 1 and prints
    `IOPS count=<COUNT> elapsed_ms=<ms> iops=<writes/s>` (timed with /proc/uptime: 10 ms resolution),
    or `ERR` with status 1.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from images import cpio

# Part of every manifest and of the recipe digest: raise it when the packing code changes what it writes.
FORMAT = 1
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
# In load order: each needs the ones before it (virtio_net needs net_failover, which needs failover: the
# `depends=` of each module's .modinfo in the cloud kernel package).
MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci", "virtio_blk",
           "failover", "net_failover", "virtio_net")
APPLETS = ("sh", "mount", "echo", "cat", "sleep", "insmod", "stty", "dd", "sync", "sha256sum", "mkdir", "ls",
           "date", "cut", "head", "tail", "tr", "uname", "seq", "hexdump", "od", "grep", "setsid", "printf",
           "test", "[", "wc", "rm", "kill", "ps", "blockdev", "cmp", "truncate", "uptime", "ip", "ifconfig",
           "ping", "route", "arp")
CMDLINE = "console=ttyS0 quiet panic=-1"
GUEST_FILES = Path(__file__).with_name("guestfs")
SCRIPTS = {"init": "init", "bin/records": "records", "bin/iops": "iops"}  # path in the guest -> file in guestfs/
MANIFEST = "testguest.json"
KERNEL_FILE, INITRD_FILE = "vmlinuz", "initrd.gz"
APT_TIMEOUT_S = 600
ARCHIVE_HINT = "the Debian archive must be reachable (check the network and the apt sources), then retry"

Progress = Callable[[str], None]


class BuildError(RuntimeError):
    """The guest could not be built; the message says why and what to do."""


@dataclass(frozen=True)
class Inputs:
    """What a build is made from: exact package versions and the digest of this recipe."""

    kernel_package: str
    kernel_version: str
    busybox_version: str
    recipe_sha256: str


@dataclass(frozen=True)
class Unpacked:
    """The two packages, each unpacked (`dpkg -x`) into its own directory."""

    kernel_root: Path
    busybox_root: Path


@dataclass(frozen=True)
class Guest:
    """A built guest in `directory`; `built` is False when an existing build was reused."""

    directory: Path
    manifest: dict
    built: bool = False

    @property
    def kernel(self) -> Path:
        return self.directory / KERNEL_FILE

    @property
    def initrd(self) -> Path:
        return self.directory / INITRD_FILE

    def cmdline(self, virtio: bool = False, tick: bool = True, ip4: str | None = None) -> str:
        """The kernel command line: with `virtio` the guest loads virtio-blk, without `tick` it stays idle, with
        `ip4` ("10.99.0.1/24") it brings eth0 up with that address."""
        return (self.manifest["cmdline"] + (" virtio=1" if virtio else "") + ("" if tick else " tick=0")
                + (f" ip4={ip4}" if ip4 else ""))


def cache_directory(cache_root: Path | str | None = None) -> Path:
    """Where the guest lives: `<cache_root>/testguest`, the root defaulting to $CAIRN_CACHE or ~/.cache/cairn."""
    root = cache_root or os.environ.get("CAIRN_CACHE") or Path.home() / ".cache" / "cairn"
    return Path(root).expanduser() / "testguest"


def recipe_sha256() -> str:
    """A digest of everything in this recipe that shapes the initramfs, so that changing it forces a rebuild."""
    digest = hashlib.sha256(json.dumps([FORMAT, MODULES, APPLETS, CMDLINE, sorted(SCRIPTS.items())]).encode())
    for name in sorted(SCRIPTS.values()):
        digest.update((GUEST_FILES / name).read_bytes())
    return digest.hexdigest()


# -- the Debian archive


def _run(argv: list[str], what: str, hint: str = "", cwd: Path | None = None,
         timeout_s: float = APT_TIMEOUT_S) -> str:
    """Run a packaging tool; BuildError naming the missing tool, or quoting its complaint followed by `hint`."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd=cwd,
                              env={**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"})
    except FileNotFoundError:
        raise BuildError(f"{argv[0]} not found; the test guest is built from Debian packages with apt-get, "
                         "apt-cache and dpkg: build it on Debian or Ubuntu, where packages apt and dpkg provide "
                         "them") from None
    except subprocess.TimeoutExpired:
        raise BuildError(f"{what} took longer than {timeout_s:g} s{hint}") from None
    if done.returncode != 0:
        complaint = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise BuildError(f"{what} failed ({' '.join(argv)}: {complaint or f'status {done.returncode}'}){hint}")
    return done.stdout


class DebianArchive:
    """The real source of the packages: apt-cache, apt-get download and dpkg -x."""

    def resolve(self, recipe: str) -> Inputs:
        """The exact packages a build would use now, from apt's package lists (no download)."""
        hint = f"; run 'apt-get update' ({ARCHIVE_HINT})"
        shown = _run(["apt-cache", "show", "--no-all-versions", KERNEL_META_PACKAGE, BUSYBOX_PACKAGE],
                     f"looking up {KERNEL_META_PACKAGE} and {BUSYBOX_PACKAGE}", hint)
        stanzas = {fields.get("Package"): fields for fields in _stanzas(shown)}
        if KERNEL_META_PACKAGE not in stanzas or BUSYBOX_PACKAGE not in stanzas:
            raise BuildError(f"apt knows no {KERNEL_META_PACKAGE} or no {BUSYBOX_PACKAGE}{hint}")
        # The meta package depends on one kernel package, normally pinned with "(= version)".
        depends = [item.split("|")[0].strip() for item in stanzas[KERNEL_META_PACKAGE].get("Depends", "").split(",")]
        kernel = next((item for item in depends if item.startswith("linux-image-")), None)
        if kernel is None:
            raise BuildError(f"{KERNEL_META_PACKAGE} depends on no linux-image package{hint}")
        name, _, constraint = kernel.partition(" ")
        pinned = constraint.strip("() ")
        version = pinned[1:].strip() if pinned.startswith("=") else self._candidate(name, hint)
        return Inputs(name, version, stanzas[BUSYBOX_PACKAGE]["Version"], recipe)

    @staticmethod
    def _candidate(package: str, hint: str) -> str:
        policy = _run(["apt-cache", "policy", package], f"looking up the version of {package}", hint)
        for line in policy.splitlines():
            if line.strip().startswith("Candidate:") and line.split(":", 1)[1].strip() != "(none)":
                return line.split(":", 1)[1].strip()
        raise BuildError(f"apt knows no installable version of {package}{hint}")

    def fetch(self, inputs: Inputs, workdir: Path, progress: Progress) -> Unpacked:
        """Download both packages at their resolved versions into `workdir` and unpack them there."""
        debs = workdir / "debs"
        debs.mkdir()
        # As root, apt hands the download to its unprivileged user, who cannot write into a private
        # temporary directory; downloading as root instead saves a warning per package.
        progress(f"downloading {inputs.kernel_package} {inputs.kernel_version} and {BUSYBOX_PACKAGE} "
                 f"{inputs.busybox_version}")
        _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root",
              f"{inputs.kernel_package}={inputs.kernel_version}", f"{BUSYBOX_PACKAGE}={inputs.busybox_version}"],
             "downloading the packages", f"; {ARCHIVE_HINT}", cwd=debs)
        kernel_deb = _only(debs, "linux-image-*.deb")
        busybox_deb = _only(debs, f"{BUSYBOX_PACKAGE}_*.deb")
        size_mb = (kernel_deb.stat().st_size + busybox_deb.stat().st_size) / 1e6
        progress(f"extracting {kernel_deb.name} and {busybox_deb.name} ({size_mb:.1f} MB)")
        unpacked = Unpacked(workdir / "kernel", workdir / "busybox")
        for deb, root in ((kernel_deb, unpacked.kernel_root), (busybox_deb, unpacked.busybox_root)):
            _run(["dpkg", "-x", str(deb), str(root)], f"unpacking {deb.name}")
        return unpacked


def _stanzas(text: str) -> list[dict[str, str]]:
    """The paragraphs of apt-cache output as field -> value (continuation lines dropped)."""
    stanzas = []
    for paragraph in text.split("\n\n"):
        fields = {}
        for line in paragraph.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        if fields:
            stanzas.append(fields)
    return stanzas


def _only(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    if len(found) != 1:
        raise BuildError(f"expected one {pattern} in {directory} after the download, found {len(found)}; "
                         f"{ARCHIVE_HINT}")
    return found[0]


# -- the initramfs


def _kernel_image(kernel_root: Path) -> tuple[Path, str]:
    """The kernel image of an unpacked kernel package and its release (`6.1.0-57-cloud-amd64`)."""
    images = sorted((kernel_root / "boot").glob("vmlinuz-*"))
    if len(images) != 1:
        raise BuildError(f"expected one boot/vmlinuz-* in the kernel package, found {len(images)}")
    return images[0], images[0].name.removeprefix("vmlinuz-")


def _decompressed(path: Path) -> bytes:
    """A module file's bytes, decompressed here: busybox insmod may not read compressed modules."""
    if path.name.endswith(".ko"):
        return path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    if path.name.endswith(".ko.zst") and shutil.which("zstd"):
        done = subprocess.run(["zstd", "-dc", str(path)], capture_output=True, timeout=60)
        if done.returncode == 0:
            return done.stdout
    raise BuildError(f"cannot decompress {path.name}: Python reads .ko, .ko.xz and .ko.gz; for .ko.zst install zstd")


def kernel_modules(kernel_root: Path, release: str) -> list[tuple[str, bytes]]:
    """(name, uncompressed bytes) of each of MODULES the kernel has as a module, in load order.

    A module built into this kernel (listed in modules.builtin) is left out; one that is neither is an error.
    """
    bases = [base for base in (kernel_root / "lib" / "modules" / release, kernel_root / "usr" / "lib" / "modules"
                               / release) if base.is_dir()]
    if not bases:
        raise BuildError(f"the kernel package has no lib/modules/{release}")
    files = {path.name.split(".ko")[0]: path for base in bases for path in base.rglob("*.ko*")}
    builtin = set()
    for base in bases:
        if (base / "modules.builtin").is_file():
            builtin |= {Path(line).name.split(".ko")[0] for line in (base / "modules.builtin").read_text().split()}
    found = []
    for name in MODULES:
        if name in files:
            found.append((name, _decompressed(files[name])))
        elif name not in builtin:
            raise BuildError(f"kernel {release} has no module {name} and does not build it in")
    return found


def initramfs_entries(busybox: bytes, modules: list[tuple[str, bytes]]) -> list[cpio.Entry]:
    """The guest's root file system: busybox and its applet links, the modules, /init and the helper scripts."""
    entries = [cpio.directory(name) for name in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp")]
    # The kernel opens /dev/console for /init before anything can mount devtmpfs.
    entries.append(cpio.char_device("dev/console", 5, 1))
    entries.append(cpio.regular("bin/busybox", busybox, 0o755))
    entries += [cpio.symlink(f"bin/{applet}", "busybox") for applet in APPLETS]
    entries += [cpio.regular(f"lib/modules/{name}.ko", data) for name, data in modules]
    # /init reads this one line to know which modules to load, in order.
    entries.append(cpio.regular("lib/modules/load-order", (" ".join(name for name, _ in modules) + "\n").encode()))
    entries += [cpio.regular(path, (GUEST_FILES / name).read_bytes(), 0o755) for path, name in SCRIPTS.items()]
    return entries


def pack(unpacked: Unpacked) -> tuple[bytes, bytes, str]:
    """The kernel image, the gzipped initramfs and the kernel release, from the unpacked packages."""
    kernel_path, release = _kernel_image(unpacked.kernel_root)
    busybox = unpacked.busybox_root / "bin" / "busybox"
    if not busybox.is_file():
        raise BuildError(f"the {BUSYBOX_PACKAGE} package has no bin/busybox")
    archive = cpio.newc(initramfs_entries(busybox.read_bytes(), kernel_modules(unpacked.kernel_root, release)))
    return kernel_path.read_bytes(), gzip.compress(archive, compresslevel=9, mtime=0), release


# -- the cache directory


def _file_facts(data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}


def manifest_of(inputs: Inputs, release: str, kernel: bytes, initrd: bytes) -> dict:
    """The manifest of a build: where it came from, what it is, and how to boot it."""
    return {
        "format": FORMAT,
        "kernel": {"package": inputs.kernel_package, "version": inputs.kernel_version, "release": release},
        "busybox": {"package": BUSYBOX_PACKAGE, "version": inputs.busybox_version},
        "recipe_sha256": inputs.recipe_sha256,
        "files": {KERNEL_FILE: _file_facts(kernel), INITRD_FILE: _file_facts(initrd)},
        "cmdline": CMDLINE,
        "cmdline_words": {"virtio=1": "load the virtio-blk modules", "tick=0": "no ticker (idle guest)",
                          "ip4=ADDR/PREFIX": "bring eth0 (virtio-net) up with this address"},
    }


def inputs_of(manifest: dict) -> Inputs:
    """The inputs a manifest was built from."""
    return Inputs(manifest["kernel"]["package"], manifest["kernel"]["version"], manifest["busybox"]["version"],
                  manifest["recipe_sha256"])


def state(directory: Path) -> tuple[dict | None, str]:
    """The manifest in `directory` (None if unreadable) and the build's state there: `missing` (no manifest),
    `current`, `outdated` (of another recipe or manifest format) or `damaged` (files missing or changed)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError):
        return None, "damaged"
    try:
        if manifest.get("format") != FORMAT or manifest.get("recipe_sha256") != recipe_sha256():
            return manifest, "outdated"
        inputs_of(manifest)
        if set(manifest["files"]) != {KERNEL_FILE, INITRD_FILE}:
            return manifest, "damaged"
        for name, facts in manifest["files"].items():
            if _file_facts((directory / name).read_bytes()) != facts:
                return manifest, "damaged"
    except (OSError, KeyError, TypeError, AttributeError):
        return manifest, "damaged"
    return manifest, "current"


def ensure(cache_root: Path | str | None = None) -> Guest:
    """The test guest from the cache, built there first if it is missing or outdated; BuildError if it cannot be."""
    found = load(cache_directory(cache_root))
    return found if found is not None else build(cache_root)


def load(directory: Path) -> Guest | None:
    """The guest built in `directory` if it is complete, intact and of this recipe; None otherwise."""
    manifest, found = state(directory)
    return Guest(directory, manifest) if found == "current" else None


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


@contextmanager
def _locked(directory: Path):
    """Hold the directory's build lock, so that two builds at once (parallel tests) do not interleave."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build(cache_root: Path | str | None = None, force: bool = False, source=None,
          progress: Progress | None = None) -> Guest:
    """Build the guest into `cache_directory(cache_root)`, or reuse the build there if its inputs are current.

    `source` resolves and fetches the packages (DebianArchive by default; tests pass a fake one).
    `progress` is called with one line per step. BuildError says what went wrong and what to do.
    """
    directory, source, say = cache_directory(cache_root), source or DebianArchive(), progress or (lambda _: None)
    with _locked(directory):
        say(f"resolving {KERNEL_META_PACKAGE} and {BUSYBOX_PACKAGE}")
        inputs = source.resolve(recipe_sha256())
        existing = load(directory)
        if existing is not None and not force and inputs_of(existing.manifest) == inputs:
            say(f"up to date in {directory}")
            return existing
        with tempfile.TemporaryDirectory(prefix="cairn-testguest-") as work:
            unpacked = source.fetch(inputs, Path(work), say)
            say("packing the initramfs")
            kernel, initrd, release = pack(unpacked)
        manifest = manifest_of(inputs, release, kernel, initrd)
        _write_atomically(directory / KERNEL_FILE, kernel)
        _write_atomically(directory / INITRD_FILE, initrd)
        # The manifest goes last: a build cut short leaves none that matches, so the next one starts over.
        _write_atomically(directory / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
        return Guest(directory, manifest, built=True)
