"""The placement engine on a live cluster: `instance add -I hail`, `node evacuate` and `balance -X`, each
checked against what the same engine answers on that cluster's exported state or htools text."""

import json
import subprocess

import pytest

from tests.integration.cluster_support import CAIRN, started

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with started(tmp_path_factory.mktemp("alloc")) as cluster:
        yield cluster


def export(cluster, tmp_path):
    """The whole history as an event file, and its JSON lines (seq, name, payload)."""
    path = tmp_path / "history.cbor"
    with open(path, "wb") as out:
        subprocess.run([CAIRN, "events", "export", "--format", "cbor"], stdout=out, env=cluster.env, check=True,
                       timeout=120)
    lines = subprocess.run([CAIRN, "events", "export", "--format", "jsonl"], capture_output=True, text=True,
                           env=cluster.env, check=True, timeout=120).stdout.splitlines()
    return path, [json.loads(line) for line in lines]


def planned_at(events, job_id: int) -> int:
    """The seq of the job's first committed plan: its choices were made on the state just before it."""
    return next(e["seq"] for e in events if e["name"] == "JobOperationPlanned" and e["payload"]["job"] == job_id)


def state_before(path, seq: int):
    from appliance import eventfile

    return eventfile.replay_file(path, at=seq - 1, use_checkpoints=False)


def last_job(cluster, opcode: str) -> dict:
    return [j for j in cluster.json("job", "list", "-o", "id,status,summary")
            if opcode in " ".join(j.get("summary") or [])][-1]


def test_add_with_hail_places_the_instance_as_the_engine_answers(cluster, tmp_path):
    """The nodes committed with the job are hail's answer on the state the job was planned against."""
    from ops import _allocator

    cluster.run("instance", "add", "-I", "hail", "-t", "replicated", "-s", "1G", "-B", "memory=256M",
                "--no-install", "h1")
    job = last_job(cluster, "INSTANCE_CREATE")
    assert job["status"] == "success"
    path, events = export(cluster, tmp_path)
    before = state_before(path, planned_at(events, job["id"]))
    request = _allocator.allocate_request("h1", "replicated", 256, 1, (1024,))
    primary, secondary = _allocator.allocate(before, request)
    row = next(r for r in cluster.json("instance", "list", "-o", "name,pnode,snodes") if r["name"] == "h1")
    names = {n.id: n.name for n in before.nodes.values()}
    assert (row["pnode"], row["snodes"]) == (names.get(primary, primary), [names.get(secondary, secondary)])


def test_evacuating_a_nodes_secondaries_follows_the_engine(cluster, tmp_path):
    """node evacuate -s: one replace-disks job per instance, to the nodes hail chose on the planned state."""
    from ops import _allocator

    for name in ("e1", "e2"):
        cluster.run("instance", "add", "-t", "replicated", "-n", "node1:node2", "-s", "1G", "-B", "memory=128M",
                    "--no-install", name)
    cluster.run("node", "evacuate", "-s", "node2")
    job = last_job(cluster, "NODE_EVACUATE")
    assert job["status"] == "success"
    path, events = export(cluster, tmp_path)
    before = state_before(path, planned_at(events, job["id"]))
    plan = _allocator.evacuate(before, before.node_by_name("node2").id, "secondary-only")
    cluster.wait(lambda: all(r["snodes"] != ["node2"] for r in cluster.json("instance", "list", "-o", "name,snodes")
                             if r["name"] in ("e1", "e2")), 60, "the secondaries to move")
    rows = {r["name"]: r["snodes"][0] for r in cluster.json("instance", "list", "-o", "name,snodes")}
    names = {n.id: n.name for n in before.nodes.values()}
    expected = {name: names.get(nodes[-1], nodes[-1]) for name, _group, nodes in plan.moved}
    assert plan.failed == () and {"e1", "e2"} <= set(expected)
    assert expected == {name: rows[name] for name in expected}
    assert expected["e1"] == expected["e2"] == "node3"  # neither their primary nor the old secondary


def test_live_balance_equals_balance_on_the_exported_text_and_executes(cluster, tmp_path):
    """`cairn balance` on the live cluster prints what `cairn balance -t` prints on the cluster's htools text;
    -X submits the moves and they succeed."""
    for k in range(3):
        cluster.run("instance", "add", "-t", "replicated", "-n", "node1:node2", "-s", "1G", "-B", "memory=1G",
                    "--no-install", f"b{k}")
    before = {r["name"]: r["pnode"] for r in cluster.json("instance", "list", "-o", "name,pnode")}
    from appliance.client.config import resolve_target
    from appliance.client.http import Client

    target = resolve_target(environ=cluster.env)
    with Client(target.addresses, target.ca_pem, target.token, target.socket_path) as client:
        _, answer = client.get("/api/v1/cluster/htools")
    text = answer["text"]
    (tmp_path / "cluster.txt").write_text(text)
    live = cluster.run("balance", "-l", "5").stdout
    offline = cluster.run("balance", "-t", str(tmp_path / "cluster.txt"), "-l", "5").stdout
    assert live == offline and "Solution length" in live
    executed = cluster.run("balance", "-l", "5", "-X")
    assert "Got job IDs" in executed.stdout + executed.stderr
    jobs = cluster.json("job", "list", "-o", "id,status,actor")
    assert jobs[-1]["status"] == "success"
    after = {r["name"]: r["pnode"] for r in cluster.json("instance", "list", "-o", "name,pnode")}
    assert any(after[name] != before[name] for name in before)
