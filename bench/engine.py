"""Benchmark: the pure job engine, with no I/O: jobs in, committed events out, over an in-process log.

    .venv/bin/python bench/engine.py [--jobs 5000] [--nodes 30] [--batch 100] [--seed 1] [--profile]

One leading NodeCore (appliance/sandbox.py, InProcessCluster): every proposal
is encoded and appended to a list, committed in order and fed back, so each
event is encoded, decoded and applied as on a real node. The cluster is set
up by jobs (cluster_init, node_add), then --jobs jobs of the kinds a real
cluster mixes (instance add, startup, shutdown, migrate, remove; names as a
user types them) are submitted --batch at a time, so that many are active at
once. The nodes' side of the waits is the sandbox's Observer, which commits
the observations a reconciler would, at once. Only the jobs phase is timed:
submitting and settling, including the observer's few events. Progress goes
to stderr; the last line is
RESULT engine_jobs_per_s=R engine_jobs_per_s_wall=W jobs=N cpu_seconds=C seconds=S events=E
(the rate per CPU second of this one-threaded process, i.e. on one core; the wall-clock rate beside it)
"""

import argparse
import cProfile
import io
import pstats
import random
import sys
import time
from collections import Counter

from appliance.core.io import op
from appliance.sandbox import InProcessCluster

ADMIN = "admin"
KINDS = (("add", 30), ("startup", 15), ("shutdown", 15), ("migrate", 25), ("remove", 15))
TEMPLATES = ("replicated", "replicated", "replicated", "file", "diskless")


class Workload:
    """The operators: picks each batch from the committed state, one job per instance at most."""

    def __init__(self, cluster: InProcessCluster, nodes: int, seed: int) -> None:
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.node_names = [f"node{n:03d}.bench.example.com" for n in range(1, nodes + 1)]
        self.serial = 0

    def setup(self) -> None:
        """cluster_init, then one node_add job per node (they run side by side)."""
        self.cluster.submit((op("cluster_init", name="bench.example.com"),), ADMIN, "bench cluster")
        self.cluster.settle()
        for number, name in enumerate(self.node_names, start=1):
            self.cluster.submit((op("node_add", name=name, address=f"10.1.{number // 250}.{number % 250}:7800",
                                    memory_mib=1_048_576, disk_mib=100_000_000, cpus=128),), ADMIN, "rack")
        self.cluster.settle()

    def batch(self, size: int) -> list[tuple]:
        """`size` jobs over distinct instances, each of a kind the instance can take."""
        running, stopped, movable = [], [], []
        for instance in self.cluster.state.instances.values():
            if instance.admin_state == "up":
                running.append(instance.name)
                if instance.secondary:
                    movable.append(instance.name)
            else:
                stopped.append(instance.name)
        for names in (running, stopped, movable):
            names.sort()
            self.rng.shuffle(names)
        taken: set[str] = set()
        kinds = self.rng.choices([k for k, _ in KINDS], weights=[w for _, w in KINDS], k=size)
        return [self._job(kind, running, stopped, movable, taken) for kind in kinds]

    def _job(self, kind: str, running: list, stopped: list, movable: list, taken: set) -> tuple:
        pool = {"startup": stopped, "shutdown": running, "migrate": movable,
                "remove": running + stopped if kind == "remove" else ()}.get(kind, ())
        name = next((n for n in pool if n not in taken), None)
        if kind == "add" or name is None:
            return self._add()
        taken.add(name)
        if kind == "migrate":
            return (op("instance_migrate", instance=name),)
        return (op(f"instance_{kind}", instance=name),)

    def _add(self) -> tuple:
        self.serial += 1
        template = self.rng.choice(TEMPLATES)
        primary, secondary = self.rng.sample(self.node_names, 2)
        params = dict(name=f"vm{self.serial:06d}.bench.example.com", primary=primary, disk_template=template,
                      os="debian-12", memory_mib=self.rng.choice((512, 1024, 2048, 4096)),
                      start=self.rng.random() < 0.9)
        if template != "diskless":
            params["disks"] = (self.rng.choice((2048, 10240, 51200)),)
        if template == "replicated":
            params["secondary"] = secondary
        return (op("instance_add", **params),)


def run(jobs: int, nodes: int, batch: int, seed: int, quiet: bool = False) -> dict:
    """Set up a cluster, then run `jobs` jobs; the figures of the timed phase."""
    cluster = InProcessCluster("node001.bench.example.com")
    workload = Workload(cluster, nodes, seed)
    workload.setup()
    first_job, first_seq = cluster.state.next_job_id, cluster.seq
    elapsed, cpu, done, kinds = 0.0, 0.0, 0, Counter()
    report_every = max(jobs // 10, 1)
    while done < jobs:
        picked = workload.batch(min(batch, jobs - done))
        kinds.update(entry[0]["op"] for entry in picked)
        started, started_cpu = time.perf_counter(), time.process_time()
        for number, operations in enumerate(picked):
            cluster.submit(operations, ADMIN, "bench", f"bench-{done + number}")
        cluster.settle()
        elapsed += time.perf_counter() - started
        cpu += time.process_time() - started_cpu
        if not quiet and (done + len(picked)) // report_every != done // report_every:
            print(f"  {done + len(picked)} jobs, {cluster.seq - first_seq} events, {elapsed:.2f} s", file=sys.stderr)
        done += len(picked)
    outcomes = Counter(job.status for job_id, job in cluster.state.jobs.items() if job_id >= first_job)
    return {"jobs": done, "seconds": elapsed, "cpu_seconds": cpu, "events": cluster.seq - first_seq, "outcomes": outcomes,
            "kinds": kinds, "instances": len(cluster.state.instances), "active": len(cluster.state.active_jobs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=5000, help="jobs to run after the set-up")
    parser.add_argument("--nodes", type=int, default=30, help="nodes in the cluster (20-50 is typical)")
    parser.add_argument("--batch", type=int, default=100, help="jobs submitted together (active at once)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="print the top 30 functions by own time on stderr")
    args = parser.parse_args()
    if args.jobs < 1 or args.nodes < 2 or args.batch < 1:
        parser.error("--jobs and --batch must be at least 1, --nodes at least 2")
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    figures = run(args.jobs, args.nodes, args.batch, args.seed)
    if profiler is not None:
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(30)
        print(text.getvalue(), file=sys.stderr)
    print(f"  kinds: {dict(sorted(figures['kinds'].items()))}", file=sys.stderr)
    print(f"  outcomes: {dict(sorted(figures['outcomes'].items()))}; instances {figures['instances']}, "
          f"still active {figures['active']}", file=sys.stderr)
    # The rate is per CPU second of this one-threaded process ("on one core"); on a machine shared with other
    # work the wall-clock rate is lower by whatever the other work takes, so it is printed beside it.
    rate = figures["jobs"] / figures["cpu_seconds"] if figures["cpu_seconds"] else 0.0
    wall = figures["jobs"] / figures["seconds"] if figures["seconds"] else 0.0
    print(f"RESULT engine_jobs_per_s={rate:.0f} engine_jobs_per_s_wall={wall:.0f} jobs={figures['jobs']} "
          f"cpu_seconds={figures['cpu_seconds']:.3f} seconds={figures['seconds']:.3f} events={figures['events']}")
    return 0 if figures["active"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
