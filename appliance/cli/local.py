"""`cairn up`, `cairn down` (a local cluster on 127.0.0.1) and `cairn daemon` (one node's process)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

TOUR = """\
The cluster is up: {nodes} nodes on 127.0.0.1, leader {leader}.
Client configuration: {config}

Try:
  cairn node list
  cairn instance add -t diskless -n node1 --no-install web9
  cairn instance add -t replicated -n node1:node2 -s 1G --no-install db9
  cairn instance list
  cairn instance migrate db9        (live, to its secondary)
  cairn job list
  cairn down          (stops the nodes and their instances)
"""


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("down")(down)
    app.command("daemon")(daemon)
    app.command("watchdog")(watchdog)


def up(nodes: Optional[int] = typer.Option(None, "--nodes", min=1, help="How many nodes (default 3 for a new "
                                           "cluster; the same number as before otherwise)."),
       directory: Optional[Path] = typer.Option(None, "--dir", help="Where the cluster lives "
                                                "(default $XDG_DATA_HOME/cairn/local)."),
       timeout_s: float = typer.Option(60.0, "--timeout", help="Seconds to wait for the cluster to be ready."),
       memory_mib: Optional[int] = typer.Option(None, "--node-memory", help="Each node's memory in MiB (default: "
                                                "its share of this host's). A new cluster only."),
       disk_mib: Optional[int] = typer.Option(None, "--node-disk", help="Each node's disk in MiB (default: its "
                                              "share of the free space). A new cluster only."),
       cpus: Optional[int] = typer.Option(None, "--node-cpus", help="Each node's cpus (default: this host's). "
                                          "A new cluster only."),
       hypervisor: str = typer.Option("fake", "--hypervisor", help="The default hypervisor of a new cluster: "
                                      "fake (a process per instance) or kvm (QEMU; TCG where KVM cannot run "
                                      "guests). Both are enabled either way.")):
    """Start a local cluster on 127.0.0.1: make it the first time, start every node that is not running."""
    from appliance import local

    directory = (directory or local.default_dir()).expanduser().resolve()
    try:
        cluster, started = local.up(directory, nodes, echo=lambda text: typer.echo(text, err=True),
                                    capacity={"memory_mib": memory_mib, "disk_mib": disk_mib, "cpus": cpus},
                                    hypervisor=hypervisor)
        if started:
            typer.echo(f"Started {', '.join(started)}", err=True)
        info = local.wait_ready(cluster, timeout_s)
    except local.LocalError as error:
        typer.echo(f"Failure: {error}", err=True)
        raise typer.Exit(1)
    typer.echo(TOUR.format(nodes=len(cluster.nodes), leader=info.get("leader"), config=cluster.client_config))


def down(directory: Optional[Path] = typer.Option(None, "--dir", help="The local cluster's directory "
                                                  "(default $XDG_DATA_HOME/cairn/local).")):
    """Stop the local cluster's daemons and every instance process they started."""
    from appliance import local

    directory = (directory or local.default_dir()).expanduser().resolve()
    try:
        stopped = local.down(directory)
    except local.LocalError as error:
        typer.echo(f"Failure: {error}", err=True)
        raise typer.Exit(1)
    typer.echo(f"Stopped {', '.join(stopped)}" if stopped else "No node was running")


def daemon(data_dir: Path = typer.Option(..., "--data-dir", help="The node's data directory."),
           log_level: str = typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING or ERROR.")):
    """Run one node's daemon in the foreground (the log member, the core, the drivers and the API)."""
    from appliance.daemon.config import ConfigError, read_config
    from appliance.daemon.main import main

    try:
        read_config(data_dir)
    except ConfigError as error:
        typer.echo(f"Failure: {error}", err=True)
        raise typer.Exit(1)
    main(str(data_dir), log_level)
    sys.exit(0)


def watchdog(data_dir: Path = typer.Option(..., "--data-dir", help="The node's data directory."),
             device: str = typer.Option("", "--device", help="Also feed this watchdog device (/dev/watchdog, "
                                        "softdog or hardware) while the lease holds; it resets the machine if "
                                        "this process stops."),
             log_level: str = typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING or ERROR.")):
    """Run one node's watchdog in the foreground: it kills the node's instances when the daemon's lease lapses."""
    from appliance.fencing import main

    if not (data_dir / "node.json").exists():
        typer.echo(f"Failure: {data_dir} is not a node's data directory (no node.json); make one with 'cairn "
                   "cluster init' or 'cairn node join'", err=True)
        raise typer.Exit(1)
    main(str(data_dir), device, log_level)
