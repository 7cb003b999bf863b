"""A small run of bench/engine.py: the pure job engine runs a mixed workload to the end (no speed asserted)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_engine_bench_runs_every_job_to_its_end():
    """200 jobs over 20 nodes all end, and the last line is the RESULT line with every figure."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "engine.py"), "--jobs", "200", "--nodes", "20",
                           "--batch", "50"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT engine_jobs_per_s=")
    figures = dict(part.split("=") for part in last.split()[1:])
    assert int(figures["jobs"]) == 200 and int(figures["events"]) > 200 * 4
    assert "outcomes: {'success': 200}" in done.stderr
