"""The Raft, API and data-plane ports refuse anyone without the cluster secret, and never unpickle their bytes."""

import socket
import struct
import subprocess
import sys
import zlib

import pytest
import trio

from consensus.wire import WireError, connect
from tests.integration.consensus_cluster import ProcessCluster, shifted_port

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path):
    cluster = ProcessCluster(tmp_path / "cluster")
    try:
        yield cluster
    finally:
        cluster.close()


def evil_pickle(marker) -> bytes:
    """A protocol-0 pickle that calls open(marker, 'w') when unpickled (written by hand: no pickle import)."""
    return f"c__builtin__\nopen\n(V{marker}\nVw\ntR.".encode()


def pysyncobj_frame(body: bytes) -> bytes:
    """A frame as pysyncobj's transport reads it without a password: native int length, zlib'd pickle."""
    data = zlib.compress(body, 3)
    return struct.pack("i", len(data)) + data


def send_raw(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(data)
        connection.settimeout(2)
        try:
            while connection.recv(4096):
                pass
        except (TimeoutError, ConnectionResetError):
            pass


def test_the_evil_frame_would_create_the_marker_if_unpickled(tmp_path):
    """The crafted frame does run code when a process unpickles it (the control for the tests below)."""
    marker = tmp_path / "control-marker"
    frame_file = tmp_path / "frame"
    frame_file.write_bytes(pysyncobj_frame(evil_pickle(marker)))
    script = ("import pickle, struct, sys, zlib; d = open(sys.argv[1], 'rb').read(); "
              "pickle.loads(zlib.decompress(d[4:4 + struct.unpack('i', d[:4])[0]]))")
    subprocess.run([sys.executable, "-c", script, str(frame_file)], check=False, capture_output=True)
    assert marker.exists()


async def test_a_pickle_frame_without_the_secret_is_rejected_by_the_raft_port(cluster, tmp_path):
    """A raw pickle frame sent to the Raft port without the secret executes nothing, and the member keeps serving."""
    cluster.start_all()
    leader, _term = await cluster.wait_leader()
    markers = []
    for node in cluster.voters:
        marker = tmp_path / f"marker-{node.replace(':', '_')}"
        markers.append(marker)
        send_raw(shifted_port(node, 1), pysyncobj_frame(evil_pickle(marker)))
    await trio.sleep(0.5)
    assert not any(m.exists() for m in markers)
    async with cluster.client(leader) as client:
        assert await client.propose(b"still serving") >= 1
    assert sorted(cluster.alive()) == sorted(cluster.voters)


async def test_the_api_and_data_ports_reject_a_client_without_the_secret(cluster, tmp_path):
    """The API and data-plane ports refuse a wrong secret and never act on unauthenticated bytes."""
    cluster.start_all()
    await cluster.wait_leader()
    node = cluster.voters[0]
    marker = tmp_path / "api-marker"
    for offset in (0, 2):
        send_raw(shifted_port(node, offset), pysyncobj_frame(evil_pickle(marker)))
        with pytest.raises((WireError, ConnectionError)):
            channel = await connect(f"127.0.0.1:{shifted_port(node, offset)}", b"not the cluster secret at all")
            await channel.send({"op": "propose", "id": 1, "payload": b"intruder"})
            await channel.receive()
    assert not marker.exists()
    async with cluster.client(node) as client:
        records = [r async for r in client.read_all()]
    assert b"intruder" not in [r.payload for r in records]
