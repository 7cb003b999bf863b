"""The simulator's faults, each drawn from the run's one RNG, and the healing of phase two.

A daemon crash keeps its machine's instances running (the hypervisor is not
the daemon) until its watchdog kills them, should the daemon stay away past
its lease; a power loss takes them at once. Either way a node that holds no
lease for the recovery interval is fenced by the leader's healer and its
instances are recovered elsewhere; a partition does the same to the minority
(its watchdog kills its instances, the majority fences it). A fenced node
comes back by itself (NodeReturned) once it can reach the leader again. In a
share of the power losses an operator is quicker: they mark the node offline
(the operator's fence proof) and fail its instances over by hand. An operator
only ever fences a node that really lost power.
"""

from __future__ import annotations

from appliance.core.io import op

OPERATOR_FENCES = 0.25
KINDS = ("leader_crash", "daemon_crash", "power_loss", "partition", "drops", "driver_failures", "driver_hangs",
         "guest_crash", "guest_shutdown", "clock_jump")


def inject(sim) -> None:
    kind = sim.rng.choice(KINDS)
    globals()[f"_{kind}"](sim)


def _note(sim, text: str) -> None:
    sim.faults.append(text)
    sim.note(text)


def _up(sim) -> list[str]:
    return [n for n in sim.names if sim.cores[n] is not None]


def _crash(sim, name: str, power: bool) -> None:
    sim.log.crash(name)
    sim.cores[name] = None
    sim.incarnation[name] += 1
    if power:
        sim.world.hosts[name].power_off()
        sim.powered_off.add(name)
        sim.leases.power_lost(name)
        sim.machine_cleared(name, "the power loss took every instance")


def restart(sim, name: str) -> None:
    """Start a node's daemon again: a fresh core that replays the whole log it has.

    A machine the operator is fencing stays off until the fence job has ended:
    the operator asserted that its instances are dead, and that assertion must
    stay true until the log has it (otherwise the fence proof would be false).
    """
    if sim.cores[name] is not None:
        return
    if _fence_pending(sim, name):
        sim._later(2.0, "restart", name)
        return
    if name in sim.powered_off:
        sim.world.hosts[name].power_on()
        sim.powered_off.discard(name)
    sim.log.restart(name)
    core = sim._new_core(name)
    sim.cores[name] = core
    sim.fed[name] = 0
    sim.told[name] = None
    sim.wake[name] = sim.now
    sim.leases.daemon_started(name)


def _fence_pending(sim, name: str) -> bool:
    """True while the operator's fence job for this machine has not ended."""
    request = sim.fences.get(name)
    if request is None:
        return False
    state = sim.checker.state
    job = state.jobs.get(state.job_requests.get(request, -1))
    if job is None or job.status not in ("success", "error", "canceled"):
        return True
    del sim.fences[name]
    return False


def _leader_crash(sim) -> None:
    _daemon_crash(sim, leader=True)


def _daemon_crash(sim, leader: bool = False) -> None:
    """A daemon (the leader's, or any node's) crashes; its machine keeps running; it restarts a few seconds later."""
    up = _up(sim)
    if len(up) < len(sim.names) or (leader and sim.log.leader() is None):
        return _drops(sim)
    name = sim.log.leader() if leader else sim.rng.choice(up)
    _crash(sim, name, power=False)
    _note(sim, f"leader {name}'s daemon crashed" if leader else f"{name}'s daemon crashed")
    # Back within the lease, after it (the watchdog kills), or after the recovery interval (fenced too).
    sim._later(sim.rng.uniform(1.0, 14.0), "restart", name)


def _power_loss(sim) -> None:
    """A machine loses power; the healer fences it (or, now and then, an operator first); it comes back later."""
    up = _up(sim)
    if len(up) < len(sim.names):
        return _drops(sim)
    name = sim.rng.choice(up)
    _crash(sim, name, power=True)
    _note(sim, f"{name} lost power")
    if sim.rng.random() < OPERATOR_FENCES:
        sim._later(sim.rng.uniform(2.0, 6.0), "fence", name)
    # Sometimes back before the recovery interval ends (no fence), mostly after its fence and recovery.
    back = sim.rng.uniform(2.0, 7.0) if sim.rng.random() < 0.25 else sim.rng.uniform(15.0, 40.0)
    sim._later(back, "restart", name)


def fence(sim, name: str) -> None:
    """The operator marks the dead node offline (its fence proof) and fails over what it ran."""
    if name not in sim.powered_off:
        return
    sim.fenced.add(name)
    sim.fences[name] = f"fence-{name}-{len(sim.faults)}"
    sim.submit((op("node_modify", node=name, offline=True),), request_id=sim.fences[name])
    state = sim.checker.state
    node_id = state.node_names.get(name)
    for instance in sorted(state.instances.values(), key=lambda i: i.name):
        if instance.primary == node_id and instance.secondary:
            sim.submit((op("instance_failover", instance=instance.name),))
    _note(sim, f"operator fenced {name} and failed its instances over")


def _partition(sim) -> None:
    names = sim.names[:]
    sim.rng.shuffle(names)
    cut = sim.rng.randrange(1, len(names))
    sim.log.partition(names[:cut], names[cut:])
    _note(sim, f"partition {sorted(names[:cut])} | {sorted(names[cut:])}")
    # Half heal within the lease; the others last long enough for the minority to fence itself and be fenced.
    sim._later(sim.rng.uniform(2.0, 6.0) if sim.rng.random() < 0.5 else sim.rng.uniform(10.0, 25.0), "heal_network")


def _drops(sim) -> None:
    rate = sim.rng.choice((0.05, 0.2))
    sim.log.set_drop_rate(rate)
    _note(sim, f"{rate:.0%} of messages lost")
    sim._later(sim.rng.uniform(3.0, 10.0), "heal_network")


def _driver_failures(sim) -> None:
    name = sim.rng.choice(sim.names)
    sim.failing[name] = 0.3
    _note(sim, f"{name}'s drivers fail 30% of actions")
    sim._later(sim.rng.uniform(5.0, 20.0), "heal_drivers", name)


def _driver_hangs(sim) -> None:
    name = sim.rng.choice(sim.names)
    sim.hanging.add(name)
    _note(sim, f"{name}'s drivers hang on half of their actions")
    sim._later(sim.rng.uniform(5.0, 20.0), "heal_drivers", name)


def _guest_crash(sim) -> None:
    _to_a_running_guest(sim, "crash", "instance {instance} crashed on {host}")


def _guest_shutdown(sim) -> None:
    _to_a_running_guest(sim, "guest_shutdown", "guest {instance} shut itself down on {host}")


def _to_a_running_guest(sim, what: str, note: str) -> None:
    """Make one running instance, drawn from the seed, crash or power itself off."""
    running = [(h.name, i) for h in sim.world.hosts.values() for i in sorted(h.running())]
    if not running:
        return _drops(sim)
    host, instance = sim.rng.choice(running)
    getattr(sim.world.hosts[host], what)(instance)
    _note(sim, note.format(instance=instance, host=host))


def _clock_jump(sim) -> None:
    name = sim.rng.choice(sim.names)
    jump = sim.rng.uniform(5.0, 60.0)
    sim.offset[name] += jump
    _note(sim, f"{name}'s clock jumped {jump:.1f} s ahead")


def heal_network(sim) -> None:
    sim.log.heal()


def heal_drivers(sim, name: str) -> None:
    sim.failing.pop(name, None)
    sim.hanging.discard(name)
    hung, sim.hung = sim.hung, []
    for node, incarnation, action in hung:
        if node == name:
            sim._later(0.05, "action", node, incarnation, action, True)
        else:
            sim.hung.append((node, incarnation, action))


def heal_all(sim) -> None:
    """Phase two: the network heals, drivers recover, every machine and daemon comes back, and the operator
    lifts their own fences (the healer brings back the nodes it fenced, by itself)."""
    heal_network(sim)
    for name in sim.names:
        heal_drivers(sim, name)
        restart(sim, name)
    for name in sorted(sim.fenced):
        lift(sim, name)
    sim.fenced.clear()


def lift(sim, name: str) -> None:
    """The operator brings back a node they marked offline, and looks again every few seconds until it is back
    (a daemon just restarted has not read the log yet and refuses jobs; the request id makes a repeat harmless)."""
    node = sim.checker.state.node_by_name(name)
    if node is None or not node.offline:
        return
    sim.submit((op("node_modify", node=name, offline=False),), request_id=f"lift-{name}-{node.fenced_seq}")
    sim._later(5.0, "lift", name)


def install(sim_class) -> None:
    """Give the simulation its `_on_<kind>` handlers for the timed events faults schedule."""
    sim_class._on_restart = lambda sim, name: restart(sim, name)
    sim_class._on_fence = lambda sim, name: fence(sim, name)
    sim_class._on_lift = lambda sim, name: lift(sim, name)
    sim_class._on_heal_network = lambda sim: heal_network(sim)
    sim_class._on_heal_drivers = lambda sim, name: heal_drivers(sim, name)

