"""The iallocator protocol: Cairn answers every request type exactly as Ganeti's hail did on recorded inputs."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastpath.iallocator import Options, RequestError, answer

DATA = Path(__file__).resolve().parents[1] / "data" / "htools" / "iallocator"
# Each X.json is a request; X.hail and X.nocap.hail are what `hail X.json` and
# `hail --no-capacity-checks X.json` (Ganeti 3.0.2) printed for it; see ../README.md.
REQUESTS = sorted(p.stem for p in DATA.glob("*.json"))


@pytest.fixture(params=["c", "pure"])
def implementation(request):
    """Every test runs against the compiled core and the pure twin."""
    return request.param


@pytest.mark.parametrize("capacity", [True, False], ids=["capacity", "nocap"])
@pytest.mark.parametrize("name", REQUESTS)
def test_answer_equals_hail(implementation, name, capacity):
    """The one-line JSON answer equals hail's, byte for byte."""
    answer_file = DATA / f"{name}{'' if capacity else '.nocap'}.hail"
    if not answer_file.exists():
        pytest.skip("hail 3.0.2 crashes on this request (IntMap.!: key not found); no answer to compare")
    expected = answer_file.read_text().strip()
    text = (DATA / f"{name}.json").read_text()
    assert answer(text, Options(capacity_checks=capacity, implementation=implementation)) == expected


def test_malformed_json_is_an_error():
    """Unparseable input is refused with hail's wording."""
    with pytest.raises(RequestError, match="Malformed JSON"):
        answer("{not json")


def test_missing_request_key_is_named():
    """A document without 'request' names the missing key."""
    with pytest.raises(RequestError, match="key 'request' not found"):
        answer(json.dumps({"nodes": {}}))


def _edited(name: str, path: tuple, value) -> str:
    document = json.loads((DATA / f"{name}.json").read_text())
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if value is KeyError:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return json.dumps(document)


@pytest.mark.parametrize("name, path, value, message", [
    ("demo-allocate", ("nodes", "a1", "free_memory"), [1], "nodes/a1/free_memory must be an integer below 2^62, "
                                                          "not a list"),
    ("demo-allocate", ("nodes", "a1", "total_memory"), 10 ** 30, "nodes/a1/total_memory must be a finite number"),
    ("demo-allocate", ("nodes", "a1", "offline"), "no", "nodes/a1/offline must be true or false, not a string"),
    ("demo-allocate", ("nodes", "a1", "group"), KeyError, "key 'group' not found in the document/nodes/a1"),
    ("demo-allocate", ("request", "disks"), 5, "request/disks must be a list, not an integer"),
    ("demo-allocate", ("request", "disks", 0), True, "request/disks/0 must be an object, not true/false"),
    ("demo-allocate", ("request", "required_nodes"), 3, "request/required_nodes must be one of 1, 2"),
    ("demo-allocate", ("request", "disk_template"), "dbrd", "request/disk_template must be one of diskless"),
    ("demo-allocate", ("instances", "db1", "nodes", 0), "", "instances/db1/nodes/0 must be a non-empty string"),
    ("demo-allocate", ("nodegroups",), [], "the document/nodegroups must be an object of names, not a list"),
    ("demo-relocate", ("request", "relocate_from"), "b1", "request/relocate_from must be a list"),
    ("demo-multi-allocate", ("request", "instances", 0, "name"), KeyError, "key 'name' not found"),
    ("demo-evac-all", ("request", "evac_mode"), "most", "request/evac_mode must be one of primary-only"),
])
def test_malformed_documents_name_the_field(name, path, value, message):
    """A document of the wrong shape is refused with the field's path, what it must be and what it
    is (before, most of these ended in a Python traceback)."""
    with pytest.raises(RequestError, match=re.escape(message)):
        answer(_edited(name, path, value))


def test_null_fields_count_as_absent():
    """Ganeti writes null for fields it has no value for (a disk's spindles, group_name): the answer
    is the one without the field."""
    document = json.loads((DATA / "demo-allocate.json").read_text())
    for disk in document["request"]["disks"]:
        disk.pop("spindles", None)
    without = answer(json.dumps({**document, "request": {**document["request"]}}))
    for disk in document["request"]["disks"]:
        disk["spindles"] = None
    document["request"]["group_name"] = None
    assert answer(json.dumps(document)) == without


def test_unsupported_request_type_fails_cleanly():
    """An unknown request type gets a failed answer, not a crash."""
    document = json.loads((DATA / "demo-allocate.json").read_text())
    document["request"] = {"type": "allocate-tertiary", "name": "tmp1"}
    response = json.loads(answer(json.dumps(document)))
    assert response["success"] is False and "not supported" in response["info"]


def test_cairn_iallocator_runs_as_a_script(tmp_path):
    """`cairn iallocator FILE` prints the answer as one line and exits 0, as an installed iallocator."""
    cairn = Path(sys.executable).with_name("cairn")
    result = subprocess.run([str(cairn), "iallocator", str(DATA / "demo-relocate.json")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout == (DATA / "demo-relocate.hail").read_text()


def test_cairn_iallocator_bad_input_exits_1(tmp_path):
    """Bad input makes `cairn iallocator` print 'Error: ...' on stderr and exit 1."""
    bad = tmp_path / "bad.json"
    bad.write_text("[")
    cairn = Path(sys.executable).with_name("cairn")
    result = subprocess.run([str(cairn), "iallocator", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.startswith("Error: ")


def test_cairn_iallocator_binary_input_is_a_clear_error(tmp_path):
    """A binary request file or binary standard input makes `cairn iallocator` name it as not an
    iallocator request and exit 1, without a traceback."""
    binary = tmp_path / "ls"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)))
    cairn = Path(sys.executable).with_name("cairn")
    from_file = subprocess.run([str(cairn), "iallocator", str(binary)], capture_output=True, text=True, timeout=60)
    with binary.open("rb") as stdin:
        from_stdin = subprocess.run([str(cairn), "iallocator", "-"], stdin=stdin, capture_output=True, text=True,
                                    timeout=60)
    for result, name in ((from_file, f"'{binary}'"), (from_stdin, "standard input")):
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr == (f"cairn: {name} is not an iallocator request: byte 136 is not UTF-8 text; "
                                 "give the JSON document Ganeti passes to an iallocator script\n")


def _demo_session(memory_of_tmp1: int, implementation: str):
    from fastpath.iallocator import load
    from fastpath.session import Session

    document = json.loads((DATA / "demo-allocate.json").read_text())
    document["instances"]["tmp1"]["memory"] = memory_of_tmp1
    options = Options(implementation=implementation)
    return Session(load(document, options), options, [])


def test_demo_cluster_is_globally_redundant(implementation):
    """Every node of the demo cluster can be emptied: hail's global N+1 test passes."""
    from fastpath.globaln1 import globally_redundant

    session = _demo_session(2048, implementation)
    assert globally_redundant(session.engine, session.spec)


def test_unrecreatable_plain_instance_breaks_global_redundancy(implementation):
    """A plain instance too big for any other node of its group fails the global N+1 test."""
    from fastpath.globaln1 import globally_redundant

    session = _demo_session(26000, implementation)
    assert not globally_redundant(session.engine, session.spec)


def test_next_candidate_follows_hails_order(implementation):
    """best_alloc(after=...) walks the candidates in hail's order: scores never fall, each once."""
    from fastpath.iallocator import _new_instance, load
    from fastpath.session import Session

    document = json.loads((DATA / "globaln1-next-drbd.json").read_text())
    options = Options(implementation=implementation)
    session = Session(load(document, options), options, [_new_instance(document["request"])])
    seen, found = [], None
    while True:
        found = session.engine.best_alloc(0, session.new[0], 2, None, 0, -1, after=found)[0]
        if found is None:
            break
        seen.append(found)
    # hail --no-capacity-checks on this request: 6 successes, the best n3/n4 at 2.24117990.
    assert len(seen) == len({(p, s) for p, s, _ in seen}) == 6
    assert [score for _, _, score in seen] == sorted(score for _, _, score in seen)
    assert [session.names[k] for k in seen[0][:2]] == ["n3", "n4"] and f"{seen[0][2]:.8f}" == "2.24117990"


def test_allocate_secondary_of_unknown_instance_is_an_error(implementation):
    """allocate-secondary for an instance the document does not list fails with hail's error text."""
    document = json.loads((DATA / "allocsec-demo.json").read_text())
    document["request"]["name"] = "nope"
    with pytest.raises(RequestError, match="Unknown instance 'nope'"):
        answer(json.dumps(document), Options(implementation=implementation))


def _check_documents():
    """Requests whose candidates both pass and fail hail's global N+1 test, and generated clusters."""
    from fastpath.generate import generate
    from fastpath.iallocator import request_document

    documents = [json.loads((DATA / f"{name}.json").read_text())
                 for name in ("globaln1-next", "globaln1-next-drbd", "demo-allocate", "demo-allocate-plain",
                              "n4-alloc", "n20-alloc", "forth-gen-2", "forth-gen-72", "globaln1-mig",
                              "globaln1-fulldisk", "excl-mixgen-8", "globaln1-slots-1", "globaln1-slots-2")]
    request = {"type": "allocate", "name": "new", "required_nodes": 2, "disk_template": "drbd", "memory": 512,
               "vcpus": 1, "disk_space_total": 1024, "disks": [{"size": 1024}], "nics": [], "tags": [],
               "spindle_use": 1}
    documents += [request_document(generate(nodes, 3 * nodes, seed), request) for nodes, seed in ((6, 1), (9, 7))]
    return documents


def test_incremental_global_n1_equals_full_simulation(implementation):
    """CandidateCheck answers, for every valid candidate, what placing it and simulating every
    node's evacuation answers (both outcomes occur, and groups with an evacuation that fails
    before any candidate, where CandidateCheck rejects every candidate at once, are among them)."""
    from fastpath.globaln1 import CandidateCheck, globally_redundant
    from fastpath.iallocator import _new_instance, load
    from fastpath.session import Session

    seen = set()
    for document in _check_documents():
        options = Options(implementation=implementation)
        session = Session(load(document, options), options, [_new_instance(document["request"])])
        engine, inst = session.engine, session.new[0]
        required = document["request"].get("required_nodes", 1)
        check = CandidateCheck(engine, session.spec, inst)
        for group in sorted(set(session.spec.nodes["group"])):
            for p, s, _ in engine.all_allocs(group, inst, required, None, 0, cap=10_000)[0]:
                touched = engine.touched_flags()
                engine.place(inst, p, s)
                full = globally_redundant(engine, session.spec)
                engine.restore(inst, -1, -1, touched)
                assert check.redundant(p, s) == full, (document["request"]["name"], p, s)
                seen.add((full, bool(check.failing)))
    assert seen == {(True, False), (False, False), (False, True)}


def test_ranked_candidates_are_hail_order_per_primary(implementation):
    """ranked_allocs lists what all_allocs lists, each primary's candidates (all of them for a
    one-node request) in hail's order: lower score first, of equal scores the later one first
    (the generated clusters have equal nodes, so ties occur)."""
    from fastpath.allocate import hail_order

    ties = 0
    for document in _check_documents():
        session = _request_session(document, implementation)
        engine, inst, n = session.engine, session.new[0], session.spec.n_nodes
        for required in (1, 2):
            for group in sorted(set(session.spec.nodes["group"])):
                args = (group, inst, required, None, 0, -1)
                every, counts = engine.all_allocs(*args, cap=10_000)
                ranked, ranked_counts = engine.ranked_allocs(*args, cap=10_000)
                assert ranked_counts == counts
                runs = [[ranked.at(k) for k in range(start, end)] for start, end in ranked.runs]
                keys = sorted({c[0] for c in every}) if required == 2 else [None]
                expected = [hail_order(n, [c for c in every if key is None or c[0] == key]) for key in keys]
                assert runs == expected, (document["request"]["name"], required)
                ties += sum(len(run) - len({c[2] for c in run}) for run in runs)
    assert ties > 0


def test_passes_by_slots_are_passes_whatever_hail_chooses(implementation, monkeypatch):
    """An evacuation that passes by slots (enough instances fit for sure, whichever node hail picks
    for each) passes hail's own simulation: for every candidate, the check with slots answers
    what simulating every evacuation with moved instances answers. On globaln1-slots-1 every
    node passes by slots with none to spare before any candidate (so each candidate on a node
    with a slot is settled again), on -2 every evacuation needs the simulation, and on -176 a
    candidate that takes the slot of a node with none to spare breaks that node's evacuation
    (12 candidates FailN1 in hail's answer, 6 of them through it)."""
    from fastpath.globaln1 import CandidateCheck, Evacuation, globally_redundant

    seen = set()
    for name, slotted in (("globaln1-slots-1", 10), ("globaln1-slots-2", 0), ("globaln1-slots-176", 1)):
        session = _request_session(json.loads((DATA / f"{name}.json").read_text()), implementation)
        engine, inst, spec = session.engine, session.new[0], session.spec
        check = CandidateCheck(engine, spec, inst)
        assert len(check.slotted) == slotted and {spare for _, _, spare in check.slotted} <= {0}
        answers = {(p, s): check.redundant(p, s) for p, s, _ in engine.all_allocs(0, inst, 2, None, 0, cap=10_000)[0]}
        with monkeypatch.context() as patched:
            patched.setattr(Evacuation, "_slots", lambda self, *args: {})
            for (p, s), redundant in answers.items():
                touched = engine.touched_flags()
                engine.place(inst, p, s)
                simulated = globally_redundant(engine, spec)
                engine.restore(inst, -1, -1, touched)
                assert redundant == simulated, (name, p, s)
                seen.add((name, simulated))
    assert {answer for _, answer in seen} == {True, False} and ("globaln1-slots-176", False) in seen


def test_recreation_takes_hail_choice_and_policy(implementation):
    """On excl-mixgen-8 only a simulation with hail's choices decides whether node-0001 can be
    emptied once the new plain instance is there: the new instance (disks without spindles) may
    not be re-created on the exclusive-storage node, and after the best-scoring choices the last
    instance fits nowhere, so hail (and Cairn) reject node-0001 (FailN1). Without the policy test
    the evacuation would pass."""
    from fastpath.globaln1 import UNSURE, CandidateCheck, _POLICY

    document = json.loads((DATA / "excl-mixgen-8.json").read_text())
    session = _request_session(document, implementation)
    engine, inst, spec = session.engine, session.new[0], session.spec
    node = spec.node_names.index("node-0001")
    check = CandidateCheck(engine, spec, inst)
    assert not check.redundant(node, -1)
    memory = list(check.memory)
    memory[node] -= check.need_mem
    primaries = sorted(check.primaries[node] + [inst])
    placed = (inst, node, -1)
    status = check.evacuation.classify(node, memory, check.disk, check.spindles, primaries, placed)[0]
    assert status == UNSURE
    assert not check.evacuation.simulate(node, primaries, placed)
    assert engine.nodes_of(inst) == (-1, -1)  # the simulation leaves the engine as it was
    del _POLICY[engine]
    assert CandidateCheck(engine, spec, inst).redundant(node, -1)


def _request_session(document: dict, implementation: str):
    from fastpath.iallocator import _new_instance, load
    from fastpath.session import Session

    options = Options(implementation=implementation)
    return Session(load(document, options), options, [_new_instance(document["request"])])


def test_group_failing_n1_through_a_down_instance_can_pass(implementation):
    """A group that fails N+1 only through the reservation for a down drbd instance (which takes no
    memory when failed over) still passes hail's simulation (generated seed 2, hail took node-0004)."""
    from fastpath.globaln1 import CandidateCheck

    session = _request_session(json.loads((DATA / "forth-gen-2.json").read_text()), implementation)
    assert session.engine.metrics(0)[2] > 0
    check = CandidateCheck(session.engine, session.spec, session.new[0])
    assert check.redundant(session.names.index("node-0004"), -1)


@pytest.mark.parametrize("name", ["globaln1-mig", "globaln1-fulldisk"])
def test_failover_limits_break_global_redundancy(implementation, name):
    """A drbd failover the migration tags forbid, or from a primary without free disk, leaves the
    node unevacuable: the demo cluster is no longer globally N+1 redundant."""
    from fastpath.globaln1 import globally_redundant

    session = _request_session(json.loads((DATA / f"{name}.json").read_text()), implementation)
    assert not globally_redundant(session.engine, session.spec)


def test_all_candidates_in_hails_order_equal_the_walk(implementation):
    """all_allocs sorted by hail_order is the sequence best_alloc(after=...) walks."""
    from fastpath.allocate import hail_order
    from fastpath.iallocator import _new_instance, load
    from fastpath.session import Session

    for document in _check_documents():
        options = Options(implementation=implementation)
        session = Session(load(document, options), options, [_new_instance(document["request"])])
        inst, required = session.new[0], document["request"].get("required_nodes", 1)
        walk, found = [], None
        while True:
            found = session.engine.best_alloc(0, inst, required, None, 0, -1, after=found)[0]
            if found is None:
                break
            walk.append(found)
        everything = session.engine.all_allocs(0, inst, required, None, 0, cap=10_000)[0]
        assert walk and hail_order(session.spec.n_nodes, everything) == walk


def test_forthcoming_copy_search_leaves_the_session_as_it_was(implementation):
    """change-group's forthcoming copy (allocsec's too) is tried and taken away again: the arrays,
    the forthcoming placements and every node's forthcoming figures are as before."""
    from fastpath.allocate import GroupOutcome
    from fastpath.forthmove import ForthcomingSearch
    from fastpath.iallocator import load
    from fastpath.session import Session

    options = Options(implementation=implementation)
    session = Session(load(json.loads((DATA / "loc-cg-forth-11.json").read_text()), options), options, [])
    spec, engine, moves = session.spec, session.engine, session.moves
    inst = spec.instance_names.index("inst-00142")
    values = {name: column[inst] for name, column in spec.instances.items()}
    values["pnode"] = values["snode"] = -1
    spare = engine.define_instance(values)
    before = ({name: list(column) for name, column in spec.instances.items()}, dict(moves.forth),
              [engine.forth_use(k) for k in range(spec.n_nodes)], engine.score(-1))
    outcome = GroupOutcome("second", "preferred", 1)
    ForthcomingSearch(moves, values)(engine, spec, outcome, (1, spare, 2, None, 0, -1), False)
    assert outcome.nodes is not None and outcome.successes > 0
    after = ({name: list(column) for name, column in spec.instances.items()}, dict(moves.forth),
             [engine.forth_use(k) for k in range(spec.n_nodes)], engine.score(-1))
    assert after == before
    with pytest.raises(ValueError, match="spare slot"):
        ForthcomingSearch(moves, values)(engine, spec, outcome, (1, inst, 2, None, 0, -1), False)


def _forth_moves(name: str, implementation: str):
    from fastpath.iallocator import load
    from fastpath.session import Session

    options = Options(implementation=implementation)
    session = Session(load(json.loads((DATA / f"{name}.json").read_text()), options), options, [])
    return session, session.moves


def test_trial_move_of_a_forthcoming_instance_leaves_the_figures(implementation):
    """Scoring a move of a forthcoming instance changes nothing: figures, tags and score stay as they were."""
    from fastpath.spec import REPLACE_SECONDARY

    session, moves = _forth_moves("forth-demo-relocate-web1", implementation)
    web1 = session.spec.instance_names.index("web1")
    before = ([moves.engine.forth_use(k) for k in range(session.spec.n_nodes)],
              [moves.engine.node_state(k) for k in range(session.spec.n_nodes)], moves.engine.score(0))
    status, score = moves.eval_move(0, web1, REPLACE_SECONDARY, session.index["a3"], 0)
    assert status == 0 and score != before[2]
    after = ([moves.engine.forth_use(k) for k in range(session.spec.n_nodes)],
             [moves.engine.node_state(k) for k in range(session.spec.n_nodes)], moves.engine.score(0))
    assert after == before and moves.nodes_of(web1) == (session.index["a1"], session.index["a2"])


def test_forthcoming_move_changes_only_forthcoming_figures(implementation):
    """A committed failover of a forthcoming instance moves its use between the nodes' forthcoming
    figures and leaves every real figure as it was."""
    from fastpath.spec import FAILOVER

    session, moves = _forth_moves("forth-demo-evac-primary-web1", implementation)
    web1, a1, a2 = (session.spec.instance_names.index("web1"), session.index["a1"], session.index["a2"])
    real = [moves.engine.node_state(k) for k in range(session.spec.n_nodes)]
    mem_a1, mem_a2 = moves.engine.forth_use(a1)["forth_mem"], moves.engine.forth_use(a2)["forth_mem"]
    moves.apply_move(web1, FAILOVER, -1)
    assert moves.nodes_of(web1) == (a2, a1)
    assert [moves.engine.node_state(k) for k in range(session.spec.n_nodes)] == real
    assert moves.engine.forth_use(a1)["forth_mem"] == mem_a1 - 4096
    assert moves.engine.forth_use(a2)["forth_mem"] == mem_a2 + 4096


@pytest.mark.parametrize("name", ["forth-move-gen-5", "forth-move-gen-74", "forth-n20-evac-secondary"])
def test_forthcoming_move_scores_agree_between_engines(name):
    """Both engines give every candidate move of every forthcoming instance the same status and score."""
    from fastpath.spec import FAILOVER, KIND_MIRRORED, REPLACE_SECONDARY

    results = []
    for implementation in ("c", "pure"):
        session, moves = _forth_moves(name, implementation)
        out = []
        for i in session.spec.forthcoming:
            if session.spec.instances["kind"][i] != KIND_MIRRORED:
                continue
            for kind, target in [(FAILOVER, -1)] + [(REPLACE_SECONDARY, t) for t in range(session.spec.n_nodes)
                                                    if t not in moves.nodes_of(i)]:
                out.append(moves.eval_move(0, i, kind, target, 0))
        results.append(out)
    assert results[0] and len(results[0]) == len(results[1])
    assert all(a[0] == b[0] and a[1] == pytest.approx(b[1], rel=1e-9) for a, b in zip(*results))


def _figures(draw_values: dict):
    from fastpath.dedicated import Figures

    figures = Figures.__new__(Figures)
    figures.__dict__.update(draw_values)
    return figures


@settings(max_examples=200, deadline=None)
@given(st.integers(-2000, 40000), st.integers(0, 20000), st.booleans(), st.integers(-100, 400000),
       st.integers(0, 64), st.sampled_from([0, 128, 1024, 4096]), st.sampled_from([0, 1024, 10240]),
       st.sampled_from([0, 1, 4]), st.sampled_from([0, 2000]))
def test_dedicated_copies_equal_adding_one_by_one(u_mem, r_mem, fail, f_dsk, u_cpu, mem, dsk, vcpus, forth_mem):
    """The bisected count of test-instance copies is what adding copies one by one until one
    fails gives (the N+1 flag taken from each addition)."""
    from fastpath.dedicated import NewInstance, add_primary, copies
    from fastpath.spec import KIND_LOCAL, OK

    node = _figures(dict(t_cpu=16.0, ratio=4.0, lo_dsk=0.0, forth_mem=forth_mem, forth_dsk=0, forth_cpu=0, forth_fsp=0,
                         u_mem=u_mem, r_mem=r_mem, fail=int(fail), f_dsk=f_dsk, u_cpu=u_cpu, all_mem=0,
                         forth_base=u_mem + 5000, tags=0, f_sp=3))
    test = NewInstance(mem, dsk, vcpus, KIND_LOCAL, 1, 1, 0, 0, spindles=0)
    if not (mem or dsk or vcpus):
        with pytest.raises(ValueError, match="without end"):
            copies(node, test)
        return
    count, held = 0, node
    while count < 10_000:
        status, held = add_primary(held, test, False)
        if status != OK:
            break
        count += 1
    assert copies(node, test) == count


def test_dedicated_allocation_is_used_only_when_every_node_has_exclusive_storage(implementation):
    """hail's lost-allocations metric applies to the all-exclusive-storage demo cluster, not to
    the one where rack-b's nodes lack exclusive storage."""
    dedicated = json.loads(answer((DATA / "excl-demo-allocate.json").read_text(),
                                  Options(implementation=implementation)))
    assert "score: ([" in dedicated["info"]
    document = json.loads((DATA / "excl-demo-allocate.json").read_text())
    for name in ("b1", "b2"):
        document["nodes"][name]["ndparams"]["exclusive_storage"] = False
    mixed = json.loads(answer(json.dumps(document), Options(implementation=implementation)))
    assert mixed["success"] and "score: ([" not in mixed["info"]


def test_change_group_with_no_group_left_says_why(implementation):
    """Instances in every group and no target_groups: each fails with a message naming the cause and the fix."""
    document = json.loads((DATA / "demo-change-group.json").read_text())
    document["instances"]["db1"]["nodes"] = ["b1", "b2"]
    document["request"] = {"type": "change-group", "instances": ["web1", "db1"], "target_groups": []}
    response = json.loads(answer(json.dumps(document), Options(implementation=implementation)))
    moved, failed, _jobs = response["result"]
    assert moved == [] and [name for name, _ in failed] == ["web1", "db1"]
    for _name, message in failed:
        assert message.startswith("no groups for evacuation") and "target_groups" in message


def test_change_group_leaves_out_the_group_of_the_primary_even_when_named(implementation):
    """As hail: a named target group that holds the instance's primary is no target (the failure names it)."""
    document = json.loads((DATA / "demo-change-group.json").read_text())
    document["instances"]["web1"]["nodes"] = ["b1", "a1"]  # primary already in rack-b, the named target
    response = json.loads(answer(json.dumps(document), Options(implementation=implementation)))
    moved, failed, _jobs = response["result"]
    assert moved == [] and failed[0][0] == "web1" and failed[0][1].startswith("no groups for evacuation")
