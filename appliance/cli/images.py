"""`cairn images ...`: build and describe the images Cairn makes itself (for now the test guest of the qemu tests).

`cairn images build testguest` downloads two Debian packages and packs a kernel and
an initramfs into the cache directory (see images.testguest); `cairn images info
testguest` prints its manifest. The builder is imported only when a command runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Images Cairn builds itself: the test guest (a Debian kernel and a busybox initramfs).",
                  no_args_is_help=True)

IMAGES = ("testguest",)
IMAGE = typer.Argument(..., metavar="IMAGE", help="The image: testguest.")
CACHE_DIR = typer.Option(None, "--cache-dir", help="The cache directory; the image goes into its testguest/ "
                         "(default $CAIRN_CACHE, else ~/.cache/cairn).")
OUTPUT = typer.Option("text", "--output", help="Output format: text for people, json for scripts.")
MIB = 1024 * 1024


def fail(message: str, code: int = 1) -> None:
    """Print an error on stderr and exit."""
    typer.echo(f"cairn: {message}", err=True)
    raise typer.Exit(code)


def _check(image: str, output: str) -> None:
    if image not in IMAGES:
        fail(f"unknown image '{image}'; the images Cairn builds are: {', '.join(IMAGES)}", 2)
    if output not in ("text", "json"):
        fail(f"unknown --output '{output}'; use text or json", 2)


def _file_lines(directory: Path, manifest: dict) -> list[str]:
    lines = []
    for name, facts in manifest.get("files", {}).items():
        lines.append(f"  {name:<10} {directory / name} ({facts['size_bytes'] / MIB:.1f} MiB, "
                     f"sha256 {facts['sha256'][:16]}...)")
    return lines


def _guest_lines(directory: Path, manifest: dict) -> list[str]:
    kernel, busybox = manifest["kernel"], manifest["busybox"]
    return [f"  kernel     {kernel['package']} {kernel['version']} (release {kernel['release']})",
            f"  busybox    {busybox['package']} {busybox['version']}",
            *_file_lines(directory, manifest),
            f"  manifest   {directory / 'testguest.json'}",
            f"  cmdline    {manifest['cmdline']} (add virtio=1 for virtio-blk disks, tick=0 for an idle guest)"]


@app.command()
def build(image: str = IMAGE, cache_dir: Optional[Path] = CACHE_DIR,
          force: bool = typer.Option(False, "--force", help="Rebuild even if an intact build of the same "
                                     "packages is there."),
          output: str = OUTPUT) -> None:
    """Build an image into the cache: download the Debian packages, unpack them, pack the initramfs.

    Does nothing when an intact build of the same package versions and recipe is already there.
    Needs apt-get, apt-cache and dpkg, and the Debian archive (about 28 MB to download).
    """
    _check(image, output)
    from appliance.clock import monotonic
    from images import testguest

    started = monotonic()

    def progress(line: str) -> None:
        typer.echo(f"[{monotonic() - started:5.1f} s] {line}", err=True)

    try:
        guest = testguest.build(cache_dir, force=force, progress=progress)
    except testguest.BuildError as error:
        fail(f"cannot build the test guest: {error}")
    seconds = round(monotonic() - started, 1)
    if output == "json":
        typer.echo(json.dumps({"directory": str(guest.directory), "built": guest.built, "seconds": seconds,
                               "kernel": str(guest.kernel), "initrd": str(guest.initrd),
                               "manifest": guest.manifest}, indent=2))
        return
    verb = f"built in {seconds:g} s" if guest.built else "already built (up to date; --force rebuilds)"
    typer.echo(f"Test guest in {guest.directory}: {verb}")
    for line in _guest_lines(guest.directory, guest.manifest):
        typer.echo(line)


@app.command()
def info(image: str = IMAGE, cache_dir: Optional[Path] = CACHE_DIR, output: str = OUTPUT) -> None:
    """Show an image's manifest: its packages and versions, its files and the kernel command line."""
    _check(image, output)
    from images import testguest

    directory = testguest.cache_directory(cache_dir)
    manifest, state = testguest.state(directory)
    if manifest is None:
        fail(f"no test guest in {directory} ({state}); build it with 'cairn images build testguest'")
    if output == "json":
        typer.echo(json.dumps({"directory": str(directory), "state": state, "manifest": manifest}, indent=2))
        return
    hint = {"current": "", "outdated": "; rebuild with 'cairn images build testguest'",
            "damaged": "; rebuild with 'cairn images build testguest --force'"}[state]
    typer.echo(f"Test guest in {directory}: {state}{hint}")
    try:
        for line in _guest_lines(directory, manifest):
            typer.echo(line)
    except (KeyError, TypeError):
        fail(f"the manifest {directory / 'testguest.json'} is malformed; rebuild with "
             "'cairn images build testguest --force'")
