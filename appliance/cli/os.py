"""`cairn os ...`: this node's OS definitions and the image catalogue (Ganeti's gnt-os): list, info, diagnose.

These commands read this node's disk (the OS search path and the catalogue
files), not the cluster: run them on the node whose definitions you want to
see. The images and osdef modules are imported inside the commands, so that
`cairn os --help` costs typer alone.
"""

from __future__ import annotations

from typing import Optional

import typer

app = typer.Typer(help="OS definitions on this node and images of the catalogue: list, info, diagnose.",
                  no_args_is_help=True)

OUTPUT_HELP = "text for people, json for scripts."
SEARCH_PATH_HELP = ("Directories to search for OS definitions, colon-separated (default: $CAIRN_OS_SEARCH_PATH, "
                    "else Ganeti's: /srv/ganeti/os, /usr/local/lib/ganeti/os, /usr/lib/ganeti/os, "
                    "/usr/share/ganeti/os).")
CATALOGUE_HELP = "An image catalogue file to merge over the built-in one and /etc/cairn/images.json."


def _output(value: str) -> str:
    if value not in ("text", "json"):
        raise typer.BadParameter(f"'{value}' is not text or json", param_hint="--output")
    return value


def _search_path(value: Optional[str]):
    from pathlib import Path

    return tuple(Path(part) for part in value.split(":") if part) if value else None


def _catalogue(extra: Optional[str]) -> dict:
    """The merged catalogue; a broken catalogue file stops the command with its message."""
    from pathlib import Path

    from images import catalogue

    try:
        return catalogue.merged(Path(extra) if extra else None)
    except catalogue.CatalogueError as error:
        typer.echo(f"cairn: {error}", err=True)
        raise typer.Exit(1) from None


def _echo_json(document) -> None:
    import json

    typer.echo(json.dumps(document, indent=2))


def _definition_row(definition) -> dict:
    return {"name": definition.name, "kind": "os-definition", "path": str(definition.path),
            "api_versions": list(definition.api_versions), "api_version": definition.api_version,
            "variants": list(definition.variants),
            "parameters": [{"name": name, "description": text} for name, text in definition.parameters]}


def _image_row(image) -> dict:
    return {"name": image.name, "kind": image.kind, "family": image.family, "version": image.version,
            "arch": image.arch, "min_disk_mib": image.min_disk_mib, "min_memory_mib": image.min_memory_mib,
            "source": image.source, "format": image.format, "size_bytes": image.size_bytes, "sha256": image.sha256,
            "verified": image.verified, "note": image.note}


def _valid_definitions(path) -> list:
    """The definitions an instance can use: valid, and not shadowed by an earlier directory."""
    from images import osdef

    return [d.definition for d in osdef.diagnose(path) if d.valid and d.shadowed_by is None]


@app.command("list")
def os_list(output: str = typer.Option("text", "--output", help=OUTPUT_HELP),
            search_path: Optional[str] = typer.Option(None, "--search-path", help=SEARCH_PATH_HELP),
            catalogue_file: Optional[str] = typer.Option(None, "--catalogue", help=CATALOGUE_HELP)) -> None:
    """The names --os accepts here: valid OS definitions (NAME+VARIANT, as gnt-os list) and verified images."""
    output = _output(output)
    rows = []
    for definition in _valid_definitions(_search_path(search_path)):
        for full_name in definition.full_names:
            rows.append({"name": full_name, "kind": "os-definition", "path": str(definition.path)})
    taken = {row["name"] for row in rows}
    for image in _catalogue(catalogue_file).values():
        if image.kind == "image" and image.verified and image.name not in taken:
            rows.append({"name": image.name, "kind": "image", "source": image.source})
    if output == "json":
        _echo_json(rows)
        return
    typer.echo("Name")
    for row in rows:
        typer.echo(row["name"])


def _definition_lines(definition) -> list[str]:
    lines = [f"{definition.name}:", "  - valid: True", f"  - path: {definition.path}", "  - API versions:"]
    lines += [f"    - {version}" for version in sorted(definition.api_versions)]
    lines.append("  - variants:")
    lines += [f"    - {variant}" for variant in definition.variants]
    lines.append("  - parameters:")
    lines += [f"    - {name}: {text}" for name, text in definition.parameters]
    return lines


def _image_lines(image) -> list[str]:
    lines = [f"{image.name}:", f"  - kind: {image.kind}", f"  - family: {image.family} {image.version} ({image.arch})",
             f"  - minimum disk: {image.min_disk_mib} MiB", f"  - minimum memory: {image.min_memory_mib} MiB"]
    if image.kind == "image":
        size = f"{image.size_bytes} bytes" if image.size_bytes else "unknown"
        lines += [f"  - source: {image.source}", f"  - format: {image.format}", f"  - size: {size}",
                  f"  - sha256: {image.sha256 or 'unknown'}", f"  - verified: {image.verified}"]
    if image.note:
        lines.append(f"  - note: {image.note}")
    return lines


@app.command("info")
def os_info(names: Optional[list[str]] = typer.Argument(None, metavar="[NAME]...",
                                                       help="OS definitions or images (default: all)."),
            output: str = typer.Option("text", "--output", help=OUTPUT_HELP),
            search_path: Optional[str] = typer.Option(None, "--search-path", help=SEARCH_PATH_HELP),
            catalogue_file: Optional[str] = typer.Option(None, "--catalogue", help=CATALOGUE_HELP)) -> None:
    """Show OS definitions (API versions, variants, parameters, path, as gnt-os info) and catalogue images."""
    from images import osdef

    output = _output(output)
    path = _search_path(search_path)
    entries = _catalogue(catalogue_file)
    found = []
    if names:
        for name in names:
            found.append(_one_for_info(name, path, entries))
    else:
        found = _valid_definitions(path) + [image for image in entries.values() if image.kind == "image"]
    if output == "json":
        _echo_json([_definition_row(item) if isinstance(item, osdef.OsDefinition) else _image_row(item)
                    for item in found])
        return
    for item in found:
        for line in _definition_lines(item) if isinstance(item, osdef.OsDefinition) else _image_lines(item):
            typer.echo(line)
        typer.echo("")


def _one_for_info(name: str, path, entries: dict):
    """The definition called `name` (a variant is dropped), else the catalogue entry; stops the command if
    neither exists or the definition is broken."""
    from appliance.cli.output import failure_text
    from images import osdef

    try:
        return osdef.find(name, path)
    except osdef.OsInvalid as error:
        typer.echo(failure_text("", str(error)), err=True)
        raise typer.Exit(1) from None
    except osdef.OsNotFound as error:
        if name in entries:
            return entries[name]
        typer.echo(failure_text("unknown_entity", f"OS '{name}' not known: {error}"), err=True)
        raise typer.Exit(1) from None


@app.command("diagnose")
def os_diagnose(output: str = typer.Option("text", "--output", help=OUTPUT_HELP),
                search_path: Optional[str] = typer.Option(None, "--search-path", help=SEARCH_PATH_HELP),
                catalogue_file: Optional[str] = typer.Option(None, "--catalogue", help=CATALOGUE_HELP)) -> None:
    """Check every OS definition on the search path and every catalogue image; exit 1 if a definition is invalid."""
    import socket

    from images import osdef

    output = _output(output)
    node = socket.gethostname()
    diagnoses = osdef.diagnose(_search_path(search_path))
    images = [(image, _image_status(image)) for image in _catalogue(catalogue_file).values()
              if image.kind == "image"]
    if output == "json":
        _echo_json({"node": node, "definitions": [_diagnosis_row(d) for d in diagnoses],
                    "images": [{"name": image.name, "status": status} for image, status in images]})
    else:
        for line in _diagnose_lines(node, diagnoses, images):
            typer.echo(line)
    if any(not d.valid for d in diagnoses):
        raise typer.Exit(1)


def _diagnosis_row(diagnosis) -> dict:
    row = {"name": diagnosis.name, "path": str(diagnosis.path), "valid": diagnosis.valid,
           "problem": diagnosis.problem, "shadowed_by": str(diagnosis.shadowed_by) if diagnosis.shadowed_by else None}
    if diagnosis.valid:
        definition = diagnosis.definition
        row.update(api_versions=list(definition.api_versions), variants=list(definition.variants),
                   parameters=[name for name, _ in definition.parameters])
    return row


def _diagnose_lines(node: str, diagnoses: list, images: list) -> list[str]:
    """gnt-os diagnose's layout: one `OS:` block per name with the status of each directory holding it."""
    lines = []
    by_name: dict[str, list] = {}
    for diagnosis in diagnoses:
        by_name.setdefault(diagnosis.name, []).append(diagnosis)
    for name in sorted(by_name):
        effective = by_name[name][0]
        lines.append(f"OS: {name} [global status: {'valid' if effective.valid else 'invalid'}]")
        for diagnosis in by_name[name]:
            if diagnosis.valid:
                definition = diagnosis.definition
                status = (f"valid (path: {diagnosis.path}) [variants: {', '.join(definition.variants)}] "
                          f"[parameters: {', '.join(n for n, _ in definition.parameters)}] "
                          f"[api versions: {', '.join(map(str, definition.api_versions))}]")
            else:
                status = f"invalid - {diagnosis.problem}"
            if diagnosis.shadowed_by:
                status += f" [hidden by {diagnosis.shadowed_by}]"
            lines.append(f"  Node: {node}, status: {status}")
        lines.append("")
    for image, status in images:
        lines.append(f"Image: {image.name} [status: {status}]")
    return lines


def _image_status(image) -> str:
    """Whether the image could be installed from this node, from what is cheap to check (not the checksum)."""
    from pathlib import Path

    if not image.verified or not image.sha256:
        return "not verified - no checksum recorded; add it to /etc/cairn/images.json to install it"
    if image.is_url:
        return f"valid (downloaded on install from {image.source})"
    source = Path(image.source)
    if not source.is_file():
        return f"invalid - its source {source} is missing"
    if source.stat().st_size != image.size_bytes:
        return f"invalid - {source} has {source.stat().st_size} bytes, the catalogue says {image.size_bytes}"
    return f"valid (path: {source})"
