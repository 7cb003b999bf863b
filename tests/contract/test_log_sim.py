"""The event-log contract, run against the leader of a simulated three-member cluster."""

import contextlib

import trio

from consensus.sim_log import SimCluster
from tests.contract.log_contract import LogContract


class TestSimLog(LogContract):
    """The simulated log's leader passes the event-log contract."""

    @contextlib.asynccontextmanager
    async def open_log(self, tmp_path):
        cluster = SimCluster(["a", "b", "c"], seed=7)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cluster.run, 0.0005)
            with trio.fail_after(10):
                while cluster.leader() is None:
                    await trio.sleep(0.001)
            member = cluster.member(cluster.leader())
            try:
                yield member
            finally:
                await member.aclose()
                nursery.cancel_scope.cancel()
