"""Tests of image entries in the catalogue (source, checksum, size, format; the operator's file) and of installing
an image onto an instance's first disk, with small raw and qcow2 images made here."""

import hashlib
import http.server
import json
import shutil
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from images import catalogue, install
from images.catalogue import CatalogueError, Image
from images.install import MIB, InstallError

QEMU_IMG = shutil.which("qemu-img")
needs_qemu_img = pytest.mark.skipif(QEMU_IMG is None, reason="qemu-img is not installed (apt-get install qemu-utils)")


def entry_dict(**changes) -> dict:
    item = {"name": "tiny", "kind": "image", "family": "test", "version": "1", "arch": "x86_64",
            "min_disk_mib": 1, "min_memory_mib": 16, "source": "tiny.raw", "format": "raw",
            "sha256": "0" * 64, "size_bytes": 1024}
    item.update(changes)
    return {key: value for key, value in item.items() if value is not None}


def write_catalogue(path: Path, *items: dict) -> Path:
    path.write_text(json.dumps({"format": 1, "images": list(items)}))
    return path


def image_file(path: Path, size_bytes: int, marks: dict[int, bytes]) -> Path:
    """A sparse file of `size_bytes` with `marks` (offset -> bytes) written into it."""
    with open(path, "wb") as out:
        out.truncate(size_bytes)
        for offset, data in marks.items():
            out.seek(offset)
            out.write(data)
    return path


def entry_for(path: Path, image_format: str = "raw", **changes) -> Image:
    """A verified catalogue entry describing the file at `path`."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    image = Image("tiny", "image", "test", "1", "x86_64", 1, 16, source=str(path), sha256=digest,
                  size_bytes=path.stat().st_size, format=image_format)
    return replace(image, **changes)


# -- the catalogue


def test_builtin_images_name_a_source_and_are_honest_about_checksums():
    """Every shipped image has an http(s) source and a format; one without a sha256 is marked not verified."""
    images = [entry for entry in catalogue.builtin().values() if entry.kind == "image"]
    assert images
    for image in images:
        assert image.is_url and image.format in catalogue.FORMATS
        assert image.verified == bool(image.sha256)


def test_an_image_without_source_is_refused(tmp_path):
    """An image entry with no source is refused, naming the entry and the kinds of source."""
    path = write_catalogue(tmp_path / "c.json", entry_dict(source=None))
    with pytest.raises(CatalogueError, match=r"image 'tiny' has no source; give a local path .* or an http\(s\) URL"):
        catalogue.load(path)


def test_an_unknown_format_is_refused(tmp_path):
    """An image whose format is neither raw nor qcow2 is refused naming both."""
    path = write_catalogue(tmp_path / "c.json", entry_dict(format="vmdk"))
    with pytest.raises(CatalogueError, match="format 'vmdk'; give one of raw, qcow2"):
        catalogue.load(path)


def test_a_malformed_sha256_is_refused(tmp_path):
    """A sha256 that is not 64 lower-case hex digits is refused."""
    path = write_catalogue(tmp_path / "c.json", entry_dict(sha256="ABC"))
    with pytest.raises(CatalogueError, match="sha256 'ABC'; give the 64 lower-case hex digits"):
        catalogue.load(path)


def test_a_verified_image_needs_its_checksum_and_size(tmp_path):
    """A verified image without a sha256 is refused, pointing at "verified": false."""
    path = write_catalogue(tmp_path / "c.json", entry_dict(sha256=""))
    with pytest.raises(CatalogueError, match='lacks its sha256 or size_bytes.*"verified": false'):
        catalogue.load(path)


def test_an_unverified_image_may_leave_its_checksum_empty(tmp_path):
    """An image marked not verified loads without sha256 and size."""
    path = write_catalogue(tmp_path / "c.json", entry_dict(sha256="", size_bytes=0, verified=False))
    assert catalogue.load(path)["tiny"].verified is False


def test_size_is_spelt_size_bytes(tmp_path):
    """An entry giving 'size' is told to name it 'size_bytes'."""
    path = write_catalogue(tmp_path / "c.json", entry_dict(size_bytes=None, size=1024))
    with pytest.raises(CatalogueError, match="'tiny' has 'size'; name it 'size_bytes'"):
        catalogue.load(path)


def test_a_field_of_the_wrong_type_is_refused(tmp_path):
    """A size given as a string (or a flag as a number) is refused naming the field and the type."""
    path = write_catalogue(tmp_path / "c.json", entry_dict(size_bytes="1024"))
    with pytest.raises(CatalogueError, match="size_bytes '1024'; give a int"):
        catalogue.load(path)


def test_a_relative_source_is_read_beside_the_catalogue(tmp_path):
    """A relative local source is made absolute against the catalogue file's directory."""
    (tmp_path / "sub").mkdir()
    path = write_catalogue(tmp_path / "sub" / "c.json", entry_dict(source="disks/tiny.raw"))
    image = catalogue.load(path)["tiny"]
    assert image.source == str(tmp_path / "sub" / "disks" / "tiny.raw") and not image.is_url


def test_only_http_and_https_urls_are_sources(tmp_path):
    """An ftp:// source is refused."""
    path = write_catalogue(tmp_path / "c.json", entry_dict(source="ftp://example.org/tiny.raw"))
    with pytest.raises(CatalogueError, match="only local paths and http\\(s\\) URLs"):
        catalogue.load(path)


def test_an_os_definition_has_no_image_fields(tmp_path):
    """An os-definition entry that names a source is refused: its scripts install the OS."""
    path = write_catalogue(tmp_path / "c.json", entry_dict(kind="os-definition", sha256=None, size_bytes=None,
                                                           format=None))
    with pytest.raises(CatalogueError, match="os-definition 'tiny' has source"):
        catalogue.load(path)


def test_a_file_that_is_not_json_is_named(tmp_path):
    """A catalogue that is not JSON is refused naming the file."""
    path = tmp_path / "c.json"
    path.write_text("{nope")
    with pytest.raises(CatalogueError, match=f"{path}: not JSON"):
        catalogue.load(path)


def test_the_operators_catalogue_is_merged_over_the_builtin_one(tmp_path):
    """An entry of the local file replaces the shipped one of that name; new names are added."""
    local = write_catalogue(tmp_path / "images.json", entry_dict(name="debian-12", source="/srv/d12.qcow2",
                                                                 format="qcow2"), entry_dict(name="mine"))
    entries = catalogue.merged(local=local)
    assert entries["debian-12"].source == "/srv/d12.qcow2" and entries["debian-12"].verified
    assert "mine" in entries and "ubuntu-24.04" in entries


def test_a_given_catalogue_wins_over_the_local_one(tmp_path):
    """The file given by path is merged last; an absent local file is no error."""
    extra = write_catalogue(tmp_path / "extra.json", entry_dict(name="debian-12", source="/b.raw"))
    entries = catalogue.merged(extra, local=tmp_path / "absent.json")
    assert entries["debian-12"].source == "/b.raw"


def test_a_missing_given_catalogue_is_an_error(tmp_path):
    """A catalogue file given by path must exist."""
    with pytest.raises(CatalogueError, match="cannot read the catalogue"):
        catalogue.merged(tmp_path / "absent.json", local=None)


# -- installing raw images


def test_a_raw_image_lands_at_the_start_of_a_bigger_disk(tmp_path):
    """The image's bytes start the disk, the disk keeps its size and the rest reads as zeros."""
    image = image_file(tmp_path / "tiny.raw", 3 * MIB + 5, {0: b"BOOT", 2 * MIB: b"middle", 3 * MIB: b"tail!"})
    disk = image_file(tmp_path / "disk0.raw", 8 * MIB, {})
    assert install.install_image(entry_for(image), disk, 8) == 3 * MIB + 5
    data = disk.read_bytes()
    assert len(data) == 8 * MIB and data[:3 * MIB + 5] == image.read_bytes()
    assert data[3 * MIB + 5:] == bytes(len(data) - 3 * MIB - 5)


def test_zeros_of_the_image_overwrite_old_data_on_the_disk(tmp_path):
    """A block of zeros in the image replaces what the disk held there before."""
    image = image_file(tmp_path / "tiny.raw", 2 * MIB, {0: b"new"})
    disk = image_file(tmp_path / "disk0.raw", 4 * MIB, {MIB + 10: b"old data"})
    install.install_image(entry_for(image), disk, 4)
    assert disk.read_bytes()[:2 * MIB] == image.read_bytes()


def test_a_sparse_disk_stays_sparse(tmp_path):
    """Installing a mostly empty image allocates little more than its data on a sparse disk."""
    image = image_file(tmp_path / "tiny.raw", 16 * MIB, {0: b"x", 15 * MIB: b"y"})
    disk = image_file(tmp_path / "disk0.raw", 64 * MIB, {})
    install.install_image(entry_for(image), disk, 64)
    assert disk.stat().st_blocks * 512 <= 4 * MIB


def test_a_missing_disk_file_is_made_at_the_given_size(tmp_path):
    """With no disk file yet, the install makes one of size_mib."""
    image = image_file(tmp_path / "tiny.raw", MIB, {0: b"hello"})
    disk = tmp_path / "disk0.raw"
    install.install_image(entry_for(image), disk, 2)
    assert disk.stat().st_size == 2 * MIB and disk.read_bytes()[:5] == b"hello"


def test_an_image_larger_than_the_disk_is_refused_naming_both_sizes(tmp_path):
    """An image bigger than the disk is refused before writing, naming both sizes."""
    image = image_file(tmp_path / "tiny.raw", 3 * MIB, {0: b"big"})
    disk = image_file(tmp_path / "disk0.raw", 2 * MIB, {})
    with pytest.raises(InstallError, match=r"is 3145728 bytes \(3 MiB\) but the disk .* has 2097152 bytes \(2 MiB\)"):
        install.install_image(entry_for(image), disk, 2)
    assert disk.read_bytes() == bytes(2 * MIB)


def test_a_wrong_checksum_is_refused_before_writing(tmp_path):
    """An image whose sha256 differs from the catalogue's is refused and the disk is untouched."""
    image = image_file(tmp_path / "tiny.raw", MIB, {0: b"evil"})
    disk = image_file(tmp_path / "disk0.raw", 2 * MIB, {})
    with pytest.raises(InstallError, match="has sha256 [0-9a-f]{64} but the catalogue says 1111"):
        install.install_image(entry_for(image, sha256="1" * 64), disk, 2)
    assert disk.read_bytes() == bytes(2 * MIB)


def test_a_wrong_size_is_refused_before_writing(tmp_path):
    """An image whose size differs from the catalogue's is refused before its checksum is read."""
    image = image_file(tmp_path / "tiny.raw", MIB, {0: b"x"})
    disk = image_file(tmp_path / "disk0.raw", 2 * MIB, {})
    with pytest.raises(InstallError, match=f"has {MIB} bytes but the catalogue says 12"):
        install.install_image(entry_for(image, size_bytes=12), disk, 2)


def test_an_unverified_image_is_never_installed(tmp_path):
    """An image the catalogue marks not verified is refused with a message saying so and how to fix it."""
    image = image_file(tmp_path / "tiny.raw", MIB, {})
    with pytest.raises(InstallError, match="'tiny' is not verified.*sha256, size_bytes and \"verified\": true"):
        install.install_image(entry_for(image, verified=False, sha256=""), tmp_path / "disk0.raw", 2)
    assert not (tmp_path / "disk0.raw").exists()


def test_an_os_definition_is_not_an_image(tmp_path):
    """Installing an os-definition entry as an image is refused, pointing at its scripts."""
    with pytest.raises(InstallError, match="'noop' is an OS definition, not an image"):
        install.install_image(catalogue.get("noop"), tmp_path / "disk0.raw", 2)


def test_a_missing_source_is_named(tmp_path):
    """A local source that does not exist is named in the error."""
    image = image_file(tmp_path / "tiny.raw", MIB, {})
    entry = entry_for(image)
    image.unlink()
    with pytest.raises(InstallError, match=f"its source {image} does not exist"):
        install.install_image(entry, tmp_path / "disk0.raw", 2)


# -- qcow2


def qcow2_of(raw: Path, *extra: str) -> Path:
    target = raw.with_suffix(".qcow2")
    subprocess.run([QEMU_IMG, "convert", "-f", "raw", "-O", "qcow2", *extra, str(raw), str(target)], check=True,
                   capture_output=True)
    return target


@needs_qemu_img
def test_a_qcow2_image_is_converted_onto_the_disk(tmp_path):
    """A qcow2 image is written as raw bytes onto the disk, which keeps its size."""
    raw = image_file(tmp_path / "tiny.raw", 2 * MIB, {0: b"qcow", MIB + 7: b"inside"})
    disk = image_file(tmp_path / "disk0.raw", 4 * MIB, {MIB: b"stale"})
    assert install.install_image(entry_for(qcow2_of(raw), "qcow2"), disk, 4) == 2 * MIB
    data = disk.read_bytes()
    assert len(data) == 4 * MIB and data[:2 * MIB] == raw.read_bytes()


@needs_qemu_img
def test_a_qcow2_image_larger_than_the_disk_is_refused(tmp_path):
    """A qcow2 whose virtual size exceeds the disk is refused, though its file is small."""
    raw = image_file(tmp_path / "tiny.raw", 8 * MIB, {0: b"x"})
    disk = image_file(tmp_path / "disk0.raw", 4 * MIB, {})
    with pytest.raises(InstallError, match=r"is 8388608 bytes \(8 MiB\) but the disk"):
        install.install_image(entry_for(qcow2_of(raw), "qcow2"), disk, 4)


@needs_qemu_img
def test_a_qcow2_with_a_backing_file_is_refused(tmp_path):
    """A qcow2 that refers to a backing file is refused: it could read other files of the node."""
    base = image_file(tmp_path / "base.raw", MIB, {0: b"secret"})
    overlay = tmp_path / "overlay.qcow2"
    subprocess.run([QEMU_IMG, "create", "-f", "qcow2", "-F", "raw", "-b", str(base), str(overlay)], check=True,
                   capture_output=True)
    with pytest.raises(InstallError, match="refers to another file"):
        install.install_image(entry_for(overlay, "qcow2"), tmp_path / "disk0.raw", 2)


def test_a_qcow2_without_qemu_img_says_what_to_install(tmp_path, monkeypatch):
    """Without qemu-img, a qcow2 install names the package to install."""
    monkeypatch.setattr(install.shutil, "which", lambda name: None)
    image = image_file(tmp_path / "tiny.qcow2", MIB, {})
    with pytest.raises(InstallError, match="install qemu-utils"):
        install.install_image(entry_for(image, "qcow2"), tmp_path / "disk0.raw", 2)


# -- downloads (from a server on the loopback interface)


@pytest.fixture
def served(tmp_path):
    """A directory served over http on 127.0.0.1, and the list of paths requested."""
    root = tmp_path / "www"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


def test_a_url_image_is_downloaded_once_into_the_cache(tmp_path, served):
    """A URL source is fetched into the cache under its checksum and reused by the next install."""
    root, base, requests = served
    image = image_file(root / "tiny.raw", MIB, {0: b"net"})
    entry = entry_for(image, source=f"{base}/tiny.raw")
    cache = tmp_path / "cache"
    for disk in ("a.raw", "b.raw"):
        install.install_image(entry, tmp_path / disk, 2, cache_dir=cache)
        assert (tmp_path / disk).read_bytes()[:3] == b"net"
    assert [p.name for p in cache.iterdir()] == [f"{entry.sha256}.raw"] and len(requests) == 1


def test_a_download_with_other_bytes_is_refused_and_not_kept(tmp_path, served):
    """A download whose checksum differs is refused, and nothing is left in the cache."""
    root, base, _ = served
    image = image_file(root / "tiny.raw", MIB, {0: b"net"})
    entry = entry_for(image, source=f"{base}/tiny.raw")
    image_file(root / "tiny.raw", MIB, {0: b"bad"})
    with pytest.raises(InstallError, match="has sha256 .* but the catalogue says"):
        install.install_image(entry, tmp_path / "disk0.raw", 2, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_download_that_fails_says_what_to_do(tmp_path, served):
    """An answer of 404 is reported with the URL and the local-file alternative."""
    _, base, _ = served
    entry = Image("gone", "image", "t", "1", "x86_64", 1, 1, source=f"{base}/gone.raw", sha256="2" * 64,
                  size_bytes=10, format="raw")
    with pytest.raises(InstallError, match="cannot download image 'gone' from .*/gone.raw: the server answered 404.*images.json"):
        install.install_image(entry, tmp_path / "disk0.raw", 2, cache_dir=tmp_path / "cache")
