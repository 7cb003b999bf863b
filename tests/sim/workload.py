"""The simulated operators: bootstrap jobs, then a stream of the jobs a real cluster mixes, and the faults.

Operations name instances and nodes as a user would (by name), through a
random live node. A few resubmit an earlier request id (they must get the
same job back) or cancel a job.
"""

from __future__ import annotations

import heapq
import itertools

from appliance.core.io import op
from tests.sim import faults

MEMORY_MIB = 16384
DISK_MIB = 400_000
WEIGHTS = (("add", 28), ("startup", 10), ("shutdown", 8), ("reboot", 6), ("migrate", 18), ("failover", 12),
           ("remove", 7), ("modify", 3), ("resubmit", 4), ("cancel", 4), ("disarm", 6))


def initialise(sim) -> None:
    """The first job: cluster init."""
    sim.submit((op("cluster_init", name="sim.example.com", default_hypervisor="fake"),), node=sim.names[0])


def add_nodes(sim) -> None:
    """Every node added, one job each (they run side by side: they share the default group)."""
    for name in sim.names:
        sim.submit((op("node_add", name=name, address=f"{name}:7800", memory_mib=MEMORY_MIB, disk_mib=DISK_MIB,
                       cpus=16),), node=sim.names[0])


def schedule(sim, end: float) -> list:
    """The phase-one timeline: jobs spread over it, faults at random times; a heap of (time, order, action)."""
    order = itertools.count()
    timeline: list = []
    start = sim.now
    span = end - start
    for _ in range(sim.config.jobs):
        at = start + sim.rng.uniform(0, span)
        timeline.append((at, next(order), lambda: random_job(sim)))
    for _ in range(sim.config.faults):
        at = start + sim.rng.uniform(0.05 * span, 0.9 * span)
        timeline.append((at, next(order), lambda: faults.inject(sim)))
    heapq.heapify(timeline)
    return timeline


def random_job(sim) -> None:
    kind = sim.rng.choices([k for k, _ in WEIGHTS], weights=[w for _, w in WEIGHTS])[0]
    state = sim.checker.state
    instances = sorted(i.name for i in state.instances.values())
    if kind != "add" and not instances:
        kind = "add"
    name = sim.rng.choice(instances) if instances else ""
    if kind == "add":
        nodes = sim.rng.sample(sim.names, 2)
        number = sim.submitted
        operations = (op("instance_add", name=f"vm{number}.sim.example.com", primary=nodes[0], secondary=nodes[1],
                         disk_template="replicated", os="debian-12", memory_mib=sim.rng.choice((256, 512, 1024)),
                         disks=(sim.rng.choice((1024, 2048)),), start=sim.rng.random() < 0.9),)
    elif kind in ("startup", "shutdown", "reboot", "failover", "remove"):
        operations = (op(f"instance_{kind}", instance=name),)
    elif kind == "migrate":
        operations = (op("instance_migrate", instance=name, allow_failover=sim.rng.random() < 0.2),)
    elif kind == "modify":
        operations = (op("instance_modify", instance=name, memory_mib=sim.rng.choice((256, 512))),)
    elif kind == "resubmit" and sim.requests:
        request_id, operations = sim.rng.choice(sim.requests)
        sim.submit(operations, request_id=request_id)
        return
    elif kind == "disarm":
        # Recovery disarmed for a while (an expiry on the wall clock): no watchdog kills, no fence, meanwhile.
        until = sim.now + sim.rng.uniform(5.0, 20.0)
        operations = (op("cluster_mode", mode="recovery_disarmed", on=True, until=until),)
    elif kind == "cancel" and state.active_jobs:
        _cancel(sim, sim.rng.choice(sorted(state.active_jobs)))
        return
    else:
        return random_job(sim)
    request_id = f"req-{sim.submitted}"
    sim.requests.append((request_id, operations))
    sim.submit(operations, request_id=request_id)


def _cancel(sim, job_id: int) -> None:
    from appliance.core.io import CancelRequested

    live = [n for n in sim.names if sim.cores[n] is not None]
    if live:
        sim._step(sim.rng.choice(live), CancelRequested(next(sim.tokens), job_id, "admin"))
