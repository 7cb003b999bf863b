"""Tests of the image catalogue loader."""

import json

import pytest

from images import catalogue


def test_builtin_catalogue_loads_with_unique_names():
    """The shipped catalogue loads and names the demo's images."""
    entries = catalogue.builtin()
    assert {"debian-12", "ubuntu-24.04", "alpine-3.20"} <= set(entries)
    assert catalogue.get("debian-12").kind == "image" and catalogue.get("nosuch") is None


def test_duplicate_entries_are_refused(tmp_path):
    """A catalogue naming one image twice is refused with the name."""
    item = {"name": "x", "kind": "image", "family": "f", "version": "1", "arch": "x86_64",
            "min_disk_mib": 1, "min_memory_mib": 1}
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"format": 1, "images": [item, item]}))
    with pytest.raises(catalogue.CatalogueError, match="'x' appears twice"):
        catalogue.load(path)


def test_unknown_kind_is_refused(tmp_path):
    """An entry of an unknown kind is refused naming the kinds."""
    item = {"name": "x", "kind": "iso", "family": "f", "version": "1", "arch": "x86_64",
            "min_disk_mib": 1, "min_memory_mib": 1}
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"format": 1, "images": [item]}))
    with pytest.raises(catalogue.CatalogueError, match="kind 'iso'"):
        catalogue.load(path)
