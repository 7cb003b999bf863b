"""A pysyncobj member's settings, the SyncObjConf built from them, and the node to Raft address mapping.

Members are named by their node address HOST:PORT (the API port, DESIGN.md);
pysyncobj runs on PORT+1. Settings that are unsafe by default in pysyncobj
(no password, bind to every interface, batch mode, pickle snapshots, 30 s
leader fallback) are never left at their defaults here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pysyncobj import HAS_CRYPTO, SyncObjConf

from consensus.log import LogError


def raft_address(node: str) -> str:
    """pysyncobj's address for a node: the same host, the API port plus one."""
    host, _, port = node.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"node address {node!r} is not HOST:PORT; write it like 127.0.0.1:7000")
    return f"{host}:{int(port) + 1}"


def node_address(raft: str) -> str:
    """The node address (API port) behind a pysyncobj address."""
    host, _, port = raft.rpartition(":")
    return f"{host}:{int(port) - 1}"


@dataclass(frozen=True)
class SyncObjSettings:
    """Every pysyncobj knob Cairn sets, with safe values; only `password` has no default."""

    password: str
    raft_min_timeout_s: float = 0.3
    raft_max_timeout_s: float = 0.6
    append_entries_period_s: float = 0.05
    leader_fallback_timeout_s: float = 1.0
    connection_retry_time_s: float = 1.0
    # Compaction keeps the journal short so a restart replays little (pitfall P8);
    # the full history lives in the segment files.
    log_compaction_min_entries: int = 2000
    log_compaction_min_time_s: float = 60.0
    fsync: str = "batch"
    fsync_interval_s: float = 0.05
    max_batch_payloads: int = 4096
    max_batch_bytes: int = 4 << 20
    max_entries_in_flight: int = 1
    pipeline_min_payloads: int = 8
    # An entry with no answer after this long is given up (its payloads report
    # "outcome unknown") so that new proposals are not held behind it.
    stuck_entry_s: float = 10.0
    # After a start, elections are held back until a leader is heard or this
    # long has passed since the first connection, so that a member that
    # replayed a long journal does not depose a healthy leader (P8, P9).
    startup_grace_s: float = 2.5
    # When a follower sees its connection to the leader close (the leader's
    # process died), the remaining voters campaign in address order this far
    # apart instead of after their election timeouts; 0 turns this off.
    leader_loss_campaign_step_s: float = 0.1
    # Every member sends each other voter a no-op this often, so that no
    # connection goes quiet for pysyncobj's connection timeout (3.5 s).
    keepalive_s: float = 1.0
    tail_records: int = 10_000

    def __post_init__(self) -> None:
        if not self.password:
            raise ValueError("a cluster secret is required: without it any TCP peer can run code on this node "
                             "through pickle; pass the contents of the cluster secret file as password")
        if not HAS_CRYPTO:
            raise LogError("pysyncobj encrypts with the 'cryptography' package, which is not installed; "
                           "install it (pip install 'cryptography>=41') before starting a member")


def syncobj_conf(settings: SyncObjSettings, data_dir: Path, bind: str | None, serializer, deserializer) -> SyncObjConf:
    return SyncObjConf(
        password=settings.password,
        bindAddress=bind,
        appendEntriesUseBatch=False,
        appendEntriesPeriod=settings.append_entries_period_s,
        raftMinTimeout=settings.raft_min_timeout_s,
        raftMaxTimeout=settings.raft_max_timeout_s,
        leaderFallbackTimeout=settings.leader_fallback_timeout_s,
        connectionRetryTime=settings.connection_retry_time_s,
        connectionTimeout=max(3.5, settings.raft_max_timeout_s),  # pysyncobj's default, or what validate() asks
        journalFile=str(data_dir / "raft.journal"),
        fullDumpFile=str(data_dir / "raft.snapshot"),
        serializer=serializer,
        deserializer=deserializer,
        useFork=False,
        dynamicMembershipChange=True,
        logCompactionMinEntries=settings.log_compaction_min_entries,
        logCompactionMinTime=settings.log_compaction_min_time_s,
        maxBindRetries=5,
        bindRetryTime=0.5,
    )
