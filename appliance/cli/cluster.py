"""`cairn cluster ...`: Ganeti's gnt-cluster over the cluster API (info, verify, master, modify, queue, watcher)."""

from __future__ import annotations

from typing import Optional

import typer

from appliance.cli import output as out
from appliance.cli.job import Failed, Session, command, parameter_error
from appliance.client.jobs import operation

app = typer.Typer(help="The cluster: show, verify, find the master, change parameters, drain the queue, "
                       "pause the watcher, disarm recovery.", no_args_is_help=True)
queue_app = typer.Typer(help="The job queue: drain it (refuse new jobs), undrain it, show its state.",
                        no_args_is_help=True)
watcher_app = typer.Typer(help="The watcher (automatic restarts and recovery): pause it, let it continue, show it.",
                          no_args_is_help=True)
app.add_typer(queue_app, name="queue")
app.add_typer(watcher_app, name="watcher")
recovery_app = typer.Typer(help="Automatic recovery of a dead node's instances: disarm, arm, info.",
                           no_args_is_help=True)
app.add_typer(recovery_app, name="recovery")

CLUSTER_PATH = "/api/v1/cluster"


@app.command("init")
def cluster_init(
    name: str = typer.Argument(..., help="The cluster's name."),
    node: str = typer.Option(..., "--node", help="This first node's name."),
    address: str = typer.Option(..., "--address", help="This node's API address, HOST:PORT (Raft uses PORT+1, the "
                                                      "data plane PORT+2)."),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Where this node keeps its data "
                                           "(default $XDG_DATA_HOME/cairn/NODE)."),
    memory_mib: Optional[int] = typer.Option(None, "--node-memory", help="Memory for instances in MiB "
                                             "(default: detected)."),
    disk_mib: Optional[int] = typer.Option(None, "--node-disk", help="Disk for instances in MiB (default: the "
                                           "data dir's free space)."),
    cpus: Optional[int] = typer.Option(None, "--node-cpus", help="CPUs for instances (default: detected)."),
    timeout_s: float = typer.Option(60.0, "--timeout", help="Seconds to wait for the cluster to be ready."),
) -> None:
    """Create a new cluster: its CA, this node's certificate, the Raft password and the first admin token;
    start this node's daemon and write the client configuration."""
    import os
    from pathlib import Path

    from appliance import local
    from appliance.nodes import NodeSetupError, init_cluster

    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    directory = Path(data_dir).expanduser().resolve() if data_dir else base / "cairn" / node
    try:
        token = init_cluster(name, node, address, directory,
                             {"memory_mib": memory_mib, "disk_mib": disk_mib, "cpus": cpus})
        written = local.write_node_client(name, address, directory, token)
        local.start_node(directory)
        local.wait_for_nodes(written[0], 1, timeout_s)
    except (NodeSetupError, local.LocalError) as error:
        raise Failed(f"Failure: {error}") from None
    typer.echo(f"Cluster {name} is up with node {node} at {address} (data in {directory}).")
    typer.echo(f"Client configuration, with the admin token: {', '.join(str(p) for p in written)}")
    typer.echo(f"Add nodes with: cairn node add NODE --address HOST:PORT")


@command(app, name="info")
def cluster_info(session: Session, at: Optional[int] = typer.Option(
        None, "--at", help="Show the cluster as it was right after this log seq (replayed from history).")) -> None:
    """Show the cluster: name, master, leader, log seq and digest, parameters, modes."""
    if at is not None and at < 0:
        raise typer.BadParameter("must be 0 or more", param_hint="--at")
    cluster = session.read(CLUSTER_PATH, at=at)
    session.show_object(cluster, out.cluster_info(cluster))


@command(app, name="verify")
def cluster_verify(session: Session) -> None:
    """Check the cluster's consistency; print each problem and exit 1 if there is any."""
    answer = session.read(f"{CLUSTER_PATH}/verify")
    problems = list(answer.get("problems") or [])
    if session.output == "json":
        session.show_object(answer, [])
    else:
        typer.echo("* Verifying cluster")
        for problem in problems:
            typer.echo(f"  - ERROR: {problem}")
    if problems or not answer.get("ok", not problems):
        raise Failed("", 1)


@command(app, name="master")
def cluster_master(session: Session) -> None:
    """Print the master node's name (one line)."""
    answer = session.read(f"{CLUSTER_PATH}/master")
    if session.output == "json":
        session.show_object(answer, [])
    else:
        typer.echo(answer["master"])


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [name.strip() for name in text.split(",") if name.strip()]


def _ipolicy(text: str | None) -> dict | None:
    """The instance policy of --ipolicy: a JSON object, or @FILE holding one."""
    import json

    if text is None:
        return None
    try:
        if text.startswith("@"):
            with open(text[1:], encoding="utf-8") as f:
                text = f.read()
        policy = json.loads(text)
    except OSError as error:
        raise parameter_error(f"cannot read {text[1:]}: {error.strerror}") from None
    except ValueError as error:
        raise parameter_error(f"--ipolicy is not JSON ({error})") from None
    if not isinstance(policy, dict):
        raise parameter_error("--ipolicy must be a JSON object with min, max, std, vcpu_ratio and spindle_ratio")
    return policy


@command(app, name="modify", kind="write")
def cluster_modify(
    session: Session,
    enabled_hypervisors: Optional[str] = typer.Option(None, "--enabled-hypervisors", help="Comma-separated, "
                                                                                          "e.g. kvm,fake."),
    enabled_disk_templates: Optional[str] = typer.Option(None, "--enabled-disk-templates",
                                                         help="Comma-separated, e.g. diskless,file,replicated."),
    default_hypervisor: Optional[str] = typer.Option(None, "--default-hypervisor", help="One of the enabled ones."),
    mac_prefix: Optional[str] = typer.Option(None, "--mac-prefix", help="Three octets, e.g. aa:00:00."),
    ipolicy: Optional[str] = typer.Option(None, "--ipolicy", help="The whole instance policy as a JSON object "
                                                                  "(min, max, std, vcpu_ratio, spindle_ratio), "
                                                                  "or @FILE."),
    feature_level: Optional[int] = typer.Option(None, "--feature-level", help="Raise the feature level (after "
                                                                              "upgrading every node)."),
    fencing_interval: Optional[int] = typer.Option(None, "--fencing-interval", help="Seconds."),
    recovery_interval: Optional[int] = typer.Option(None, "--recovery-interval", help="Seconds."),
) -> None:
    """Change cluster parameters."""
    changes = dict(enabled_hypervisors=_names(enabled_hypervisors),
                   enabled_disk_templates=_names(enabled_disk_templates), default_hypervisor=default_hypervisor,
                   mac_prefix=mac_prefix, ipolicy=_ipolicy(ipolicy), feature_level=feature_level,
                   fencing_interval_s=fencing_interval, recovery_interval_s=recovery_interval)
    if all(value is None for value in changes.values()):
        raise parameter_error("nothing to change; see 'cairn cluster modify --help' for the parameters")
    session.run([operation("cluster_modify", **changes)])


def active_mode(cluster: dict, mode: str) -> dict | None:
    """The cluster-wide mode called `mode` if it is on (and has not expired), else None."""
    from appliance.clock import now

    for found in cluster.get("modes") or []:
        if found.get("mode") == mode and not found.get("target"):
            until = found.get("until")
            if until is None or until > now():
                return found
    return None


@command(queue_app, name="drain", kind="write")
def queue_drain(session: Session) -> None:
    """Refuse new jobs (jobs already queued still run) until 'cairn cluster queue undrain'."""
    session.run([operation("cluster_mode", mode="queue_drained", on=True)])


@command(queue_app, name="undrain", kind="write")
def queue_undrain(session: Session) -> None:
    """Accept new jobs again."""
    session.run([operation("cluster_mode", mode="queue_drained", on=False)])


@command(queue_app, name="info")
def queue_info(session: Session) -> None:
    """Say whether the queue is drained."""
    mode = active_mode(session.read(CLUSTER_PATH), "queue_drained")
    if session.output == "json":
        session.show_object({"drained": mode is not None, "until": (mode or {}).get("until")}, [])
    else:
        typer.echo("The drain flag is set" if mode else "The drain flag is unset")


@command(watcher_app, name="pause", kind="write")
def watcher_pause(session: Session, duration: str = typer.Argument(
        ..., help="How long: a number with s, m, h, d or w (bare: seconds), e.g. 1h.")) -> None:
    """Pause the watcher for a while (it resumes by itself afterwards)."""
    from appliance.clock import now

    try:
        seconds = out.parse_duration(duration)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="DURATION") from None
    until = now() + seconds
    if session.run([operation("cluster_mode", mode="watcher_paused", on=True, until=until)]) is not None:
        typer.echo(f"The watcher is paused until {out.localtime_text(until)}.", err=True)


@command(watcher_app, name="continue", kind="write")
def watcher_continue(session: Session) -> None:
    """Let the watcher run again."""
    session.run([operation("cluster_mode", mode="watcher_paused", on=False)])


@command(watcher_app, name="info")
def watcher_info(session: Session) -> None:
    """Say whether the watcher is paused, and until when."""
    mode = active_mode(session.read(CLUSTER_PATH), "watcher_paused")
    if session.output == "json":
        session.show_object({"paused": mode is not None, "until": (mode or {}).get("until")}, [])
    elif mode is None:
        typer.echo("The watcher is not paused.")
    elif mode.get("until") is None:
        typer.echo("The watcher is paused.")
    else:
        typer.echo(f"The watcher is paused until {out.localtime_text(mode['until'])}.")


@command(recovery_app, name="disarm", kind="write")
def recovery_disarm(session: Session) -> None:
    """Stop automatic recovery (a dead node's instances stay where they are) until 'cairn cluster recovery arm'."""
    session.run([operation("cluster_mode", mode="recovery_disarmed", on=True)])


@command(recovery_app, name="arm", kind="write")
def recovery_arm(session: Session) -> None:
    """Let automatic recovery act again."""
    session.run([operation("cluster_mode", mode="recovery_disarmed", on=False)])


@command(recovery_app, name="info")
def recovery_info(session: Session) -> None:
    """Say whether automatic recovery is disarmed."""
    mode = active_mode(session.read(CLUSTER_PATH), "recovery_disarmed")
    if session.output == "json":
        session.show_object({"disarmed": mode is not None, "until": (mode or {}).get("until")}, [])
    else:
        typer.echo("Automatic recovery is disarmed." if mode else "Automatic recovery is armed.")
