"""`cairn node ...`: Ganeti's gnt-node over the cluster API (list, info, modify, migrate, failover, add, remove)."""

from __future__ import annotations

from typing import Optional
from urllib.parse import quote

import typer

from appliance.cli import output as out
from appliance.cli.instance import hostname
from appliance.cli.job import Failed, Session, command, parameter_error
from appliance.client.jobs import operation

app = typer.Typer(help="Nodes: list, show, change flags, migrate or fail over their instances, add, remove.",
                  no_args_is_help=True)

NODE = typer.Argument(..., metavar="NODE", help="The node's name.")


def node_path(name: str) -> str:
    """The API path of a node."""
    return f"/api/v1/nodes/{quote(hostname(name), safe='')}"


def _yes_no(option: str, text: str | None) -> bool | None:
    if text is None:
        return None
    try:
        return out.parse_bool(text)
    except ValueError as error:
        raise typer.BadParameter(f"{error}; give yes or no", param_hint=option) from None


@command(app, name="list", kind="list")
def node_list(session: Session, names: Optional[list[str]] = typer.Argument(
        None, metavar="[NODE]...", help="Only these nodes, in this order.")) -> None:
    """List nodes: Ganeti's columns Node DTotal DFree MTotal MNode MFree Pinst Sinst by default (-o for others:
    name, id, address, group, mtotal, mnode, mfree, dtotal, dfree, ctotal, pinst_cnt, sinst_cnt, pinst_list,
    sinst_list, offline, drained, master, master_capable, vm_capable, role, voter, fenced, tags)."""
    session.show_list("node", "/api/v1/nodes", [hostname(n) for n in names] if names else None)


@command(app, name="info")
def node_info(session: Session, name: str = NODE,
              units: str = typer.Option("h", "--units", help="Sizes: h (human-readable), m, g or t.")) -> None:
    """Show a node: address, group, role, flags, memory, disk and its instances."""
    if units not in out.UNITS:
        raise typer.BadParameter(f"'{units}' is not one of {', '.join(out.UNITS)}", param_hint="--units")
    row = session.read(node_path(name))
    session.show_object(row, out.node_info(row, units))


@command(app, name="modify", kind="write")
def node_modify(
    session: Session,
    name: str = NODE,
    offline: Optional[str] = typer.Option(None, "-O", "--offline", help="yes: declare the node dead (its "
                                                                        "instances may start elsewhere); no: back."),
    drained: Optional[str] = typer.Option(None, "-D", "--drained", help="yes: no new instances on the node; no: "
                                                                        "accept them again."),
    master_capable: Optional[str] = typer.Option(None, "--master-capable", help="yes or no."),
    vm_capable: Optional[str] = typer.Option(None, "--vm-capable", help="yes or no (no only for an empty node)."),
    role: Optional[str] = typer.Option(None, "--role", help="voter or non-voter (in the replicated log)."),
    memory: Optional[str] = typer.Option(None, "--memory", help="Memory for instances (MiB, or with M, G or T)."),
    disk: Optional[str] = typer.Option(None, "--disk", help="Disk for instances (MiB, or with M, G or T)."),
    cpus: Optional[int] = typer.Option(None, "--cpus", help="CPUs for instances."),
) -> None:
    """Change a node's flags, its role in the log, or the capacity it offers."""
    sizes = {}
    for key, text in (("memory_mib", memory), ("disk_mib", disk)):
        if text is not None:
            try:
                sizes[key] = out.parse_size(text)
            except ValueError as error:
                raise parameter_error(str(error)) from None
    changes = dict(offline=_yes_no("--offline", offline), drained=_yes_no("--drained", drained),
                   master_capable=_yes_no("--master-capable", master_capable),
                   vm_capable=_yes_no("--vm-capable", vm_capable), role=role, cpus=cpus, **sizes)
    if all(value is None for value in changes.values()):
        raise parameter_error("nothing to change; give --offline, --drained, --master-capable, --vm-capable, "
                              "--role, --memory, --disk or --cpus")
    session.run([operation("node_modify", node=hostname(name), **changes)])


@command(app, name="migrate", kind="write")
def node_migrate(
    session: Session,
    name: str = NODE,
    allow_failover: bool = typer.Option(False, "--allow-failover", help="Fail over the instances that cannot "
                                                                        "migrate live."),
) -> None:
    """Live-migrate every primary instance of a node to its secondary (one follow-up job per instance)."""
    session.run([operation("node_migrate", node=hostname(name), allow_failover=allow_failover or None)])


@command(app, name="failover", kind="write")
def node_failover(session: Session, name: str = NODE) -> None:
    """Fail over every primary instance of a node to its secondary (stop, start there): one job per instance."""
    row = session.read(node_path(name))
    instances = list(row.get("pinst_list") or [])
    if not instances:
        typer.echo(f"No primary instances on node {row.get('name', name)}, exiting.", err=True)
        return
    job_ids = [(instance, session.submit_job([operation("instance_failover", instance=instance)]))
               for instance in instances]
    if session.submit:
        for _, job_id in job_ids:
            typer.echo(f"JobID: {job_id}")
        return
    failed = []
    for instance, job_id in job_ids:
        result = session.follow(job_id)
        if result.get("status") != "success":
            failed.append(f"{instance} (job {job_id}): {out.job_failure_text(result)}")
    if failed:
        raise Failed("Failed to fail over:\n" + "\n".join(failed))
    typer.echo("All instances failed over successfully.", err=True)


@command(app, name="evacuate", kind="write")
def node_evacuate(
    session: Session,
    name: str = NODE,
    primary_only: bool = typer.Option(False, "-p", "--primary-only", help="Move only the instances whose primary "
                                                                          "the node is (migrate, or fail over)."),
    secondary_only: bool = typer.Option(False, "-s", "--secondary-only", help="Move only the instances whose "
                                                                              "secondary the node is "
                                                                              "(replace-disks)."),
    iallocator: Optional[str] = typer.Option(None, "-I", "--iallocator", help="The allocator that chooses the new "
                                                                              "nodes: hail (the default)."),
    new_node: Optional[str] = typer.Option(None, "-n", "--new-secondary", help="Make this node the new secondary "
                                                                               "of every secondary instance (with "
                                                                               "--secondary-only)."),
) -> None:
    """Move every instance off a node, one follow-up job per instance: hail chooses the new nodes (without -p or -s
    an instance leaves both its nodes for a new pair); the whole evacuation is refused if one cannot move."""
    if primary_only and secondary_only:
        raise parameter_error("Only one of the --primary-only and --secondary-only options can be passed")
    if iallocator and new_node:
        raise parameter_error("give either -I hail or -n NODE, not both")
    mode = "primary-only" if primary_only else "secondary-only" if secondary_only else "all"
    if new_node and mode != "secondary-only":
        raise parameter_error("a new node (-n) replaces secondaries only; add --secondary-only, or leave out -n to "
                              "let hail move primaries too")
    job_id = session.submit_job([operation("node_evacuate", node=hostname(name), mode=mode, iallocator=iallocator,
                                           remote_node=hostname(new_node) if new_node else None)])
    if session.submit:
        typer.echo(f"JobID: {job_id}")
        return
    row = session.follow(job_id)
    if row.get("status") != "success":
        raise Failed(out.job_failure_text(row))
    results = list(row.get("opresult") or [])
    children = list((results[-1] or {}).get("jobs") or []) if results and isinstance(results[-1], dict) else []
    if not children:
        typer.echo(f"No instances to evacuate on node {hostname(name)}, exiting.", err=True)
        return
    failed = []
    for child in children:
        result = session.follow(child)
        if result.get("status") != "success":
            failed.append(f"job {child}: {out.job_failure_text(result)}")
    if failed:
        raise Failed(f"There were {len(failed)} errors during the evacuation:\n" + "\n".join(failed))
    typer.echo("All instances evacuated successfully.", err=True)


@command(app, name="maintenance", kind="write")
def node_maintenance(
    session: Session,
    name: str = NODE,
    state: str = typer.Argument(..., metavar="on|off", help="on: the node gets no new instances and is not "
                                                            "recovered automatically; off: back to normal."),
    duration: Optional[str] = typer.Option(None, "--for", help="With on: end by itself after this long "
                                                                "(s, m, h, d or w; bare: seconds)."),
) -> None:
    """Put a node in maintenance (or take it out)."""
    from appliance.clock import now

    if state not in ("on", "off"):
        raise typer.BadParameter("give on or off", param_hint="on|off")
    until = None
    if duration is not None:
        try:
            until = now() + out.parse_duration(duration)
        except ValueError as error:
            raise typer.BadParameter(str(error), param_hint="--for") from None
    session.run([operation("cluster_mode", mode="maintenance", on=state == "on", until=until,
                           target=hostname(name))])


@command(app, name="add", kind="plain")
def node_add(
    session: Session,
    name: str = NODE,
    address: str = typer.Option(..., "--address", help="The new node's API address, HOST:PORT (Raft uses PORT+1, "
                                                      "the data plane PORT+2)."),
    ttl_s: int = typer.Option(3600, "--ttl", help="Seconds the join token stays valid."),
) -> None:
    """Issue a one-time join token for a new node; run 'cairn node join TOKEN ...' on the new machine."""
    _, answer = session.client.post("/api/v1/nodes/join-tokens",
                                     {"node": hostname(name), "address": address, "ttl_s": ttl_s})
    typer.echo(answer["token"])
    typer.echo(f"Join token for node {answer['node']} at {answer['address']}, valid for {ttl_s} s and once; on the "
               f"new machine run:\n  cairn node join TOKEN --address {answer['address']} --data-dir DIR", err=True)


@app.command("join")
def node_join(
    token: str = typer.Argument(..., help="The token 'cairn node add' printed."),
    address: str = typer.Option(..., "--address", help="This node's API address, HOST:PORT, as in the token."),
    data_dir: str = typer.Option(..., "--data-dir", help="Where this node keeps its data (made now)."),
    memory_mib: Optional[int] = typer.Option(None, "--node-memory", help="Memory for instances in MiB "
                                             "(default: detected)."),
    disk_mib: Optional[int] = typer.Option(None, "--node-disk", help="Disk for instances in MiB (default: the "
                                           "data dir's free space)."),
    cpus: Optional[int] = typer.Option(None, "--node-cpus", help="CPUs for instances (default: detected)."),
    no_start: bool = typer.Option(False, "--no-start", help="Make the data dir but do not start the daemon."),
) -> None:
    """Join this machine to a cluster with a join token: make its key, get it certified, start its daemon."""
    from pathlib import Path

    from appliance.local import start_node
    from appliance.nodes import NodeSetupError, join_cluster

    directory = Path(data_dir).expanduser().resolve()
    try:
        answer = join_cluster(token, address, directory,
                              {"memory_mib": memory_mib, "disk_mib": disk_mib, "cpus": cpus})
    except NodeSetupError as error:
        typer.echo(f"Failure: {error}", err=True)
        raise typer.Exit(1)
    typer.echo(f"Node {answer['node']} joined cluster {answer['cluster']} as a {answer['role']}.", err=True)
    if not no_start:
        pid = start_node(directory)
        typer.echo(f"Started its watchdog and its daemon (pid {pid}); their logs are {directory / 'watchdog.log'} "
                   f"and {directory / 'daemon.log'}.", err=True)


@command(app, name="remove", kind="write")
def node_remove(session: Session, name: str = NODE) -> None:
    """Remove a node from the cluster (it must hold no instances)."""
    session.run([operation("node_remove", node=hostname(name))])
