"""The catalogue of OS images and OS definitions: a data file and its loader.

An entry is either an `image` (a disk image copied onto the instance's first
disk) or an `os-definition` (Ganeti-style create scripts). Nothing here
fetches anything; where the bytes come from is the images driver's business.
"""

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CATALOGUE = Path(__file__).with_name("catalogue.json")
KINDS = ("image", "os-definition")


@dataclass(frozen=True)
class Image:
    name: str
    kind: str
    family: str
    version: str
    arch: str
    min_disk_mib: int
    min_memory_mib: int


class CatalogueError(ValueError):
    """The catalogue file is malformed."""


def load(path: Path = CATALOGUE) -> dict[str, Image]:
    """Every entry of a catalogue file by name, checked."""
    raw = json.loads(path.read_text())
    if raw.get("format") != 1:
        raise CatalogueError(f"{path}: unknown catalogue format {raw.get('format')!r}; expected 1")
    entries: dict[str, Image] = {}
    for item in raw["images"]:
        try:
            image = Image(**item)
        except TypeError as error:
            raise CatalogueError(f"{path}: entry {item.get('name', '?')!r} does not fit: {error}") from None
        if image.kind not in KINDS:
            raise CatalogueError(f"{path}: entry {image.name!r} has kind {image.kind!r}; use one of {KINDS}")
        if image.name in entries:
            raise CatalogueError(f"{path}: entry {image.name!r} appears twice")
        entries[image.name] = image
    return entries


@lru_cache(maxsize=1)
def builtin() -> dict[str, Image]:
    """The catalogue shipped with Cairn."""
    return load()


def get(name: str) -> Image | None:
    """The shipped entry called `name`, if any."""
    return builtin().get(name)
