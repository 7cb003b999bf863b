"""The placement engines (C core and pure twin): Ganeti's score and hbal's choices on recorded known answers."""

import random
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastpath import engine_class
from fastpath.balance import BalanceOptions, balance
from fastpath.generate import generate
from fastpath.hbal import HbalRequest, run
from fastpath.htools_text import parse
from fastpath.spec import METRIC_NAMES, flatten

DATA = Path(__file__).resolve().parents[1] / "data" / "htools"


@pytest.fixture(params=["c", "pure"])
def implementation(request):
    """Every engine test runs against the compiled core and the pure twin."""
    return request.param


def engine_for(name: str, implementation: str, **flatten_args):
    spec = flatten(parse((DATA / name).read_text()), **flatten_args)
    return spec, engine_class(implementation)(spec)


def recorded_score(name: str) -> str:
    for line in (DATA / name).read_text().splitlines():
        if line.startswith("Initial score: "):
            return line.split(": ")[1]
    raise AssertionError(f"no initial score in {name}")


# hbal's -U file for n20: fractional loads for every instance and one unknown name (ignored).
DYNU = (DATA / "n20.dynu").read_text()


def hbal_lines(text_file: str, implementation: str, **request_args) -> list[str]:
    lines: list[str] = []
    run(HbalRequest((DATA / text_file).read_text(), implementation=implementation, **request_args), lines.append)
    return lines


# Known answer: `hbal -t example.txt -l 0 -v -v -v` (Ganeti 3.0.2), the table after "Initial coefficients".
EXAMPLE_METRICS = [0.14235052, 0.16179728, 0.0, 0.08838835, 0.0, 0.0, 0.12884705, 1.08972474, 1.08972474,
                   1.47901995, 1.08972474, 1.0, 0.01155484, 0.13509075, 0.16179728, 0.12884705, 0.01155484,
                   0.0, 0.0, 0.5]


def test_example_metrics_equal_hbal_breakdown(implementation):
    """Each of the 20 metrics of the reference example equals hbal's printed breakdown."""
    _, engine = engine_for("example.txt", implementation)
    assert [f"{v:.8f}" for v in engine.metrics(0)] == [f"{v:.8f}" for v in EXAMPLE_METRICS]
    assert len(METRIC_NAMES) == 20


@pytest.mark.parametrize(("text_file", "answer"), [
    ("example.txt", "example.hbal"), ("n4.txt", "n4.hbal"), ("n20.txt", "n20.hbal"), ("n100.txt", "n100.l0.hbal")])
def test_initial_score_equals_hbal(implementation, text_file, answer):
    """The initial score equals the one hbal printed, to 8 decimals."""
    _, engine = engine_for(text_file, implementation)
    assert f"{engine.score(0):.8f}" == recorded_score(answer)


def test_score_with_offline_node_equals_hbal(implementation):
    """With a node marked offline (-O) the score equals hbal's, offline penalties included."""
    spec, engine = engine_for("n20.txt", implementation, offline={"node-0003"})
    assert f"{engine.score(0):.8f}" == recorded_score("n20.evac.hbal")


@pytest.mark.parametrize(("group", "answer"), [(0, "n20-groups-locations.default.hbal"),
                                               (1, "n20-groups-locations.second.hbal")])
def test_score_with_groups_and_locations_equals_hbal(implementation, group, answer):
    """Per-group scores with location, desired-location and exclusion tags equal hbal's."""
    _, engine = engine_for("n20-groups-locations.txt", implementation)
    assert f"{engine.score(group):.8f}" == recorded_score(answer)


@pytest.mark.parametrize(("answer", "args"), [
    ("example.hbal", {}),
    ("example.no-disk-moves.hbal", {"options": BalanceOptions(no_disk_moves=True)}),
    ("example.min-gain.hbal", {"options": BalanceOptions(min_gain=1, min_gain_limit=100)}),
    ("example.commands.hbal", {"print_commands": True}),
    ("example.e10.hbal", {"options": BalanceOptions(epsilon=10)}),
    ("empty.hbal", {}),
    ("n4.hbal", {}),
    ("n4.l3.hbal", {"options": BalanceOptions(max_moves=3)}),
    ("n4.evac.hbal", {"options": BalanceOptions(evac_mode=True), "offline": ["node-0001"]}),
    ("n20.evac.hbal", {"options": BalanceOptions(evac_mode=True), "offline": ["node-0003"]}),
    ("n20.no-disk-moves.hbal", {"options": BalanceOptions(no_disk_moves=True)}),
    ("n20.no-instance-moves.hbal", {"options": BalanceOptions(no_instance_moves=True, max_moves=10)}),
    ("n20-groups-locations.second.hbal", {"group": "second", "options": BalanceOptions(max_moves=15)}),
    ("n20-shared.l12.hbal", {"options": BalanceOptions(max_moves=12)}),
    ("n20.ignore-soft-errors.hbal", {"options": BalanceOptions(ignore_soft_errors=True, max_moves=8)}),
    ("n20.ignore-dynu.hbal", {"ignore_dynu": True, "options": BalanceOptions(max_moves=8)}),
    ("n20.min-disk.hbal", {"min_disk": 0.3, "options": BalanceOptions(max_moves=8)}),
    ("n20.max-cpu-1.hbal", {"max_cpu": 1.0, "options": BalanceOptions(max_moves=1)}),
    ("n20.max-cpu-3-off5.hbal", {"max_cpu": 3.0, "offline": ["node-0005"], "options": BalanceOptions(max_moves=1)}),
    ("fuzz-109.hbal", {"options": BalanceOptions(no_instance_moves=True)}),
    ("fuzz-124.hbal", {"options": BalanceOptions(no_instance_moves=True), "offline": ["node-0003"]}),
    ("n20-migration.l10.hbal", {"options": BalanceOptions(max_moves=10)}),
    ("n20-migration.no-disk-moves.hbal", {"options": BalanceOptions(no_disk_moves=True, max_moves=10)}),
    ("n20.restricted.hbal", {"options": BalanceOptions(restricted_migration=True, max_moves=8)}),
    ("n20.restricted-evac.hbal", {"offline": ["node-0003"],
                                  "options": BalanceOptions(restricted_migration=True, evac_mode=True, max_moves=8)}),
    ("n20.select.hbal", {"select_instances": ["inst-00022", "inst-00163", "inst-00001"],
                         "options": BalanceOptions(max_moves=5)}),
    ("n20.exclude.hbal", {"exclude_instances": ["inst-00022", "inst-00163"], "options": BalanceOptions(max_moves=5)}),
    ("n20-shared.evac.hbal", {"options": BalanceOptions(evac_mode=True, max_moves=6), "offline": ["node-0005"]}),
    ("n20-forth.l5.hbal", {"options": BalanceOptions(max_moves=5)}),
    ("n20-excl.l10.hbal", {"options": BalanceOptions(max_moves=10)}),
    ("n20-excl.no-disk-moves.hbal", {"options": BalanceOptions(no_disk_moves=True, max_moves=10)}),
    ("n20-excl-rbd.l10.hbal", {"options": BalanceOptions(max_moves=10)}),
    ("n20-excl-forth-nosp.l10.hbal", {"options": BalanceOptions(max_moves=10)}),
    ("excl-forth-shared-6.l60.hbal", {"options": BalanceOptions(max_moves=60)}),
    ("excl-forth-shared-32.no-disk-moves.hbal", {"options": BalanceOptions(no_disk_moves=True, max_moves=10)}),
    ("n20-tags100.l20.hbal", {"options": BalanceOptions(max_moves=20)}),
    ("n20-loc70.l20.hbal", {"options": BalanceOptions(max_moves=20)}),
    ("n20.dynu.no-disk-moves.hbal", {"utilisation": DYNU, "options": BalanceOptions(no_disk_moves=True,
                                                                                   max_moves=10)}),
    # -U is read but --ignore-dynu wins, as in hbal: the answer without -U.
    ("n20.ignore-dynu.hbal", {"utilisation": DYNU, "ignore_dynu": True, "options": BalanceOptions(max_moves=8)}),
])
def test_balance_output_equals_hbal(implementation, answer, args):
    """The whole balance output (moves, scores, summary) equals what hbal printed."""
    text_file = answer.split(".")[0] + ".txt"
    expected = (DATA / answer).read_text().splitlines()
    assert hbal_lines(text_file, implementation, **args) == expected


@pytest.mark.parametrize(("answer", "args"), [
    ("n20.hbal", {}),
    ("n20.commands.hbal", {"print_commands": True}),
    ("n20-shared.commands.hbal", {"print_commands": True}),
    ("n20-groups-locations.default.hbal", {"group": "default", "options": BalanceOptions(max_moves=15)}),
    ("n100.l2.hbal", {"options": BalanceOptions(max_moves=2)}),
    ("n100.no-disk-moves.hbal", {"options": BalanceOptions(no_disk_moves=True)}),
    ("n20-forth.l20.hbal", {"options": BalanceOptions(max_moves=20)}),
    ("n20-forth.l60.hbal", {"options": BalanceOptions(max_moves=60)}),
    ("n20.dynu.l20.hbal", {"utilisation": DYNU, "options": BalanceOptions(max_moves=20)}),
    ("n20-excl-rbd.hbal", {}),
])
def test_long_balance_output_equals_hbal(answer, args):
    """Longer recorded runs match hbal line for line (compiled core only: the twin needs minutes)."""
    text_file = answer.split(".")[0] + ".txt"
    expected = (DATA / answer).read_text().splitlines()
    assert hbal_lines(text_file, "c", **args) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("inst-00001 1 2 3\n", "Cannot parse line 'inst-00001 1 2 3' (line 1); write 'instance cpu mem disk net'"),
    ("inst-00001  1 2 3 4\n", "Cannot parse line 'inst-00001  1 2 3 4'"),
    ("inst-00001 1 2 3 4\n\n", "Cannot parse line '' (line 2)"),
    ("inst-00001 1 x 3 4\n", "inst-00001: cannot parse string 'x' (line 1)"),
    ("inst-00001 .5 1 1 1\n", "cannot parse string '.5'"),
    ("inst-00001 NaN 1 1 1\n", "cannot parse string 'NaN'"),
])
def test_bad_utilisation_lines_are_named(text, message):
    """hbal's -U rules (five fields split by single spaces, numbers as Haskell reads them) with
    hbal's messages, the line number and what to write; NaN, which hbal takes, is refused."""
    from fastpath.hbal import HbalError, parse_utilisation

    with pytest.raises(HbalError, match=re.escape(message)):
        parse_utilisation(text)


def test_utilisation_numbers_read_as_hbal_reads_them():
    """Hex and exponents are numbers to hbal too; a later line for the same instance wins."""
    from fastpath.hbal import parse_utilisation

    loads = parse_utilisation("a 0x10 1e2 -0.5 00.5\nb 1 1 1 1\nb 2 2 2 2\n")
    assert loads == {"a": (16.0, 100.0, -0.5, 0.5), "b": (2.0, 2.0, 2.0, 2.0)}


def test_pure_twin_follows_hbal_first_moves_on_n20():
    """The pure twin makes the same first moves as hbal on the 20-node cluster."""
    expected = (DATA / "n20.hbal").read_text().splitlines()[:11]
    assert hbal_lines("n20.txt", "pure", options=BalanceOptions(max_moves=4))[:11] == expected


def test_identical_empty_nodes_score_zero(implementation):
    """A cluster of identical empty nodes scores (almost) zero."""
    cluster = generate(6, 0, 5)
    for node in cluster.nodes:
        node.t_mem, node.t_dsk, node.t_cpu, node.f_mem, node.f_dsk, node.n_mem = 65536.0, 1e6, 16.0, 60000, 10**6, 0
        node.spindles = 4
    spec = flatten(cluster)
    assert engine_class(implementation)(spec).score(0) <= 1e-12


def test_applied_move_reaches_predicted_score(implementation):
    """After a move is applied, the full score equals the score the search predicted."""
    spec, engine = engine_for("n20.txt", implementation)
    inst, kind, target, predicted = engine.best_move(0, 0)
    engine.apply_move(inst, kind, target)
    assert engine.score(0) == pytest.approx(predicted, abs=1e-9)


def test_balance_never_raises_the_score(implementation):
    """Every accepted move lowers the score."""
    spec, engine = engine_for("n4.txt", implementation)
    result = balance(engine, spec, 0, BalanceOptions())
    scores = [result.initial] + [m.score for m in result.moves]
    assert all(b < a for a, b in zip(scores, scores[1:]))


@st.composite
def clusters(draw):
    cluster, offline = draw(cluster_models())
    return flatten(cluster, offline=offline), draw(st.sampled_from([0, 1, 2, 4, 8]))


@st.composite
def cluster_models(draw):
    nodes = draw(st.integers(min_value=2, max_value=6))
    instances = draw(st.integers(min_value=0, max_value=25))
    cluster = generate(nodes, instances, draw(st.integers(min_value=0, max_value=10**6)))
    offline = {n.name for n in cluster.nodes if draw(st.booleans()) and draw(st.booleans())}
    if draw(st.booleans()):
        # Some nodes with exclusive storage (free spindles a resource), some disks without spindles.
        for node in cluster.nodes:
            node.excl_stor = draw(st.booleans())
            node.free_spindles = draw(st.integers(min_value=0, max_value=12))
        for inst in cluster.instances:
            inst.spindles = draw(st.sampled_from(["-", "1", "2", "3"]))
            if inst.template == "drbd" and draw(st.integers(min_value=0, max_value=3)) == 0:
                inst.template, inst.snode = "rbd", ""  # shared storage: spindles counted, no local disk
    if draw(st.booleans()):
        # Dynamic utilisation (hbal -U), fractional: float sums that depend on their order.
        loads = st.sampled_from([0.0, 0.1, 0.25, 1.0, 1.7, 2.5, 3.3333])
        for inst in cluster.instances:
            inst.util = tuple(draw(loads) for _ in range(4))
    return cluster, offline


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters())
def test_c_and_pure_agree_on_random_clusters(case):
    """On random clusters the C core and the pure twin give the same score and choose the same
    moves, step after step (the C core keeps failover values between steps)."""
    spec, flags = case
    c_engine, pure_engine = engine_class("c")(spec), engine_class("pure")(spec)
    assert c_engine.score(0) == pytest.approx(pure_engine.score(0), rel=1e-12, abs=1e-12)
    for _ in range(4):
        c_move, pure_move = c_engine.best_move(0, flags), pure_engine.best_move(0, flags)
        assert (c_move is None) == (pure_move is None)
        if c_move is None:
            break
        assert c_move[:3] == pure_move[:3]
        assert c_move[3] == pytest.approx(pure_move[3], rel=1e-12)
        c_engine.apply_move(*c_move[:3])
        pure_engine.apply_move(*pure_move[:3])


def _with_random_forthcoming(model, data):
    """The flat arrays of a drawn cluster whose instances are drawn forthcoming or not."""
    cluster, offline = model
    for inst in cluster.instances:
        inst.forthcoming = data.draw(st.booleans())
    return flatten(cluster, offline=offline)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cluster_models(), st.data())
def test_c_and_pure_agree_on_moves_of_forthcoming_instances(model, data):
    """On random clusters with forthcoming instances both engines give every move of a forthcoming
    instance (failover, every new secondary, every new primary, the two-step moves) the same status
    and score: the C core's trial in C, the pure twin's by placing and rebuilding."""
    from fastpath.forthmove import Moves
    from fastpath.spec import (FAILOVER, FAILOVER_AND_REPLACE, FAILOVER_TO_ANY, REPLACE_AND_FAILOVER,
                               REPLACE_PRIMARY, REPLACE_SECONDARY)

    spec = _with_random_forthcoming(model, data)
    flags = data.draw(st.sampled_from([0, 8]))
    kinds = (REPLACE_SECONDARY, FAILOVER_TO_ANY, REPLACE_AND_FAILOVER, REPLACE_PRIMARY, FAILOVER_AND_REPLACE)
    answers = []
    for implementation in ("c", "pure"):
        moves, out = Moves(engine_class(implementation)(spec), spec), []
        for i in spec.forthcoming:
            for kind, target in [(FAILOVER, -1)] + [(k, t) for k in kinds
                                                    for t in range(spec.n_nodes) if t not in moves.nodes_of(i)]:
                out.append(moves.eval_move(0, i, kind, target, flags))
            if moves.nodes_of(i)[1] >= 0:
                # Committed moves carry over: later instances are scored on the moved figures.
                moves.apply_move(i, FAILOVER, -1)
            out.append((0, moves.engine.score(0)))
        answers.append(out)
    assert len(answers[0]) == len(answers[1])
    for (c_status, c_score), (pure_status, pure_score) in zip(*answers):
        assert c_status == pure_status
        assert c_score == pytest.approx(pure_score, rel=1e-12, abs=1e-12)


def test_forthcoming_instance_without_spindles_leaves_its_new_node_minus_one(implementation):
    """A forthcoming rbd instance without a spindle count moved onto an exclusive-storage node
    leaves that node -1 forthcoming free spindles (htools' calcNewFreeSpindlesForth), whatever the
    node had; a trial move and a move undone put every figure back exactly."""
    from fastpath.forthmove import Moves
    from fastpath.spec import FAILOVER_TO_ANY

    spec, engine = engine_for("excl-forth-shared-32.txt", implementation)
    moves = Moves(engine, spec)
    inst, target = spec.instance_names.index("inst-00000"), spec.node_names.index("node-0000")
    assert inst in spec.forthcoming and spec.instances["disk_sp"][inst] < 0 and spec.nodes["excl"][target]

    def forth_free(k):
        return engine.node_state(k)["f_sp"] - engine.forth_use(k)["forth_fsp"]

    figures = [engine.forth_use(k) for k in range(spec.n_nodes)]
    assert forth_free(target) == 7
    for t in range(spec.n_nodes):
        if t != moves.nodes_of(inst)[0]:
            moves.eval_move(0, inst, FAILOVER_TO_ANY, t, 8)
    assert [engine.forth_use(k) for k in range(spec.n_nodes)] == figures
    saved, before = moves.touched_flags(), moves.nodes_of(inst)
    moves.apply_move(inst, FAILOVER_TO_ANY, target)
    assert forth_free(target) == -1
    moves.restore(inst, *before, saved)
    assert [engine.forth_use(k) for k in range(spec.n_nodes)] == figures and forth_free(target) == 7


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cluster_models(), st.data())
def test_c_search_moves_forthcoming_instances_as_forthmove_does(model, data):
    """The C core's move search with FORTH_MOVES picks the move that the C core's search over real
    instances plus forthmove.Moves' checks of every forthcoming move (the Python path, also the pure
    twin's) picks, step after step; with and without pruning."""
    from fastpath.balance import _with_forthcoming
    from fastpath.forthmove import Moves
    from fastpath.spec import FORTH_MOVES, NO_PRUNING

    spec = _with_random_forthcoming(model, data)
    flags = data.draw(st.sampled_from([0, 1, 2, 8, 32]))
    engine = engine_class("c")(spec)
    moves = Moves(engine, spec)
    for _ in range(4):
        current = engine.score(0)
        python = _with_forthcoming(moves, spec, 0, flags, engine.best_move(0, flags), current)
        native = engine.best_move(0, flags | FORTH_MOVES)
        assert native == engine.best_move(0, flags | FORTH_MOVES | NO_PRUNING)
        assert (native is None) == (python is None)
        if native is None:
            break
        assert native[:3] == python[:3]
        assert native[3] == pytest.approx(python[3], rel=1e-12, abs=1e-12)
        moves.apply_move(*native[:3])


def test_pruned_and_unpruned_search_choose_the_same_move():
    """The C core's pruning never changes the chosen move."""
    from fastpath.spec import NO_PRUNING

    for utilised in (False, True):
        cluster = generate(40, 500, 11)
        if utilised:  # per-instance loads (hbal -U) bound the load metrics separately
            rng = random.Random(3)
            for inst in cluster.instances:
                inst.util = tuple(round(rng.uniform(0, 4), 2) for _ in range(4))
        engine = engine_class("c")(flatten(cluster))
        for _ in range(5):
            pruned, full = engine.best_move(0, 0), engine.best_move(0, NO_PRUNING)
            assert pruned == full
            if pruned is None:
                break
            engine.apply_move(*pruned[:3])


def _engines_with_new_instance(spec, required: int, memory: int):
    """Each engine (C, then pure) over spec with one unplaced new instance, and that instance's index."""
    from fastpath.model import Instance
    from fastpath.spec import instance_values

    inst = Instance("new", memory, 20480, 2, "running", True, "", "", "drbd" if required == 2 else "plain")
    for implementation in ("c", "pure"):
        engine = engine_class(implementation)(spec, extra_instances=1)
        yield engine, engine.define_instance(instance_values(inst, {}))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(), st.sampled_from([1, 2]), st.integers(min_value=256, max_value=20000))
def test_c_and_pure_agree_on_allocation(case, required, memory):
    """On random clusters both engines choose the same nodes for a new instance and count the same failures."""
    spec, flags = case
    answers = []
    for engine, index in _engines_with_new_instance(spec, required, memory):
        found, counts = engine.best_alloc(0, index, required, None, flags & 8)
        answers.append((found[:2] if found else None, counts, found[2] if found else None))
    assert answers[0][:2] == answers[1][:2]
    if answers[0][2] is not None:
        assert answers[0][2] == pytest.approx(answers[1][2], rel=1e-12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=3, max_value=30), st.integers(min_value=0, max_value=300),
       st.integers(min_value=0, max_value=10**6), st.sampled_from([0, 2, 4, 8]))
def test_pruning_is_exact_on_random_clusters(nodes, instances, seed, flags):
    """With or without the C core's pruning the chosen move is the same, on random clusters."""
    from fastpath.spec import NO_PRUNING

    engine = engine_class("c")(flatten(generate(nodes, instances, seed)))
    assert engine.best_move(0, flags) == engine.best_move(0, flags | NO_PRUNING)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters(), st.sampled_from([1, 2]), st.integers(min_value=256, max_value=20000))
def test_c_and_pure_agree_on_the_global_n1_check(case, required, memory):
    """On random clusters both engines report the same node figures, see the same failing
    evacuation first, list the same candidates and give each the same global N+1 verdict."""
    from fastpath.globaln1 import CandidateCheck
    from fastpath.spec import INSTANCE_FIELDS

    spec, flags = case
    answers = []
    for engine, index in _engines_with_new_instance(spec, required, memory):
        assert all(engine.instance_column(name) == [engine.instance_value(i, name) for i in range(engine.count)]
                   for name in INSTANCE_FIELDS)
        check = CandidateCheck(engine, spec, index)
        possible = engine.all_allocs(0, index, required, None, flags & 8, -1, cap=10_000)[0]
        answers.append(([engine.node_state(k) for k in range(spec.n_nodes)], check.failing,
                        [(p, s, check.redundant(p, s)) for p, s, _ in possible]))
    assert answers[0] == answers[1]


def test_exclusion_tags_past_the_engine_words():
    """An instance defined with an exclusion tag past the C engine's tag words widens them: both
    engines then agree on its allocation (the tag clashes on the nodes holding it) and the C
    engine gives its mask back whole."""
    from fastpath.model import Instance
    from fastpath.spec import instance_values

    cluster = generate(12, 80, 4)
    for k, inst in enumerate(cluster.instances):
        inst.tags = [f"service:t{k % 63}"]  # 63 distinct tags: one 64-bit word, room for one more
    spec = flatten(cluster)
    assert spec.n_tags == 63
    wide = (1 << 70) | (1 << 5)  # past the word, and t5, which instances already hold
    new = instance_values(Instance("new", 1024, 10240, 1, "running", True, "", "", "drbd"), {})
    answers = []
    for implementation in ("c", "pure"):
        engine = engine_class(implementation)(spec, extra_instances=1)
        index = engine.define_instance({**new, "excl_mask": wide})
        assert engine.instance_value(index, "excl_mask") == wide
        answers.append(engine.best_alloc(0, index, 2, None, 0))
    assert answers[0][0][:2] == answers[1][0][:2] and answers[0][1] == answers[1][1]


def test_desired_locations_past_the_engine_words():
    """An instance defined with a desired location past the C engine's location words widens them
    (and the nodes' location masks with them): both engines then agree on its allocation and the C
    engine gives its mask back whole."""
    from fastpath.model import Instance
    from fastpath.spec import instance_values

    cluster = generate(12, 80, 4)
    for k, node in enumerate(cluster.nodes):
        node.tags = [f"rack:r{k}"] + [f"pdu:p{k}-{j}" for j in range(4)] + (["pdu:shared"] if k < 3 else [])
    cluster.tags += ["htools:nlocation:rack", "htools:nlocation:pdu", "htools:desiredlocation:rack",
                     "htools:desiredlocation:pdu"]
    for i, inst in enumerate(cluster.instances):
        inst.tags = [f"rack:r{i % 14}"]  # r12 and r13 on no node: 63 distinct, one word and room for one more
    spec = flatten(cluster)
    assert spec.n_locations == 63
    rack0, shared = (1 << spec.loc_interner.ids[name] for name in ("rack:r0", "pdu:shared"))
    wide = (1 << 70) | rack0 | shared  # past the word, and locations that nodes hold
    new = instance_values(Instance("new", 1024, 10240, 1, "running", True, "", "", "drbd"), {})
    answers = []
    for implementation in ("c", "pure"):
        engine = engine_class(implementation)(spec, extra_instances=1)
        index = engine.define_instance({**new, "desired_mask": wide})
        assert engine.instance_value(index, "desired_mask") == wide
        answers.append((engine.score(0), engine.best_alloc(0, index, 2, None, 0)))
    (c_score, (c_best, c_counts)), (pure_score, (pure_best, pure_counts)) = answers
    assert c_best[:2] == pure_best[:2] and c_counts == pure_counts
    assert c_score == pytest.approx(pure_score, rel=1e-12) and c_best[2] == pytest.approx(pure_best[2], rel=1e-12)


def test_engine_grows_past_its_extra_instances():
    """Both engines take more instances than they were created with room for (the global N+1
    check defines a copy per re-created instance) and score them alike."""
    from fastpath.model import Instance
    from fastpath.spec import instance_values

    spec, _ = engine_for("n20.txt", "c")
    scores = []
    for implementation in ("c", "pure"):
        engine = engine_class(implementation)(spec, extra_instances=0)
        for k in range(5):
            inst = Instance(f"new{k}", 512, 1024, 1, "running", True, "", "", "plain")
            engine.place(engine.define_instance(instance_values(inst, {})), k, -1)
        scores.append((engine.count, round(engine.score(0), 9)))
    assert scores[0] == scores[1] == (spec.n_instances + 5, scores[0][1])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cluster_models(), st.data())
def test_c_and_pure_agree_on_forthcoming_copy_searches(model, data):
    """change-group's search for a forthcoming copy of an instance (forthmove.ForthcomingSearch:
    in C on the C core, in Python on the pure twin) gives the same nodes, score, number of
    candidates and failure counts on random clusters with forthcoming instances."""
    from fastpath.allocate import GroupOutcome
    from fastpath.forthmove import ForthcomingSearch, Moves

    spec = _with_random_forthcoming(model, data)
    if not spec.n_instances:
        return
    picks = data.draw(st.lists(st.integers(0, spec.n_instances - 1), min_size=1, max_size=3))
    mask = data.draw(st.none() | st.lists(st.booleans(), min_size=spec.n_nodes, max_size=spec.n_nodes))
    scope = data.draw(st.sampled_from([-1, 0]))
    answers = []
    for implementation in ("c", "pure"):
        engine = engine_class(implementation)(spec)
        moves, out = Moves(engine, spec), []
        for i in picks:
            values = {name: column[i] for name, column in spec.instances.items()}
            values["pnode"] = values["snode"] = -1
            spare = engine.define_instance(values)
            for required in (1, 2):
                outcome = GroupOutcome("default", "preferred", 0)
                ForthcomingSearch(moves, values)(engine, spec, outcome, (0, spare, required, mask, 0, scope), False)
                out.append((outcome.nodes, outcome.score, outcome.successes, outcome.failures))
        answers.append(out)
    for (c_nodes, c_score, *c_counts), (pure_nodes, pure_score, *pure_counts) in zip(*answers):
        assert c_nodes == pure_nodes and c_counts == pure_counts
        assert c_score == pytest.approx(pure_score, rel=1e-12, abs=1e-12)


def test_instances_defined_after_the_arrays_grow_are_unplaced_everywhere():
    """Instances defined past the C core's first capacity are unplaced, also as forthcoming
    instances, so that a forthcoming copy can be searched for in any of them."""
    spec, engine = engine_for("n4.txt", "c")
    values = {name: column[0] for name, column in spec.instances.items()}
    values["pnode"] = values["snode"] = -1
    spares = [engine.define_instance(values) for _ in range(3 * engine.capacity)]
    for spare in spares[-3:]:
        best, passed, _counts = engine.best_forth_alloc(0, spare, 2, None)
        assert best is not None and passed > 0
