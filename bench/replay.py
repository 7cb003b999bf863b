"""Benchmark: decode and fold a long demo history, then point-in-time replays from checkpoints.

    .venv/bin/python bench/replay.py --events 1000000

Builds N events with the demo generator (through the real operations, in a
child process, as the log's writer is never the replaying process), writes
them as a sealed event file, times reading + verifying + decoding + folding the
whole file into state, writes checkpoints every 50,000 events, then times
`replay --at` (in-process) for 20 random positions. Last line:
RESULT events=N seconds=S events_per_s=R at_max_s=T
"""

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance import eventfile  # noqa: E402


def generate(path: Path, events: int, seed: int) -> None:
    """Write the demo history in a child process.

    The history is written by another process, as in production (the log's
    writer is not the replaying process), so the fold starts on a fresh heap
    rather than one the generator filled.
    """
    subprocess.run([sys.executable, "-c", "import sys; from appliance.demo import write_demo; "
                    "write_demo(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))",
                    str(path), str(events), str(seed)], check=True, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--every", type=int, default=50_000, help="checkpoint interval")
    parser.add_argument("--positions", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dir", default=None, help="where to write the files (default: a temporary folder)")
    parser.add_argument("--file", default=None, help="replay this existing event file instead of generating one")
    args = parser.parse_args()

    folder = Path(args.dir or tempfile.mkdtemp(prefix="cairn-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = Path(args.file) if args.file else folder / "bench.events"
    started = time.perf_counter()
    if not args.file:
        generate(path, args.events, args.seed)
        print(f"generated {args.events} events in {time.perf_counter() - started:.1f} s "
              f"({os.path.getsize(path) / 1e6:.0f} MB)", flush=True)

    started = time.perf_counter()
    state = eventfile.replay_file(path, use_checkpoints=False)
    seconds = time.perf_counter() - started
    rate = state.seq / seconds
    print(f"full fold: {state.seq} events in {seconds:.2f} s = {rate:,.0f} events/s; "
          f"{len(state.instances)} instances, {len(state.jobs)} jobs kept", flush=True)

    started = time.perf_counter()
    seqs = eventfile.write_checkpoints(path, args.every)
    print(f"wrote {len(seqs)} checkpoints in {time.perf_counter() - started:.1f} s", flush=True)

    rng = random.Random(args.seed)
    times = []
    for at in sorted(rng.randint(1, state.seq) for _ in range(args.positions)):
        started = time.perf_counter()
        replayed = eventfile.replay_file(path, at)
        elapsed = time.perf_counter() - started
        assert replayed.seq == at
        times.append(elapsed)
        print(f"  replay --at {at}: {elapsed:.3f} s", flush=True)
    print(f"RESULT events={state.seq} seconds={seconds:.3f} events_per_s={rate:.0f} at_max_s={max(times):.3f}")


if __name__ == "__main__":
    main()
