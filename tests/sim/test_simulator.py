"""The simulator runs whole clusters of real node cores from one seed, and it has teeth.

The bulk run (1000 seeds) is `bench/sim.py --seeds 1000`, which CI runs; here
run a sample of seeds, the named regression seeds, and the proof that each
planted bug is found within 200 seeds.
"""

import pytest

from tests.sim.simulator import Config, Simulation, run_seed

# Seeds that once failed, named for the bug they found; each must pass from now on.
REGRESSIONS = {
    "a step's waits re-judged after the next step undid them (migration stuck)": 1,
    "a guard failure raced a step already proposed (job failed, migration left running)": 73,
    "an instance the guest shut down was never started on the node it failed over to": 265,
    "a stale listing confirmed an instance absent that a migration had just brought in": 789,
    "a node behind the log migrated an instance out on a superseded state": 155,
    "the operator's fence committed after the machine came back (the sim now keeps it off)": 888,
    "a wait re-judged after its compensation was applied never failed the job": 72,
    "a fence waited behind the jobs stuck on the dead node": 287,
    "a start retried on a node already fenced, blocking its failover": 137,
    "a migration landed on a node after its watchdog had fired once, and the node was fenced running it": 20,
    "an operator's cancel of the healer's online job kept a fenced node offline for good": 13,
}


@pytest.mark.parametrize("seed", sorted(REGRESSIONS.values()))
def test_regression_seed_holds(seed):
    """A seed that once failed now runs clean."""
    outcome = run_seed(seed)
    assert outcome.ok, f"seed {seed}: {outcome.violation}; faults: {outcome.fault_log}"


@pytest.mark.parametrize("seed", range(1000, 1010))
def test_a_sample_of_seeds_holds_every_invariant(seed):
    """Ten fresh seeds: every invariant holds, every job ends, every node converges."""
    outcome = run_seed(seed)
    assert outcome.ok, f"seed {seed}: {outcome.violation}; faults: {outcome.fault_log}"
    assert outcome.jobs >= 50 and outcome.faults >= 3


def test_the_fencing_path_runs():
    """Over a few seeds the healer fences, recovers and brings nodes back, and watchdogs fire."""
    outcomes = [run_seed(seed) for seed in (6, 11, 12)]
    assert all(o.ok for o in outcomes)
    assert sum(o.fences for o in outcomes) and sum(o.recoveries for o in outcomes)
    assert sum(o.returns for o in outcomes) and sum(o.kills for o in outcomes)


def test_the_same_seed_gives_the_same_run():
    """Two runs of one seed commit the same log (the last record's hash) and inject the same faults."""
    first, second = Simulation(5), Simulation(5)
    assert first.run().ok and second.run().ok
    assert first.checker.records[-1].hash == second.checker.records[-1].hash
    assert first.faults == second.faults


@pytest.mark.parametrize("bug", ["replan_after_leader_change", "step_twice", "start_before_stop",
                                 "fence_without_wait", "watchdog_never_kills", "watchdog_kills_once"])
def test_a_planted_bug_is_found_within_200_seeds(bug):
    """With a known bug switched on (a test-only switch), some seed of the first 200 breaks an invariant."""
    config = Config(bugs=frozenset({bug}))
    for seed in range(1, 201):
        outcome = run_seed(seed, config)
        if not outcome.ok:
            return
    pytest.fail(f"the simulator did not find the planted bug {bug} in 200 seeds")


def test_a_grant_during_a_pending_fence_is_found_by_its_seed():
    """grant_during_fence needs a leader change between a lapse report and its fence's commit, rare in the
    first 200 seeds: its seed (found with `bench/sim.py --seeds 1000 --bug grant_during_fence --stop-at-first`;
    find it again that way when a change of the code moves it) must break an invariant with the bug planted,
    and not without it."""
    assert not run_seed(1238, Config(bugs=frozenset({"grant_during_fence"}))).ok
    assert run_seed(1238, Config()).ok
