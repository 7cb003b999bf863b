"""Benchmark and checker: run the seeded whole-cluster simulator over many seeds.

    .venv/bin/python bench/sim.py --seeds 1000 [--nodes 3] [--jobs 2] [--first 1]
    .venv/bin/python bench/sim.py --seed 17            # run one seed again, with its fault log
    .venv/bin/python bench/sim.py --seeds 200 --bug start_before_stop   # prove a planted bug is found

Each seed runs at least 3 nodes, 50 jobs and 3 faults (tests/sim/). A failing
seed prints its violation and the one-line command that replays it. Last line:
RESULT seeds=N failures=F seeds_per_s=R min_jobs=J min_faults=K fences=A recoveries=B returns=C kills=D
(the last four summed over the seeds: fence proofs committed, instances the
healer's jobs placed elsewhere, fenced nodes the healer brought back, watchdogs
that killed instances).
"""

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.sim.simulator import Config, replay_command, run_seed  # noqa: E402

BUGS = ("replan_after_leader_change", "step_twice", "start_before_stop", "fence_without_wait", "watchdog_never_kills",
        "watchdog_kills_once", "fence_after_disarm", "grant_during_fence")


def _run(arguments):
    seed, config = arguments
    return run_seed(seed, config)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds to run (from --first on)")
    parser.add_argument("--first", type=int, default=1, help="the first seed")
    parser.add_argument("--seed", type=int, help="run this one seed and print its fault log")
    parser.add_argument("--nodes", type=int, default=3, help="nodes per cluster (at least 3)")
    parser.add_argument("--sim-jobs", type=int, default=60, help="jobs per seed (at least 50)")
    parser.add_argument("--faults", type=int, default=4, help="faults per seed (at least 3)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--bug", action="append", default=[], choices=BUGS,
                        help="plant a known bug (test-only switch); the run should then find failures")
    parser.add_argument("--stop-at-first", action="store_true", help="stop at the first failing seed")
    args = parser.parse_args()
    if args.nodes < 3 or args.sim_jobs < 50 or args.faults < 3:
        parser.error("every seed runs at least 3 nodes, 50 jobs and 3 faults: tiny seeds prove nothing")
    config = Config(nodes=args.nodes, jobs=args.sim_jobs, faults=args.faults, bugs=frozenset(args.bug))
    seeds = [args.seed] if args.seed is not None else list(range(args.first, args.first + args.seeds))
    started = time.perf_counter()
    outcomes = []
    work = [(seed, config) for seed in seeds]
    if args.jobs > 1 and len(seeds) > 1:
        with multiprocessing.Pool(args.jobs) as pool:
            for outcome in pool.imap(_run, work, chunksize=4):
                outcomes.append(outcome)
                if _report(outcome, config, args.seed is not None) and args.stop_at_first:
                    pool.terminate()
                    break
    else:
        for item in work:
            outcome = _run(item)
            outcomes.append(outcome)
            if _report(outcome, config, args.seed is not None) and args.stop_at_first:
                break
    elapsed = time.perf_counter() - started
    failures = sum(not o.ok for o in outcomes)
    # A failing seed stops at its violation, before all its jobs and faults: count the seeds that ran whole.
    whole = [o for o in outcomes if o.ok] or outcomes
    print(f"RESULT seeds={len(outcomes)} failures={failures} seeds_per_s={len(outcomes) / elapsed:.2f} "
          f"min_jobs={min(o.jobs for o in whole)} min_faults={min(o.faults for o in whole)} "
          f"fences={sum(o.fences for o in outcomes)} recoveries={sum(o.recoveries for o in outcomes)} "
          f"returns={sum(o.returns for o in outcomes)} kills={sum(o.kills for o in outcomes)}")
    return 1 if failures and not args.bug else 0


def _report(outcome, config, verbose: bool) -> bool:
    """Print a failing seed (or any seed asked for by --seed); True when it failed."""
    if verbose:
        print(f"seed {outcome.seed}: {'ok' if outcome.ok else 'FAILED'}; {outcome.jobs} jobs, {outcome.faults} "
              f"faults, {outcome.commits} commits, {outcome.sim_seconds} simulated s; {outcome.fences} fences, "
              f"{outcome.recoveries} recoveries, {outcome.returns} returns, {outcome.kills} watchdog kills")
        for line in outcome.fault_log:
            print(f"  at {line}")
    if not outcome.ok:
        print(f"seed {outcome.seed} FAILED: {outcome.violation}\n  replay: {replay_command(outcome.seed, config)}",
              flush=True)
    return not outcome.ok


if __name__ == "__main__":
    sys.exit(main())
