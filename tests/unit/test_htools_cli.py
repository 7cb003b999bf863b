"""The placement CLI: `cairn balance -t`, `cairn capacity -t` and their files and errors."""

from pathlib import Path

from typer.testing import CliRunner

from appliance.cli import app
from fastpath.htools_text import parse

DATA = Path(__file__).resolve().parents[1] / "data" / "htools"
runner = CliRunner()


def test_balance_prints_what_hbal_printed():
    """`cairn balance -t FILE` prints hbal's lines for the same file (recorded in example.hbal)."""
    result = runner.invoke(app, ["balance", "-t", str(DATA / "example.txt")])
    assert result.exit_code == 0
    assert result.output == (DATA / "example.hbal").read_text()


def test_balance_options_reach_the_engine():
    """hbal's options (-O, --evac-mode) give hbal's recorded output."""
    result = runner.invoke(app, ["balance", "-t", str(DATA / "n4.txt"), "-O", "node-0001", "--evac-mode"])
    assert result.output == (DATA / "n4.evac.hbal").read_text()


def test_save_writes_original_and_balanced(tmp_path):
    """-S PREFIX writes PREFIX.original (the input) and PREFIX.balanced (the solution, reloadable)."""
    prefix = tmp_path / "out"
    runner.invoke(app, ["balance", "-t", str(DATA / "example.txt"), "-S", str(prefix)])
    assert (tmp_path / "out.original").read_text() == (DATA / "example.txt").read_text()
    balanced = parse((tmp_path / "out.balanced").read_text())
    assert {i.name: (i.pnode, i.snode) for i in balanced.instances}["web1"] == ("delta", "charlie")


def test_multi_group_file_needs_a_group():
    """A file with several groups and no -G fails like hbal, naming the groups."""
    result = runner.invoke(app, ["balance", "-t", str(DATA / "n20-groups-locations.txt")])
    assert result.exit_code == 1 and "Found multiple node groups" in result.output


def test_balance_without_file_says_what_to_do():
    """Without -t the command explains that only text files work for now."""
    result = runner.invoke(app, ["balance"])
    assert result.exit_code == 1 and "-t FILE" in result.output


def test_capacity_machine_readable_ends_ok():
    """`cairn capacity --machine-readable` prints HTS_* lines ending in HTS_OK=1."""
    result = runner.invoke(app, ["capacity", "-t", str(DATA / "example.txt"), "--machine-readable"])
    lines = result.output.splitlines()
    assert lines[-1] == "HTS_OK=1" and "HTS_ALLOC_INSTANCES=145" in lines


def test_capacity_tiered_alloc_matches_hspace_tiers():
    """--tiered-alloc starts the tiered phase at the given spec, as hspace does (recorded for n20)."""
    result = runner.invoke(app, ["capacity", "-t", str(DATA / "n20.txt"), "--machine-readable",
                                 "--accept-existing-errors", "--tiered-alloc", "10240,1024,1"])
    # hspace -t n20.txt --machine-readable --accept-existing-errors --tiered-alloc 10240,1024,1 printed these.
    assert "HTS_TSPEC='1024,10240,1,1=414 960,10240,1,1=5 896,10240,1,1=1'" in result.output
    assert "HTS_ALLOC_INSTANCES=414" in result.output
