"""The htools text backend format: parsing, writing, round trips and error messages."""

import re
from pathlib import Path

import pytest

from fastpath.generate import generate
from fastpath.htools_text import FormatError, parse, write
from fastpath.spec import flatten

DATA = Path(__file__).resolve().parents[1] / "data" / "htools"


def test_example_round_trips_byte_for_byte():
    """The reference example comes back byte-identical from the writer, as from hbal -S."""
    text = (DATA / "example.txt").read_text()
    assert write(parse(text)) == text


def test_generated_cluster_round_trips():
    """Load, save, load gives the same nodes, instances and policy."""
    cluster = generate(10, 60, 7)
    again = parse(write(cluster))
    assert again.nodes == cluster.nodes
    assert [i.name for i in again.instances] == [i.name for i in cluster.instances]
    assert again.policy == cluster.policy


def test_multiple_min_max_pairs_round_trip():
    """A policy with several (min, max) spec pairs survives a round trip."""
    text = (DATA / "example.txt").read_text().replace(
        "128,1,1024,1,1,1;65536,16,1048576,16,8,12|drbd,plain,diskless|4.0|32.0\ndefault",
        "128,1,1024,1,1,1;1024,2,2048,1,1,1;4096,1,4096,1,1,1;65536,16,1048576,16,8,12|drbd|4.0|32.0\ndefault")
    cluster = parse(text)
    assert len(cluster.policy.minmax) == 2
    assert parse(write(cluster)).policy == cluster.policy


def test_too_few_sections_is_rejected():
    """A file with fewer than four sections is refused with htools' message."""
    with pytest.raises(FormatError, match="3 sections instead of 4"):
        parse("g|u|preferred|\n\nn|1|1|1|1|1|1|N|u\n\ni|1|1|1|running|Y|n||plain|\n")


def test_unknown_node_is_named():
    """An instance on an unknown node is refused, naming node and instance."""
    text = (DATA / "example.txt").read_text().replace("|alpha|bravo|drbd|role:web", "|zulu|bravo|drbd|role:web", 1)
    with pytest.raises(FormatError, match="Unknown node 'zulu' for instance web1"):
        parse(text)


@pytest.mark.parametrize("old, new, message", [
    ("cache1|4096|", "cache1|999999999999999999999|", "cache1: integer '999999999999999999999' is out of range"),
    ("alpha|65536|", "alpha|nan|", "alpha: number 'nan' is not a finite number"),
    ("drbd,plain,diskless|4.0", "drbd,plian,diskless|4.0", "unknown disk template 'plian'; use one of diskless"),
    ("|drbd|role:web|1|-|N", "|drbd|role:web|1|1.5|N", "instance web1: spindles ('-' when unknown): cannot parse "
                                                        "integer '1.5'"),
])
def test_values_the_core_cannot_take_are_named(old, new, message):
    """Values that would overflow the C core's integers, NaN, an unknown template in a policy and
    non-integer disk spindles are refused at parse time with the field named (before: a Python
    traceback from the core or the planner)."""
    text = (DATA / "example.txt").read_text()
    assert old in text
    with pytest.raises(FormatError, match=re.escape(message)):
        parse(text.replace(old, new, 1))


def test_unknown_values_mark_node_offline():
    """A node with '?' resources is loaded offline with zero resources."""
    text = (DATA / "example.txt").read_text().replace("delta|65536|2048|63488", "delta|?|2048|63488")
    node = parse(text).nodes[3]
    assert node.offline and node.t_mem == 0


def test_empty_sections_are_written_as_blank_lines():
    """A cluster without instances or tags has three blank lines before the policies."""
    cluster = generate(3, 0, 1)
    cluster.tags = []
    text = write(cluster)
    assert "\n\n\n\n|" in text and parse(text).instances == []


def test_plain_is_local_and_not_movable():
    """htools `plain` instances use node disk but are never moved."""
    spec = flatten(parse((DATA / "example.txt").read_text()))
    cache = spec.instance_names.index("cache1")
    assert spec.instances["dsk"][cache] == 20480 and spec.instances["movable"][cache] == 0
