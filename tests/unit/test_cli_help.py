"""`cairn --help` and every command group's and command's `--help`: they exit 0 and show flags without a type.

typer 0.29 printed `<bool>` after every flag (issue 15); pyproject.toml pins a release that does not.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from appliance.cli import app

runner = CliRunner()


def command_paths() -> list[tuple[str, ...]]:
    """The argument paths of the top level, every command group and every command, e.g. ("events", "demo")."""
    paths = []

    def walk(command, path: tuple[str, ...]) -> None:
        paths.append(path)
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, path + (name,))

    walk(typer.main.get_command(app), ())
    return paths


def test_every_command_group_is_walked():
    """The walk reaches the groups and commands whose help is checked (a walk of nothing would pass)."""
    paths = command_paths()
    for expected in [(), ("events",), ("events", "demo"), ("balance",), ("capacity",), ("iallocator",)]:
        assert expected in paths


@pytest.mark.parametrize("path", command_paths(), ids=lambda path: " ".join(("cairn",) + path))
def test_help_exits_0_and_shows_no_bool_metavar(path):
    """`--help` of the command exits 0, prints its usage and shows no `<bool>` after a flag."""
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert f"Usage: cairn {' '.join(path)}".rstrip() in " ".join(result.output.split())
    assert "<bool>" not in result.output


@pytest.mark.parametrize("args", [["--help"], ["balance", "--help"]], ids=" ".join)
def test_installed_cairn_prints_help_without_bool(args):
    """The installed `cairn` script (the lean placement path hands --help to typer) prints help
    without `<bool>` and exits 0."""
    cairn = Path(sys.executable).with_name("cairn")
    result = subprocess.run([str(cairn), *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Usage: cairn" in result.stdout and "<bool>" not in result.stdout
