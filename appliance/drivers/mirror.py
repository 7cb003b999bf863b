"""The primary's side of a replicated disk: the QMP sequences that mirror a disk into its secondary's export.

Plain async functions over a QMP client that has `execute(command, arguments, timeout_s)` and
`wait_event(name, timeout_s, predicate)` (appliance/drivers/qmp.py's Monitor); nothing else of the
client is used, so a fake one serves in tests. Names, per disk index i: the primary's disk is block node
`disk<i>`, the secondary's export is reached through NBD node `sec<i>` (over the relay's unix socket,
appliance/drivers/nbd_relay.py), and the mirror job is `rep<i>`.

The mirror is `blockdev-mirror` with `copy-mode: write-blocking` (shared/reference/qemu.md 6.2): every
guest write completes only once the secondary's export has it, like DRBD's protocol C. It is never
completed (that would pivot the VM onto the NBD node); it stays READY for as long as the pair is in step.
`on-target-error: report` makes a failed write to the secondary end the job (the guest goes on with its
local copy); the NBD node is added with `reconnect-delay: 0`, so a cut connection fails the request at
once instead of holding the guest's write.

Disk states (`mirror_states`, reference 6.3): SYNCING while the job copies (percent done), UPTODATE once
it is READY, DEGRADED when the job has failed or is gone while `sec<i>` is still attached.

Never `block-job-cancel force=true` while the secondary may hang: it blocks the whole QMP monitor
(trap 7.2). Cut the relay first (kill it: the hung request then fails at once), then detach.

Role-swap live migration (reference 6.5), in the order the migration code calls these:
1. destination: QEMU started `-incoming defer -S` on its replica file, while its export still runs;
2. source: `pause_before_switchover`; destination `migrate-incoming`; source `migrate`;
3. source: `wait_migration(..., {"pre-switchover"})`, then `release_for_switchover` (finish each mirror
   cleanly and detach its NBD node); the destination node stops its export (releasing the file); source:
   `continue_switchover`;
4. when the source reports `completed`: the source node starts an export of its own file, and the
   destination mirrors back into it with `attach_reverse_mirrors` (sync none: READY at once, no copy),
   then `cont`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import trio

from appliance.drivers.base import DEGRADED, SYNCING, UPTODATE, DriverError
from appliance.drivers.qmp import QmpError, QmpTimeout

COMMAND_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 300.0
POLL_S = 0.05


def disk_node(index: int) -> str:
    return f"disk{index}"


def target_node(index: int) -> str:
    return f"sec{index}"


def job_id(index: int) -> str:
    return f"rep{index}"


def _index_of(name: object, prefix: str) -> int | None:
    if isinstance(name, str) and name.startswith(prefix) and name[len(prefix):].isdigit():
        return int(name[len(prefix):])
    return None


async def attach_mirror(qmp, index: int, unix_path: str | os.PathLike, tls_creds_id: str | None = None,
                        in_sync: bool = False, *, tls_hostname: str | None = None,
                        timeout_s: float = COMMAND_TIMEOUT_S) -> None:
    """Attach the secondary's export (through the relay at `unix_path`) and start the write-blocking mirror.

    `in_sync` (the copies are known identical, e.g. after a role swap) starts with `sync: none`, READY at
    once; otherwise `sync: full` copies the whole disk first. `tls_creds_id` names a tls-creds-x509 object
    (endpoint client) when QEMU itself speaks TLS to the export; `tls_hostname` is then the name the
    export's certificate must carry (the relay's unix socket has no host name of its own). Without
    them QEMU speaks plain NBD to the relay, which does TLS to the export (nbd_relay's `--tls-dir`).
    """
    node: dict = {"driver": "nbd", "node-name": target_node(index),
                  "server": {"type": "unix", "path": os.fspath(unix_path)},
                  "export": disk_node(index), "reconnect-delay": 0}
    if tls_creds_id is not None:
        node["tls-creds"] = tls_creds_id
        if tls_hostname is not None:
            node["tls-hostname"] = tls_hostname
    await qmp.execute("blockdev-add", node, timeout_s)
    try:
        await qmp.execute("blockdev-mirror", {
            "job-id": job_id(index), "device": disk_node(index), "target": target_node(index),
            "sync": "none" if in_sync else "full", "copy-mode": "write-blocking",
            "on-target-error": "report", "on-source-error": "report"}, timeout_s)
    except QmpError:
        await qmp.execute("blockdev-del", {"node-name": target_node(index)}, timeout_s)
        raise


def _job_state(job: dict) -> tuple[str, int]:
    status = job.get("status")
    if job.get("error") or job.get("io-status", "ok") != "ok" or status not in ("created", "running", "ready"):
        return DEGRADED, 0
    if status == "ready" or job.get("ready"):
        return UPTODATE, 100
    length = int(job.get("len") or 0)
    done = int(job.get("offset") or 0)
    return SYNCING, min(99, done * 100 // length) if length else 0


async def mirror_states(qmp, indexes: Iterable[int] | None = None,
                        timeout_s: float = COMMAND_TIMEOUT_S) -> dict[int, tuple[str, int]]:
    """Each mirrored disk's (state, percent): SYNCING (0-99), UPTODATE (100) or DEGRADED (0).

    The disks are those with a job `rep<i>` or a node `sec<i>` (a job that failed leaves its target
    attached), plus `indexes` if given (a disk with neither is then DEGRADED).
    """
    jobs = await qmp.execute("query-block-jobs", None, timeout_s)
    nodes = await qmp.execute("query-named-block-nodes", {"flat": True}, timeout_s)
    by_index = {_index_of(job.get("device"), "rep"): job for job in jobs if _index_of(job.get("device"), "rep")
                is not None}
    attached = {_index_of(node.get("node-name"), "sec") for node in nodes} - {None}
    wanted = set(by_index) | attached | set(indexes or ())
    return {index: _job_state(by_index[index]) if index in by_index else (DEGRADED, 0) for index in sorted(wanted)}


async def wait_ready(qmp, index: int, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Wait until mirror `rep<i>` is READY (UPTODATE); DriverError if it fails or the time runs out."""
    deadline = trio.current_time() + timeout_s
    while True:
        state, percent = (await mirror_states(qmp, [index])).get(index, (DEGRADED, 0))
        if state == UPTODATE:
            return
        if state == DEGRADED:
            raise DriverError(f"the mirror of disk {index} to its secondary failed before it was in sync; "
                              "check the secondary's export and the relay's log, then attach it again")
        left = deadline - trio.current_time()
        if left <= 0:
            raise DriverError(f"the mirror of disk {index} was still syncing ({percent} %) after {timeout_s} s")
        try:
            await qmp.wait_event("BLOCK_JOB_READY", min(left, 1.0),
                                 lambda event: event.get("data", {}).get("device") == job_id(index))
            return
        except QmpTimeout:
            continue


async def detach_mirror(qmp, index: int, timeout_s: float = COMMAND_TIMEOUT_S) -> None:
    """Stop mirroring disk i and detach `sec<i>`; the primary goes on alone. Idempotent.

    A READY job is ended with `block-job-cancel` (not forced): a clean finish without pivot, which waits
    for the secondary to take the writes in flight. If the secondary may hang, cut its relay first: a
    finish that does not come within `timeout_s` raises DriverError and leaves the job as it was.
    """
    jobs = {job.get("device"): job for job in await qmp.execute("query-block-jobs", None, timeout_s)}
    job = jobs.get(job_id(index))
    if job is not None:
        if job.get("status") == "concluded":
            await qmp.execute("job-dismiss", {"id": job_id(index)}, timeout_s)
        else:
            await qmp.execute("block-job-cancel", {"device": job_id(index)}, timeout_s)
            await _wait_job_gone(qmp, index, timeout_s)
    nodes = await qmp.execute("query-named-block-nodes", {"flat": True}, timeout_s)
    if any(node.get("node-name") == target_node(index) for node in nodes):
        await qmp.execute("blockdev-del", {"node-name": target_node(index)}, timeout_s)


async def _wait_job_gone(qmp, index: int, timeout_s: float) -> None:
    deadline = trio.current_time() + timeout_s
    while True:
        jobs = {job.get("device"): job for job in await qmp.execute("query-block-jobs", None, timeout_s)}
        job = jobs.get(job_id(index))
        if job is None:
            return
        if job.get("status") == "concluded":
            await qmp.execute("job-dismiss", {"id": job_id(index)}, timeout_s)
            return
        if trio.current_time() >= deadline:
            raise DriverError(f"the mirror of disk {index} did not finish within {timeout_s} s of being "
                              "cancelled; the secondary may hang: kill its relay, then detach again")
        await trio.sleep(POLL_S)


# --- role-swap live migration -------------------------------------------------------------------

async def pause_before_switchover(qmp, timeout_s: float = COMMAND_TIMEOUT_S) -> None:
    """Source, before `migrate`: emit migration events and stop at pre-switchover, so the mirrors can be
    finished while the guest is paused and before the destination runs."""
    await qmp.execute("migrate-set-capabilities", {"capabilities": [
        {"capability": "events", "state": True},
        {"capability": "pause-before-switchover", "state": True}]}, timeout_s)


async def wait_migration(qmp, wanted: Iterable[str], timeout_s: float,
                         command_timeout_s: float = COMMAND_TIMEOUT_S) -> str:
    """Poll `query-migrate` until its status is one of `wanted`; DriverError on failed or cancelled."""
    wanted = set(wanted)
    deadline = trio.current_time() + timeout_s
    while True:
        status = (await qmp.execute("query-migrate", None, command_timeout_s)).get("status", "none")
        if status in wanted:
            return status
        if status in ("failed", "cancelled"):
            raise DriverError(f"the migration {status} while waiting for {', '.join(sorted(wanted))}; the "
                              "instance still runs on the source")
        if trio.current_time() >= deadline:
            raise DriverError(f"the migration was still {status} after {timeout_s} s")
        await trio.sleep(POLL_S)


async def release_for_switchover(qmp, indexes: Iterable[int], timeout_s: float = COMMAND_TIMEOUT_S) -> None:
    """Source, at pre-switchover: finish every mirror cleanly (the replicas hold every write) and detach
    the NBD nodes, so the destination's exports can be stopped and their files handed to the guest."""
    for index in indexes:
        await detach_mirror(qmp, index, timeout_s)


async def continue_switchover(qmp, timeout_s: float = COMMAND_TIMEOUT_S) -> None:
    """Source: let the paused migration switch over to the destination."""
    await qmp.execute("migrate-continue", {"state": "pre-switchover"}, timeout_s)


async def attach_reverse_mirrors(qmp, unix_paths: Mapping[int, str | os.PathLike], tls_creds_id: str | None = None,
                                 *, tls_hostname: str | None = None, timeout_s: float = COMMAND_TIMEOUT_S) -> None:
    """Destination, after `completed` and before `cont`: mirror each disk back into the old primary's copy
    (now exported there), `sync: none` because the pair is identical; READY comes at once."""
    for index, path in sorted(unix_paths.items()):
        await attach_mirror(qmp, index, path, tls_creds_id, in_sync=True, tls_hostname=tls_hostname,
                            timeout_s=timeout_s)
        await wait_ready(qmp, index, timeout_s)
