"""A consensus-level member process: one SyncObjLog in Trio, served on an authenticated local protocol.

    python -m consensus.node --self 127.0.0.1:7000 --peers 127.0.0.1:7010,127.0.0.1:7020 \\
        --data /var/lib/cairn/n1 --secret-file /etc/cairn/secret [--non-voter] [--fsync batch]

The API port (PORT) answers propose, head, status, read, wait, leadership,
transfer, add_voter and remove_voter; Raft runs on PORT+1; the data-plane
port (PORT+2) serves history copies to peers. Every port is authenticated
with the cluster secret. The Cairn daemon will host the log itself; this
program exists so tests and benchmarks can run each member as its own
process.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import signal
import sys

import trio

from consensus.client import open_client
from consensus.log import LogError
from consensus.record import Record
from consensus.syncobj_log import SyncObjLog, SyncObjSettings, open_syncobj_log
from consensus.wire import Channel, WireError, read_secret, serve

log = logging.getLogger("consensus.node")
READ_LIMIT = 5000


def shifted(node: str, offset: int) -> str:
    """The address of the node's port PORT+offset."""
    host, _, port = node.rpartition(":")
    return f"{host}:{int(port) + offset}"


def _record_fields(record: Record) -> list:
    return [record.seq, record.prev_hash, record.hash, record.payload]


def _error_reply(request_id, error: LogError) -> dict:
    return {"id": request_id, "error": type(error).__name__, "message": str(error),
            "leader": getattr(error, "leader", None)}


class MemberServer:
    """Answers requests on one member's API and data-plane ports."""

    def __init__(self, member: SyncObjLog) -> None:
        self.member = member

    async def handle(self, channel: Channel) -> None:
        outbox_send, outbox_receive = trio.open_memory_channel(math.inf)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_replies, channel, outbox_receive)
            try:
                while True:
                    requests = await channel.receive_many()
                    with self.member.submitting_together():
                        for request in requests:
                            if request.get("op") == "propose":
                                self._propose_now(request, outbox_send)
                            else:
                                nursery.start_soon(self._answer, request, outbox_send)
            except (WireError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass  # the client went away; its pending replies are dropped
            finally:
                nursery.cancel_scope.cancel()

    async def _write_replies(self, channel: Channel, outbox) -> None:
        async for reply in outbox:
            batch = [reply]
            while True:
                try:
                    batch.append(outbox.receive_nowait())
                except trio.WouldBlock:
                    break
            try:
                await channel.send_many(batch)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return

    async def _answer(self, request: dict, outbox) -> None:
        reply: dict
        try:
            handler = getattr(self, "op_" + str(request.get("op")), None)
            if handler is None:
                raise ValueError(f"unknown op {request.get('op')!r}; use propose, head, status, read or wait")
            reply = await handler(request)
        except LogError as error:
            reply = _error_reply(None, error)
        except (ValueError, TypeError, KeyError) as error:
            reply = {"error": "RemoteError", "message": f"bad request: {error}"}
        reply["id"] = request.get("id")
        outbox.send_nowait(reply)

    def _propose_now(self, request: dict, outbox) -> None:
        """Submit a proposal without a task of its own: the hot path of the member."""
        request_id = request.get("id")

        def on_done(seq, error) -> None:
            if error is None:
                outbox.send_nowait({"id": request_id, "seq": seq})
            else:
                outbox.send_nowait(_error_reply(request_id, error))

        try:
            self.member.submit(request["payload"], float(request.get("timeout_s", 5.0)), on_done)
        except LogError as error:
            outbox.send_nowait(_error_reply(request_id, error))
        except (ValueError, TypeError, KeyError) as error:
            outbox.send_nowait({"id": request_id, "error": "RemoteError", "message": f"bad request: {error}"})

    async def op_propose(self, request: dict) -> dict:
        seq = await self.member.propose(request["payload"], timeout_s=float(request.get("timeout_s", 5.0)))
        return {"seq": seq}

    async def op_head(self, request: dict) -> dict:
        head = self.member.head()
        return {"seq": head.seq, "hash": head.hash}

    async def op_wait(self, request: dict) -> dict:
        target = int(request["seq"])
        if self.member.head().seq < target:
            with trio.move_on_after(float(request.get("timeout_s", 30.0))):
                async for record in self.member.committed(self.member.head().seq):
                    if record.seq >= target:
                        break
        return await self.op_head(request)

    async def op_status(self, request: dict) -> dict:
        status = self.member.status()
        return {"self": status.self_address, "leader": status.leader, "term": status.term,
                "commit_seq": status.commit_seq, "voters": list(status.voters),
                "non_voters": list(status.non_voters), "is_leader": self.member.is_leader(),
                **{k: (list(v) if isinstance(v, tuple) else v) for k, v in status.extra.items()}}

    async def op_read(self, request: dict) -> dict:
        first, last = int(request["first"]), int(request["last"])
        limit = min(int(request.get("limit", READ_LIMIT)), READ_LIMIT)
        records = []
        for record in self.member.read(first, last):
            records.append(_record_fields(record))
            if len(records) >= limit:
                break
        return {"records": records}

    async def op_transfer(self, request: dict) -> dict:
        return {"leader": await self.member.transfer_leadership(request.get("target"))}

    async def op_add_voter(self, request: dict) -> dict:
        await self.member.add_voter(request["node"])
        return {}

    async def op_remove_voter(self, request: dict) -> dict:
        await self.member.remove_voter(request["node"])
        return {}


class HistoryPeers:
    """Copies committed history from peers' data-plane ports, trying each peer in turn."""

    def __init__(self, peers: list[str], secret: bytes) -> None:
        self.peers = peers
        self.secret = secret

    async def __call__(self, first_seq: int, last_seq: int):
        failures = []
        for peer in self.peers:
            try:
                async with open_client(shifted(peer, 2), self.secret) as client:
                    records = [record async for record in client.read_all(first_seq, last_seq)]
            except (OSError, ConnectionError, LogError, TimeoutError) as error:
                failures.append(f"{peer}: {error}")
                continue
            # A peer that lacks part of the range (it may have a gap itself) is
            # skipped rather than handed on half a copy.
            if records and records[0].seq == first_seq and records[-1].seq == last_seq:
                for record in records:
                    yield record
                return
            failures.append(f"{peer}: holds only part of {first_seq}..{last_seq}")
        raise ConnectionError("no peer could serve history: " + "; ".join(failures))


async def run_member(args: argparse.Namespace) -> None:
    secret = read_secret(args.secret_file)
    peers = [p for p in (args.peers.split(",") if args.peers else []) if p]
    voters = peers if args.non_voter else sorted(set(peers) | {args.self})
    settings = SyncObjSettings(password=secret.decode("latin-1"), fsync=args.fsync,
                               log_compaction_min_entries=args.compaction_entries,
                               max_entries_in_flight=args.max_in_flight,
                               pipeline_min_payloads=args.pipeline_min)
    async with open_syncobj_log(args.self, voters, args.data, settings, voter=not args.non_voter,
                                history_source=HistoryPeers(peers, secret)) as member:
        server = MemberServer(member)
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, args.self, secret, server.handle)
            await nursery.start(serve, shifted(args.self, 2), secret, server.handle)
            log.info("member %s serving (voters %s, %s)", args.self, ",".join(voters),
                     "non-voter" if args.non_voter else "voter")
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _signal in signals:
                    log.info("member %s stopping", args.self)
                    nursery.cancel_scope.cancel()
                    break


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m consensus.node", description=__doc__.split("\n")[0])
    parser.add_argument("--self", required=True, help="this member's node address HOST:PORT (the API port)")
    parser.add_argument("--peers", default="", help="the other voters' node addresses, comma-separated")
    parser.add_argument("--data", required=True, help="this member's data directory")
    parser.add_argument("--secret-file", required=True, help="file holding the cluster secret")
    parser.add_argument("--non-voter", action="store_true", help="receive the log and forward proposals, never vote")
    parser.add_argument("--fsync", choices=("always", "batch"), default="batch")
    parser.add_argument("--compaction-entries", type=int, default=2000,
                        help="compact pysyncobj's journal once it holds more Raft entries than this")
    parser.add_argument("--max-in-flight", type=int, default=1,
                        help="Raft entries this member keeps in flight; proposals wait and are packed meanwhile")
    parser.add_argument("--pipeline-min", type=int, default=8,
                        help="payloads that must be waiting before a further entry goes in flight")
    parser.add_argument("--switch-interval-ms", type=float, default=5.0,
                        help="the interpreter's thread switch interval (the tick thread and Trio share the GIL)")
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    sys.setswitchinterval(args.switch_interval_ms / 1000)
    # Every request allocates a few containers; with the default threshold the
    # young generation is collected thousands of times a second under load.
    gc.set_threshold(50_000, 20, 20)
    trio.run(run_member, args)


if __name__ == "__main__":
    main()
