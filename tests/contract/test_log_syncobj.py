"""The event-log contract, run against pysyncobj members in one process: through the leader and through a follower."""

import contextlib


from consensus.syncobj_log import SyncObjSettings, open_syncobj_log, wait_for
from tests.contract.log_contract import LogContract, free_node_address

SECRET = "contract-test-cluster-secret"


@contextlib.asynccontextmanager
async def three_members(tmp_path):
    """Three voters on loopback in this process, with a leader elected."""
    nodes = [free_node_address() for _ in range(3)]
    settings = SyncObjSettings(password=SECRET)
    async with contextlib.AsyncExitStack() as stack:
        members = [await stack.enter_async_context(
            open_syncobj_log(node, nodes, tmp_path / f"m{i}", settings)) for i, node in enumerate(nodes)]
        await wait_for(lambda: any(m.is_leader() for m in members), 20, "a leader elected")
        await wait_for(lambda: all(m.leader() is not None for m in members), 20, "every member knows the leader")
        yield members


class TestSyncObjLogLeader(LogContract):
    """A pysyncobj leader passes the event-log contract."""

    @contextlib.asynccontextmanager
    async def open_log(self, tmp_path):
        async with three_members(tmp_path) as members:
            yield next(m for m in members if m.is_leader())


class TestSyncObjLogFollower(LogContract):
    """A pysyncobj follower, forwarding proposals to the leader, passes the event-log contract."""

    @contextlib.asynccontextmanager
    async def open_log(self, tmp_path):
        async with three_members(tmp_path) as members:
            yield next(m for m in members if not m.is_leader())
