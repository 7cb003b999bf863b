"""Jobs over the API: submit once (a request id makes a retry on another node safe), follow, wait.

A job body carries a random `request_id`; the cluster answers a body whose id
it has seen with the job that body made, so `Client.post` may resend it to the
next node after a connection failure without submitting twice.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from urllib.parse import quote

from appliance.client.http import ApiError, Client, StreamBroken, Unreachable

JOB_FINISHED = ("success", "error", "canceled")
# Ask the server to wait this long per /wait request (it answers 503 if the job still runs then); it
# must stay well under the client's socket timeout, or the client would take the wait for a dead node.
WAIT_SLICE_S = 20
# A watch that ended before its job did is opened again after this pause, so a server that closes
# watches early is polled, not hammered.
REWATCH_PAUSE_S = 0.5


def new_request_id() -> str:
    """A random id for one job body: 64 bits, hex."""
    return secrets.token_hex(8)


def job_body(operations: list[dict], reason: str = "", request_id: str | None = None) -> dict:
    """The body of POST /api/v1/jobs: the operations, the reason and a request id."""
    body: dict = {"operations": operations, "request_id": request_id or new_request_id()}
    if reason:
        body["reason"] = reason
    return body


def operation(name: str, /, **params) -> dict:
    """One operation of a job body; parameters given as None are left out so that the server's defaults apply."""
    return {"op": name, "params": {key: value for key, value in params.items() if value is not None}}


def submit(client: Client, operations: list[dict], reason: str = "", request_id: str | None = None) -> int:
    """Submit one job; its id once the cluster committed it."""
    _, answer = client.post("/api/v1/jobs", job_body(operations, reason, request_id))
    if not isinstance(answer, dict) or not isinstance(answer.get("job"), int):
        raise ApiError(200, "bad_answer", f"{client.answered_by} answered the job submission with {answer!r}")
    return answer["job"]


def job_path(job_id: int, *rest: str) -> str:
    """The API path of a job, or of one of its sub-resources (`watch`, `wait`, `cancel`)."""
    return "/".join(("/api/v1/jobs", quote(str(job_id), safe=""), *rest))


def log_entry(item) -> tuple[float | None, str] | None:
    """(timestamp, message) of a watch line that is a log line, else None.

    Accepted shapes: `[ts, message]` (an `oplog` entry), `{"log": [ts, message]}`
    and `{"ts": ts, "message": message}`.
    """
    if isinstance(item, (list, tuple)) and len(item) == 2:
        ts, message = item
        return (ts if isinstance(ts, (int, float)) else None), str(message)
    if isinstance(item, dict):
        if "log" in item:
            return log_entry(item["log"])
        if "message" in item and "status" not in item:
            ts = item.get("ts", item.get("time"))
            return (ts if isinstance(ts, (int, float)) else None), str(item["message"])
    return None


def job_row(item) -> dict | None:
    """The job row a watch stream ends with (a bare row, or `{"job": row}`), else None."""
    if isinstance(item, dict):
        if isinstance(item.get("job"), dict):
            return item["job"]
        if "status" in item and "id" in item:
            return item
    return None


def follow(client: Client, job_id: int, on_log: Callable[[float | None, str], None]) -> dict:
    """Follow a job's watch stream to its end, calling `on_log` once per log line; the final job row.

    When the stream breaks (the node went away), the watch starts again on the
    next node that answers and the lines already shown are skipped.
    """
    shown = 0
    while True:
        count = 0
        try:
            for item in client.stream(job_path(job_id, "watch")):
                row = job_row(item)
                if row is not None and row.get("status") in JOB_FINISHED:
                    return _show_rest(row, shown, on_log)
                entry = log_entry(item)
                if entry is not None:
                    count += 1
                    if count > shown:
                        on_log(*entry)
                        shown = count
        except StreamBroken:
            pass
        # The stream ended or broke before the job did: look at the job, then watch again.
        _, row = client.get(job_path(job_id))
        if isinstance(row, dict) and row.get("status") in JOB_FINISHED:
            return _show_rest(row, shown, on_log)
        time.sleep(REWATCH_PAUSE_S)


def _show_rest(row: dict, shown: int, on_log) -> dict:
    """Show the log lines of the finished job that the stream did not (when it broke or ended early)."""
    for entry in (row.get("oplog") or [])[shown:]:
        found = log_entry(entry)
        if found is not None:
            on_log(*found)
    return row


def wait(client: Client, job_id: int) -> dict:
    """The job row once the job has ended (GET .../wait, again while the cluster says it still runs)."""
    while True:
        try:
            _, row = client.get(job_path(job_id, "wait"), timeout_s=min(WAIT_SLICE_S, int(client.timeout_s / 2) or 1))
        except Unreachable as error:
            if not error.answered:
                raise
            continue  # a node answered 503: the job still runs (or that node is catching up)
        if isinstance(row, dict) and row.get("status") in JOB_FINISHED:
            return row
