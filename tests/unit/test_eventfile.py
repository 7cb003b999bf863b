"""Tests of event files: demo output, verify, replay at a seq, checkpoints and exports."""

import io
import json
import random

import pytest
from typer.testing import CliRunner

from appliance.cli import app
from appliance.demo import write_demo
from appliance import eventfile
from appliance.model import events

runner = CliRunner()


@pytest.fixture(scope="module")
def demo_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo") / "demo.events"
    write_demo(path, 3000, seed=11)
    return path


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_demo_writes_a_sealed_verified_file(demo_file):
    """The demo file verifies and holds at least the events asked for."""
    summary = eventfile.verify(demo_file)
    assert summary.sealed and summary.count >= 3000 and summary.first_seq == 1


def test_demo_is_the_same_for_the_same_seed(tmp_path):
    """Two demo runs with one seed write identical files."""
    write_demo(tmp_path / "a", 500, seed=3)
    write_demo(tmp_path / "b", 500, seed=3)
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def test_verify_cli_catches_byte_flips_and_names_the_seq(demo_file, tmp_path):
    """Flipping a byte at many random positions always makes 'cairn events verify' exit 1 with a seq."""
    data = demo_file.read_bytes()
    rng = random.Random(5)
    damaged_path = tmp_path / "damaged.events"
    for position in sorted(rng.sample(range(len(data)), 150)) + [0, len(data) - 1]:
        damaged = bytearray(data)
        damaged[position] ^= 1 << rng.randrange(8)
        damaged_path.write_bytes(bytes(damaged))
        result = cli("events", "verify", damaged_path, "--output", "json")
        assert result.exit_code == 1, position
        assert isinstance(json.loads(result.stdout)["first_bad_seq"], int)


def test_verify_cli_reports_ok(demo_file):
    """A good file verifies with exit 0 and its count."""
    result = cli("events", "verify", demo_file)
    assert result.exit_code == 0 and "OK" in result.stdout


def test_verify_cli_names_a_missing_file(tmp_path):
    """A missing file is an error that names it."""
    result = cli("events", "verify", tmp_path / "nope.events")
    assert result.exit_code == 1 and "no such file" in result.stderr


def digest_of(result) -> str:
    assert result.exit_code == 0, result.output
    return [line for line in result.stdout.splitlines() if line.startswith("digest: ")][0].split()[1]


def test_two_replays_and_a_cbor_export_agree(demo_file, tmp_path):
    """Replaying the file twice and replaying its CBOR export give one digest."""
    first = digest_of(cli("events", "replay", demo_file))
    assert digest_of(cli("events", "replay", demo_file)) == first
    exported = tmp_path / "export.cbor"
    with open(exported, "wb") as out:
        eventfile.export(demo_file, out, "cbor")
    assert digest_of(cli("events", "replay", exported)) == first


def test_checkpoint_plus_tail_equals_full_replay(demo_file, tmp_path):
    """With checkpoints, 'replay --at' gives the digest of a fold from event one."""
    copy = tmp_path / "copy.events"
    copy.write_bytes(demo_file.read_bytes())
    assert cli("events", "checkpoint", copy, "--every", "700").exit_code == 0
    for at in (1, 699, 700, 701, 2100, 2999):
        with_checkpoints = eventfile.replay_file(copy, at)
        plain = eventfile.replay_file(copy, at, use_checkpoints=False)
        assert with_checkpoints.seq == at and with_checkpoints.digest() == plain.digest()


def test_replay_at_past_the_end_is_refused(demo_file):
    """Asking for a seq the file does not have is an error naming where it ends."""
    count = eventfile.verify(demo_file).count
    result = cli("events", "replay", demo_file, "--at", count + 10)
    assert result.exit_code == 1 and f"ends at seq {count}" in result.stderr


def test_damaged_checkpoint_is_reported(demo_file, tmp_path):
    """A checkpoint whose bytes changed is refused with advice to rebuild it."""
    copy = tmp_path / "copy.events"
    copy.write_bytes(demo_file.read_bytes())
    eventfile.write_checkpoints(copy, 1000)
    target = eventfile.checkpoint_dir(copy) / f"{1000:012d}.ckpt"
    data = bytearray(target.read_bytes())
    data[-5] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(eventfile.EventFileError, match="damaged"):
        eventfile.replay_file(copy, 1500)


def test_jsonl_export_has_who_and_why_on_every_line(demo_file):
    """Every JSON line carries seq, name, actor and reason; --since skips earlier records."""
    out = io.StringIO()
    count = eventfile.export(demo_file, out, "jsonl", since=2500)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == count and lines[0]["seq"] == 2501
    assert all(line["actor"] and "reason" in line and line["name"] for line in lines)


def test_export_cli_streams_jsonl(demo_file):
    """'cairn events export --format jsonl' prints one object per line."""
    result = cli("events", "export", "--file", demo_file, "--since", 2990)
    lines = result.stdout.splitlines()
    assert result.exit_code == 0 and json.loads(lines[0])["seq"] == 2991


def test_export_cli_refuses_unknown_format(demo_file):
    """An unknown --format is a usage error naming the choices."""
    result = cli("events", "export", "--file", demo_file, "--format", "xml")
    assert result.exit_code == 2 and "jsonl or cbor" in result.stderr


def test_events_decode_to_known_types(demo_file):
    """Every record of the demo decodes to a registered event."""
    names = {envelope.type_name for _, envelope in eventfile.iter_envelopes(demo_file)}
    assert {"ClusterInitialized", "NodeAdded"} <= names
    assert names <= {cls.__name__ for cls in events.REGISTRY.values()}
