"""Putting a catalogue image onto an instance's first disk: fetch it, verify it, convert it, write it.

The image's size and sha256 are checked against the catalogue before a byte
reaches the disk, and an image larger than the disk is refused. A raw image
is copied in Python (blocks of zeros are skipped where the disk already reads
as zeros, so sparse disk files stay sparse); a qcow2 image is written by
`qemu-img convert` (from qemu-utils). The disk file keeps its size when it is
bigger than the image.

Everything here blocks (file copies, downloads, qemu-img): the node's daemon
calls `install_image` from a worker thread.
"""

import hashlib
import http.client
import json
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from images.catalogue import LOCAL_CATALOGUE, Image

MIB = 1024 * 1024
CHUNK_BYTES = MIB
ZEROS = bytes(CHUNK_BYTES)
CACHE_DIR = Path("/var/cache/cairn/images")
DOWNLOAD_TIMEOUT_S = 60.0
QEMU_IMG_TIMEOUT_S = 3600.0


class InstallError(Exception):
    """The image cannot be installed; the message says why and what to do."""


def install_image(entry: Image, disk_path: Path, size_mib: int, *, cache_dir: Path = CACHE_DIR,
                  download_timeout_s: float = DOWNLOAD_TIMEOUT_S) -> int:
    """Write the image `entry` onto the raw disk at `disk_path` (made, or grown, to `size_mib` MiB if smaller);
    the image's size in bytes as the guest sees it. InstallError says what is wrong, before anything is written
    for a bad image or a disk too small."""
    check_installable(entry)
    if size_mib <= 0:
        raise InstallError(f"disk size {size_mib} MiB for image {entry.name!r}; give the disk's size in MiB")
    source = download(entry, cache_dir, download_timeout_s) if entry.is_url else Path(entry.source)
    verify(entry, source)
    image_bytes = virtual_size(entry, source)
    disk_bytes = max(size_mib * MIB, _size_of(disk_path))
    if image_bytes > disk_bytes:
        raise InstallError(f"image {entry.name!r} is {image_bytes} bytes ({_mib(image_bytes)} MiB) but the disk "
                           f"{disk_path} has {disk_bytes} bytes ({disk_bytes // MIB} MiB); give the instance a first "
                           f"disk of at least {_mib(image_bytes)} MiB")
    _prepare_disk(disk_path, size_mib * MIB)
    if entry.format == "raw":
        copy_raw(source, disk_path)
    else:
        _convert_qcow2(entry, source, disk_path)
    return image_bytes


def check_installable(entry: Image) -> None:
    """InstallError unless `entry` is an image whose bytes the catalogue vouches for."""
    if entry.kind != "image":
        raise InstallError(f"{entry.name!r} is an OS definition, not an image; its scripts install it "
                           "(images.osdef.create)")
    if not entry.verified or not entry.sha256:
        hint = f" ({entry.note})" if entry.note else ""
        raise InstallError(f"image {entry.name!r} is not verified: the catalogue records no checksum for it, so "
                           f"Cairn cannot tell whether a download is the right file{hint}. Add the image to "
                           f"{LOCAL_CATALOGUE} with its sha256, size_bytes and \"verified\": true to install it")


def verify(entry: Image, path: Path) -> None:
    """InstallError unless the file at `path` has the size and sha256 the catalogue gives for `entry`."""
    try:
        size = path.stat().st_size
        if size != entry.size_bytes:
            raise InstallError(f"image {entry.name!r}: {path} has {size} bytes but the catalogue says "
                               f"{entry.size_bytes}; it is not the catalogued file (fetch it again, or correct "
                               "the catalogue)")
        with open(path, "rb") as source:
            digest = hashlib.file_digest(source, "sha256").hexdigest()
    except FileNotFoundError:
        raise InstallError(f"image {entry.name!r}: its source {path} does not exist; put the image there or "
                           "correct 'source' in the catalogue") from None
    except OSError as error:
        raise InstallError(f"image {entry.name!r}: cannot read {path}: {error.strerror}") from None
    if digest != entry.sha256:
        raise InstallError(f"image {entry.name!r}: {path} has sha256 {digest} but the catalogue says "
                           f"{entry.sha256}; it is not the catalogued file (fetch it again, or correct the catalogue)")


def download(entry: Image, cache_dir: Path, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """The image's file in `cache_dir`, downloaded unless a file there already has the right size and checksum.

    The download stops as soon as it grows past the catalogued size, and it is kept only if it matches.
    """
    target = cache_dir / f"{entry.sha256}.{entry.format}"
    if target.exists():
        try:
            verify(entry, target)
            return target
        except InstallError:
            target.unlink(missing_ok=True)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=cache_dir, prefix=".partial-")
    except OSError as error:
        raise InstallError(f"cannot write to the image cache {cache_dir}: {error.strerror}") from None
    try:
        with os.fdopen(handle, "wb") as out:
            _fetch(entry, out, timeout_s)
        verify(entry, Path(partial))
        os.replace(partial, target)
    finally:
        Path(partial).unlink(missing_ok=True)
    return target


def _fetch(entry: Image, out, timeout_s: float) -> None:
    """Copy the URL's body into `out`, refusing more bytes than the catalogue's size."""
    received = 0
    try:
        with urllib.request.urlopen(entry.source, timeout=timeout_s) as answer:
            while chunk := answer.read(CHUNK_BYTES):
                received += len(chunk)
                if received > entry.size_bytes:
                    raise InstallError(f"image {entry.name!r}: {entry.source} sends more than the catalogued "
                                       f"{entry.size_bytes} bytes; it is not the catalogued file")
                try:
                    out.write(chunk)
                except OSError as error:
                    raise InstallError(f"cannot write image {entry.name!r} into the image cache: "
                                       f"{error.strerror}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
        if isinstance(error, urllib.error.HTTPError):
            reason = f"the server answered {error.code} {error.reason}"
        else:
            reason = getattr(error, "reason", None) or error
        raise InstallError(f"cannot download image {entry.name!r} from {entry.source}: {reason}; check the node's "
                           f"network, or copy the file onto the node and name its path in {LOCAL_CATALOGUE}") from None


def virtual_size(entry: Image, path: Path) -> int:
    """The bytes the image fills on a disk: the file's size for raw, the virtual size for qcow2 (which must
    stand alone: an image with a backing or data file is refused, as it could read other files of the node)."""
    if entry.format == "raw":
        return path.stat().st_size
    info = _qemu_img(entry, ["info", "--output=json", "-f", "qcow2", str(path)], timeout_s=60)
    try:
        details = json.loads(info)
        size = int(details["virtual-size"])
    except (ValueError, KeyError, TypeError):
        raise InstallError(f"image {entry.name!r}: qemu-img could not read {path} as qcow2") from None
    data = details.get("format-specific", {}).get("data", {})
    if details.get("backing-filename") or data.get("data-file"):
        raise InstallError(f"image {entry.name!r}: {path} refers to another file (a backing or data file); "
                           "flatten it first ('qemu-img convert -O qcow2 IN OUT')")
    return size


def copy_raw(source: Path, disk_path: Path) -> None:
    """Copy a raw image onto the start of the disk without changing the disk's size."""
    with open(source, "rb") as image, open(disk_path, "r+b") as disk:
        offset = 0
        while chunk := image.read(CHUNK_BYTES):
            # A zero block need not be written where the disk already holds zeros (a hole of a sparse file).
            if chunk != ZEROS[:len(chunk)] or disk.read(len(chunk)) != ZEROS[:len(chunk)]:
                disk.seek(offset)
                disk.write(chunk)
            offset += len(chunk)
            disk.seek(offset)
        disk.flush()
        os.fsync(disk.fileno())


def _convert_qcow2(entry: Image, source: Path, disk_path: Path) -> None:
    # -n: write into the existing disk instead of making a new file of the image's size.
    _qemu_img(entry, ["convert", "-n", "-f", "qcow2", "-O", "raw", str(source), str(disk_path)],
              timeout_s=QEMU_IMG_TIMEOUT_S)


def _qemu_img(entry: Image, arguments: list[str], timeout_s: float) -> str:
    """qemu-img's output; InstallError with its message if it fails or is missing."""
    program = shutil.which("qemu-img")
    if program is None:
        raise InstallError(f"image {entry.name!r} is qcow2 and qemu-img is not installed; install qemu-utils "
                           "(apt-get install qemu-utils)")
    try:
        result = subprocess.run([program, *arguments], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise InstallError(f"image {entry.name!r}: qemu-img {arguments[0]} took longer than "
                           f"{timeout_s:.0f} s") from None
    if result.returncode != 0:
        raise InstallError(f"image {entry.name!r}: qemu-img {arguments[0]} failed: {result.stderr.strip()}")
    return result.stdout


def _prepare_disk(disk_path: Path, size_bytes: int) -> None:
    """Make the disk file if it is missing, and grow it to `size_bytes` if it is smaller (sparse either way);
    a block device is left as it is."""
    try:
        if disk_path.exists() and not disk_path.is_file():
            return
        with open(disk_path, "ab") as disk:
            if os.fstat(disk.fileno()).st_size < size_bytes:
                os.ftruncate(disk.fileno(), size_bytes)
    except OSError as error:
        raise InstallError(f"cannot open the disk {disk_path}: {error.strerror}") from None


def _size_of(disk_path: Path) -> int:
    """The disk's size in bytes (a file's or a block device's); 0 if it does not exist yet."""
    try:
        with open(disk_path, "rb") as disk:
            return disk.seek(0, os.SEEK_END)
    except FileNotFoundError:
        return 0
    except OSError as error:
        raise InstallError(f"cannot open the disk {disk_path}: {error.strerror}") from None


def _mib(size_bytes: int) -> int:
    return -(-size_bytes // MIB)
