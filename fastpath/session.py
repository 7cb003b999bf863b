"""One iallocator request being answered: its options, its `Session` and the policy, network and
failure-text helpers that both `fastpath.iallocator` and `fastpath.evacuate` use.

It imports neither of them: `iallocator` imports `evacuate`, and both import this, so none of the
three imports another in a circle.
"""

from fastpath import dedicated, engine_class
from fastpath.forthmove import Moves
from fastpath.globaln1 import MOVE, RECREATE, STUCK, use_policy
from fastpath.model import Cluster, Instance, Policy
from fastpath.record import record
from fastpath.spec import OK, append_instance, flatten


@record
class Options:
    """hail's command-line options that change answers."""

    capacity_checks: bool = True
    ignore_soft_errors: bool = False
    static_kvm_node_memory: int = 4096
    implementation: str = "c"


class Session:
    """One request being answered: the cluster, its flat arrays and an engine with room for new instances."""

    def __init__(self, cluster: Cluster, options: Options, new_instances: list[Instance]):
        self.cluster, self.options = cluster, options
        self.group_index = {g.uuid: k for k, g in enumerate(cluster.groups)}
        self.spec = flatten(cluster, self.group_index)
        self.index = {name: k for k, name in enumerate(self.spec.node_names)}
        self.new = [append_instance(self.spec, inst, {}) for inst in new_instances]
        self.engine = engine_class(options.implementation)(self.spec, extra_instances=1)
        self.models = cluster.instances + list(new_instances)  # by engine index
        if options.capacity_checks:
            use_policy(self.engine, self.admits, self.evacuated_how)
        self.moves = Moves(self.engine, self.spec)  # moves of real and forthcoming instances alike
        self.spare = -1  # an unplaced engine slot for trial copies of existing instances
        self.copy_of: dict[int, int] = {}  # engine slot: the instance it holds a trial copy of
        self.used_spindles: dict[int, int] = {}  # node: free spindles this request's instances took
        self.names = self.spec.node_names

    def group_of_node(self, node: int) -> int:
        """The group index of a node."""
        return self.spec.nodes["group"][node]

    def evacuated_how(self, inst: int) -> str:
        """How hail's global N+1 check empties a node of this (non-drbd) instance, by its template."""
        model = self._model(inst)
        template = model.template if model else "plain"
        if template == "diskless":
            return STUCK
        return MOVE if template in ("sharedfile", "rbd", "ext", "gluster") else RECREATE

    def _model(self, inst: int) -> Instance | None:
        """The instance an engine slot holds (or a trial copy of); None for the global N+1 check's
        own copy slots, which are never on a node when it asks."""
        source = self.copy_of.get(inst, inst)
        return self.models[source] if source < len(self.models) else None

    def admits(self, inst: int, group: int, exclusive: bool) -> bool:
        """hail's instMatchesPolicy for an instance on a node of `group` (exclusive storage or not)."""
        figures = policy_figures(self._model(inst))
        return figures is None or dedicated.placement_policy_failure(self.policy(group), *figures, exclusive) == OK

    def policy(self, group: int) -> Policy:
        """The instance policy of a group."""
        return self.cluster.policy_of(self.cluster.groups[group].uuid)


def policy_figures(model: Instance | None) -> tuple | None:
    """What hail's policy test reads of an instance (`dedicated.placement_policy_failure`'s figures
    before the exclusive-storage flag), or None when there is nothing to test (no instance, or a
    hand-written document without disks: admitted, as before)."""
    if model is None or (not model.disks and model.template != "diskless"):
        return None
    spindles = int(model.spindles) if model.spindles.isdigit() else None
    return model.mem, model.vcpus, model.disks, model.template, model.spindle_use, spindles


def policy_refusals(session: Session, mem: int, vcpus: int, disks: list[int], template: str, spindle_use: int,
                    spindles: int | None):
    """`refused_primaries` for `allocate`: hail tests the instance policy per candidate, before
    anything fits, with the spindle part counting the disks' spindles when the primary has
    exclusive storage (instMatchesPolicy); every candidate of a refused primary fails with its
    reason."""
    def refused(g: int) -> dict[int, int]:
        policy, nodes = session.policy(g), session.spec.nodes
        reasons = {excl: dedicated.placement_policy_failure(policy, mem, vcpus, disks, template, spindle_use,
                                                            spindles, excl) for excl in (False, True)}
        return {k: reasons[bool(nodes["excl"][k])] for k in range(session.spec.n_nodes)
                if nodes["group"][k] == g and reasons[bool(nodes["excl"][k])] != OK}
    return refused


def network_check(cluster: Cluster, networks: list[str], name: str, named: bool = False):
    """hail's network test for instance `name`: a group must be connected to every network its NICs
    name; the function gives the text for a group that is not (None for one that is)."""
    def unconnected(g: int) -> str | None:
        group = cluster.groups[g]
        if set(networks) <= set(group.networks):
            return None
        return (f"{'The group' if named else 'group'} {group.name} is not connected to a network required by "
                f"instance {name}")
    return unconnected


def group_text(outcome) -> str:
    """hail's text for a group that got no solution."""
    if outcome.message:
        return outcome.message
    if outcome.error:
        return f"Group {outcome.name}: error {outcome.error}"
    if outcome.nodes is None:
        return f"Group {outcome.name} ({outcome.policy}): {no_solution_text(outcome)}"
    return ""


def no_solution_text(outcome) -> str:
    """hail's text for a group where no candidate fitted: the failure reasons and their counts."""
    return f"No valid allocation solutions, failure reasons: {outcome.reasons()}"
