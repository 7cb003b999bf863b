"""`cairn events ...`: build, verify, replay, checkpoint and export event files; export and tail the live cluster's.

`export` reads an event file with `--file`, and the cluster's history over the
API without it; `tail` follows the cluster's live log.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from typing import Optional

import typer

from appliance.cli.job import Session, command, reporting
from appliance.cli.output import event_line
from appliance.client.http import StreamBroken
from appliance.client.jobs import REWATCH_PAUSE_S

app = typer.Typer(help="Events: demo history, verify, replay, checkpoint and export files; export and tail the "
                       "live cluster's.", no_args_is_help=True)

OUTPUT_HELP = "Output format: text for people, json for scripts."


def fail(message: str, code: int = 1) -> None:
    """Print an error on stderr and exit."""
    typer.echo(f"cairn: {message}", err=True)
    raise typer.Exit(code)


def _check_output(output: str) -> None:
    if output not in ("text", "json"):
        fail(f"unknown --output '{output}'; use text or json", 2)


@app.command()
def demo(
    events: int = typer.Option(20000, "--events", "-n", help="How many events to write (at least)."),
    out: str = typer.Option("demo.events", "--out", "-o", help="The event file to write (replaced)."),
    seed: int = typer.Option(1, help="Seed of the synthetic history: the same seed gives the same file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines."),
) -> None:
    """Write a realistic synthetic history (50 nodes, thousands of instances) built through the real operations."""
    from appliance.demo import write_demo

    if events < 1:
        fail("--events must be at least 1")

    def progress(count: int) -> None:
        if not quiet:
            typer.echo(f"  {count} events written", err=True)

    summary = write_demo(out, events, seed, progress)
    typer.echo(f"wrote {summary.count} events to {out} (last seq {summary.last_seq}, hash {summary.last_hash.hex()})")


@app.command()
def verify(
    file: str = typer.Argument(..., help="The event file to check."),
    open_segment: bool = typer.Option(False, "--open", help="Accept a file without a seal (a live segment)."),
    output: str = typer.Option("text", "--output", help=OUTPUT_HELP),
) -> None:
    """Check the hash chain, every CRC, the seal and that every payload decodes; exit 1 naming the first bad seq."""
    from appliance.eventfile import EventFileError, verify as verify_file

    _check_output(output)
    _exists(file)
    try:
        summary = verify_file(file, require_seal=not open_segment)
    except EventFileError as error:
        if output == "json":
            typer.echo(json.dumps({"ok": False, "first_bad_seq": error.seq, "error": str(error)}))
            raise typer.Exit(1)
        fail(f"{file}: {error}")
    if output == "json":
        typer.echo(json.dumps({"ok": True, "count": summary.count, "first_seq": summary.first_seq,
                               "last_seq": summary.last_seq, "last_hash": summary.last_hash.hex(),
                               "sealed": summary.sealed}))
    else:
        typer.echo(f"{file}: OK, {summary.count} records, seq {summary.first_seq}..{summary.last_seq}, "
                   f"last hash {summary.last_hash.hex()}" + ("" if summary.sealed else " (open: no seal)"))


def _exists(file: str) -> None:
    import os

    if not os.path.isfile(file):
        fail(f"no such file: {file}")


@app.command()
def replay(
    file: str = typer.Argument(..., help="The event file to fold."),
    at: Optional[int] = typer.Option(None, "--at", help="Stop after this seq (point-in-time state)."),
    no_checkpoints: bool = typer.Option(False, "--no-checkpoints", help="Fold from event 1 even if checkpoints exist."),
    output: str = typer.Option("text", "--output", help=OUTPUT_HELP),
) -> None:
    """Fold the events into the cluster state; print a summary and its digest."""
    from appliance.eventfile import EventFileError, replay_file

    _check_output(output)
    _exists(file)
    if at is not None and at < 0:
        fail("--at must be 0 or more")
    try:
        state = replay_file(file, at, use_checkpoints=not no_checkpoints)
    except EventFileError as error:
        fail(f"{file}: {error}")
    summary = state_summary(state)
    if output == "json":
        typer.echo(json.dumps(summary, sort_keys=True))
        return
    for key, value in summary.items():
        typer.echo(f"{key}: {value}")


def state_summary(state) -> dict:
    """The few facts a person wants from a replayed state, digest last."""
    admin = Counter(i.admin_state for i in state.instances.values())
    templates = Counter(i.disk_template for i in state.instances.values())
    jobs = Counter(j.status for j in state.jobs.values())
    return {
        "seq": state.seq,
        "cluster": state.cluster.name if state.cluster else "(not initialised)",
        "nodes": len(state.nodes),
        "groups": len(state.groups),
        "users": len(state.users),
        "instances": len(state.instances),
        "instances_up": admin.get("up", 0),
        "instances_down": admin.get("down", 0),
        "templates": ", ".join(f"{k}={v}" for k, v in sorted(templates.items())) or "-",
        "jobs_kept": len(state.jobs),
        "jobs": ", ".join(f"{k}={v}" for k, v in sorted(jobs.items())) or "-",
        "next_job_id": state.next_job_id,
        "digest": state.digest(),
    }


@app.command()
def checkpoint(
    file: str = typer.Argument(..., help="The event file to checkpoint."),
    every: int = typer.Option(50000, "--every", help="Write a checkpoint after every N records."),
) -> None:
    """Write state checkpoints beside the file (FILE.checkpoints/), so 'replay --at' starts near its target."""
    from appliance.eventfile import EventFileError, checkpoint_dir, write_checkpoints

    _exists(file)
    if every < 1:
        fail("--every must be at least 1")
    try:
        seqs = write_checkpoints(file, every)
    except EventFileError as error:
        fail(f"{file}: {error}")
    typer.echo(f"wrote {len(seqs)} checkpoints to {checkpoint_dir(file)}"
               + (f" (seq {seqs[0]}..{seqs[-1]})" if seqs else ""))


@app.command()
def export(
    file: Optional[str] = typer.Option(None, "--file", "-f", help="The event file to export (without it: the live "
                                                                  "cluster's history, over the API)."),
    since: int = typer.Option(0, "--since", help="Only records after this seq."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl (one JSON object per line, with who and why) or cbor "
                                                       "(a sealed record file)."),
    api: Optional[str] = typer.Option(None, "--api", help="Without --file: call this node (HOST:PORT, or "
                                                          "unix:PATH) instead of the config's nodes; also CAIRN_API."),
    config: Optional[str] = typer.Option(None, "--config", help="Without --file: the client config file (default: "
                                                                "$CAIRN_CONFIG, else ~/.config/cairn/client.toml)."),
) -> None:
    """Write the events to standard output as JSON Lines or as a CBOR record stream."""
    if fmt not in ("jsonl", "cbor"):
        fail(f"unknown --format '{fmt}'; use jsonl or cbor", 2)
    if since < 0:
        fail("--since must be 0 or more")
    if file is None:
        _export_live(api, config, since, fmt)
        return
    from appliance.eventfile import EventFileError, export as export_file

    _exists(file)
    out = sys.stdout if fmt == "jsonl" else sys.stdout.buffer
    try:
        export_file(file, out, fmt, since)
    except EventFileError as error:
        out.flush()
        fail(f"{file}: {error}")
    out.flush()


def _export_live(api: Optional[str], config: Optional[str], since: int, fmt: str) -> None:
    """Copy GET /api/v1/events (NDJSON or CBOR, as the cluster sends it) to standard output."""
    session = Session(api, config)
    with reporting(session):
        sys.stdout.flush()
        out = sys.stdout.buffer
        for chunk in session.client.raw("/api/v1/events", since=since, format=fmt):
            out.write(chunk)
        out.flush()


@command(app, name="tail", kind="plain")
def tail(
    session: Session,
    since: Optional[int] = typer.Option(None, "--since", help="Start after this seq (default: with the next event)."),
    output: str = typer.Option("text", "--output", help="text (seq, type, actor, reason) or json (each event as "
                                                        "one JSON line)."),
) -> None:
    """Follow the cluster's live log: one line per event (seq, type, actor, reason) until interrupted."""
    _check_output(output)
    if since is not None and since < 0:
        fail("--since must be 0 or more")
    try:
        while True:
            count = 0
            try:
                for event in session.client.stream("/api/v1/events/tail", since=since):
                    typer.echo(json.dumps(event) if output == "json" else event_line(event))
                    count += 1
                    if isinstance(event, dict) and isinstance(event.get("seq"), int):
                        since = event["seq"]
            except StreamBroken:
                pass  # the node went away or stayed quiet: follow on from the last event seen
            if not count:
                time.sleep(REWATCH_PAUSE_S)
    except KeyboardInterrupt:
        return
