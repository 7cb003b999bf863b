"""The catalogue of OS images and OS definitions: data files and their loader.

An entry is either an `image` (a disk image copied onto the instance's first
disk by `images.install`) or an `os-definition` (Ganeti-style scripts found on
the node, run by `images.osdef`). An image names where its bytes are
(`source`: a local path, absolute or relative to the catalogue file, or an
http(s) URL), their `sha256`, their `size_bytes` and their `format` (raw or
qcow2). An image whose checksum nobody has recorded yet is marked
`"verified": false`; it may then leave `sha256` empty, and it is listed but
never installed. Nothing here fetches or writes anything.

The built-in catalogue ships with Cairn; an operator's catalogue
(`/etc/cairn/images.json`, or a file given by path) has the same format and
is merged over it, entry by entry.
"""

import json
import re
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path

CATALOGUE = Path(__file__).with_name("catalogue.json")
LOCAL_CATALOGUE = Path("/etc/cairn/images.json")
KINDS = ("image", "os-definition")
FORMATS = ("raw", "qcow2")
URL_PREFIXES = ("http://", "https://")
SHA256 = re.compile(r"[0-9a-f]{64}")
IMAGE_FIELDS = ("source", "sha256", "size_bytes", "format")


@dataclass(frozen=True)
class Image:
    name: str
    kind: str
    family: str
    version: str
    arch: str
    min_disk_mib: int
    min_memory_mib: int
    # Images only (an os-definition leaves them empty). A local `source` is made absolute on load.
    source: str = ""
    sha256: str = ""
    size_bytes: int = 0
    format: str = ""
    verified: bool = True
    note: str = ""

    @property
    def is_url(self) -> bool:
        """Whether the bytes are downloaded (http or https) rather than read from a local file."""
        return self.source.startswith(URL_PREFIXES)


class CatalogueError(ValueError):
    """The catalogue file is malformed."""


def _entry(path: Path, item) -> Image:
    """One entry of the file, with its fields present and of the right types."""
    if not isinstance(item, dict):
        raise CatalogueError(f"{path}: every entry of 'images' must be an object, not {item!r}")
    name = item.get("name", "?")
    if "size" in item:
        raise CatalogueError(f"{path}: entry {name!r} has 'size'; name it 'size_bytes' (the image's size in bytes)")
    try:
        image = Image(**item)
    except TypeError as error:
        raise CatalogueError(f"{path}: entry {name!r} does not fit: {error}") from None
    for field in fields(Image):
        value = getattr(image, field.name)
        # `type(...) is` rather than isinstance: JSON's true must not pass for a size.
        if type(value) is not field.type:
            raise CatalogueError(f"{path}: entry {name!r} has {field.name} {value!r}; "
                                 f"give a {field.type.__name__} (e.g. {field.type()!r})")
    return image


def _checked_image(path: Path, image: Image) -> Image:
    """An image entry checked for a usable source, format, size and checksum; a local source made absolute."""
    where = f"{path}: image {image.name!r}"
    if not image.source:
        raise CatalogueError(f"{where} has no source; give a local path (absolute, or relative to {path.parent}) "
                             "or an http(s) URL")
    if "://" in image.source and not image.is_url:
        raise CatalogueError(f"{where} has source {image.source!r}; only local paths and http(s) URLs are supported")
    if image.format not in FORMATS:
        raise CatalogueError(f"{where} has format {image.format!r}; give one of {', '.join(FORMATS)}")
    if image.sha256 and not SHA256.fullmatch(image.sha256):
        raise CatalogueError(f"{where} has sha256 {image.sha256!r}; give the 64 lower-case hex digits that "
                             "'sha256sum' prints for the file")
    if image.size_bytes < 0:
        raise CatalogueError(f"{where} has size_bytes {image.size_bytes}; give the file's size in bytes")
    if image.verified and (not image.sha256 or image.size_bytes <= 0):
        raise CatalogueError(f"{where} is marked verified but lacks its sha256 or size_bytes; give both "
                             "('sha256sum FILE', 'stat -c %s FILE'), or mark it \"verified\": false")
    if not image.is_url and not Path(image.source).is_absolute():
        return replace(image, source=str((path.parent / image.source).resolve()))
    return image


def _checked_definition(path: Path, image: Image) -> Image:
    """An os-definition entry: it has no bytes of its own."""
    given = [name for name in IMAGE_FIELDS if getattr(image, name)]
    if given:
        raise CatalogueError(f"{path}: os-definition {image.name!r} has {', '.join(given)}; only images have "
                             "them (the definition's scripts install the OS)")
    return image


def load(path: Path = CATALOGUE) -> dict[str, Image]:
    """Every entry of a catalogue file by name, checked."""
    try:
        raw = json.loads(path.read_text())
    except OSError as error:
        raise CatalogueError(f"cannot read the catalogue {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise CatalogueError(f"{path}: not JSON ({error})") from None
    if not isinstance(raw, dict) or raw.get("format") != 1:
        found = raw.get("format") if isinstance(raw, dict) else None
        raise CatalogueError(f"{path}: unknown catalogue format {found!r}; expected 1")
    items = raw.get("images")
    if not isinstance(items, list):
        raise CatalogueError(f"{path}: 'images' must be a list of entries")
    images = [_entry(path, item) for item in items]
    entries: dict[str, Image] = {}
    for image in images:
        if image.kind not in KINDS:
            raise CatalogueError(f"{path}: entry {image.name!r} has kind {image.kind!r}; use one of {KINDS}")
        if image.name in entries:
            raise CatalogueError(f"{path}: entry {image.name!r} appears twice")
        entries[image.name] = image
    check = {"image": _checked_image, "os-definition": _checked_definition}
    return {name: check[image.kind](path, image) for name, image in entries.items()}


@lru_cache(maxsize=1)
def builtin() -> dict[str, Image]:
    """The catalogue shipped with Cairn."""
    return load()


def merged(extra: Path | None = None, local: Path | None = LOCAL_CATALOGUE) -> dict[str, Image]:
    """The built-in catalogue, then the operator's `local` one if that file exists, then `extra` (which must):
    a later file's entry replaces an earlier one of the same name."""
    entries = dict(builtin())
    if local is not None and local.exists():
        entries.update(load(local))
    if extra is not None:
        entries.update(load(extra))
    return entries


def get(name: str) -> Image | None:
    """The shipped entry called `name`, if any."""
    return builtin().get(name)
