"""What each hop of a replicated disk's data path costs, measured with `qemu-img bench` writes.

The paths (one qemu-storage-daemon per run, all on 127.0.0.1; the export's file on the same disk as
the local file):

- `local`: the raw file itself (no NBD); `local_wt` the same with a flush after every write
  (`-t writethrough`), the disk's own flush cost;
- `unix`: NBD over a unix socket (a same-node hop);
- `tcp`: NBD over TCP to the export as appliance/drivers/nbd.py starts it (listening socket with
  TCP_NODELAY handed to QSD as an fd); `tcp_nagle` the same listening socket without TCP_NODELAY
  (QEMU 7.2's own behaviour, trap 7.1; 4 KiB at depth 16 only, with fewer writes: it is slow);
- `relay`: through appliance/drivers/nbd_relay.py (unix socket in, TCP out) to the same export;
- `relay_tls`: QEMU plain to the relay, the relay does TLS to the export (what Cairn runs);
- `tls`: QEMU's NBD client straight to a TLS export (TLS end to end, no relay), and `relay_tls_e2e`:
  QEMU doing TLS itself through the relay (the relay only sees opaque bytes). `qemu-img bench` cannot
  take the client's TLS credentials (no --object), so these two are measured with qemu-io instead,
  4 KiB writes at depth 1 only (`*_io_4k_qd1_iops`: from the per-write times qemu-io reports), and so
  are tcp, relay and relay_tls for comparison;
- `relay_tls_wt`: `relay_tls` with the export's `writethrough=on` (one fdatasync per write, the flush
  policy of nbd.py), 4 KiB at depth 1 only.

Patterns: 4000 x 4 KiB writes at depth 1 and at depth 16 (IOPS), 400 x 1 MiB writes at depth 4 (MiB/s);
the median of `--runs` runs. `relay_added_us` is what the relay adds to one 4 KiB write at depth 1
(relay against tcp, qemu-img bench), `relay_io_added_us` the same from qemu-io, `relay_tls_io_added_us`
what the relay terminating TLS adds against QEMU doing TLS to the export itself (qemu-io).

    .venv/bin/python bench/nbd_path.py [--runs 3]

Last line: RESULT local_4k_qd1_iops=... ... relay_added_us=... relay_tls_io_added_us=...
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance import pki  # noqa: E402
from appliance.drivers import nbd_relay  # noqa: E402
from appliance.drivers.nbd import ExportDaemon, write_tls_dir  # noqa: E402

IMAGE_MIB = 1024
PATTERNS = {"4k_qd1": (4000, 1, "4k"), "4k_qd16": (4000, 16, "4k"), "1m_qd4": (400, 4, "1M")}


def bench_once(image_opts: str, count: int, depth: int, size: str, objects: list[str],
               cache: str = "writeback") -> float:
    """Seconds qemu-img bench takes for `count` writes of `size` at `depth`."""
    done = subprocess.run(["qemu-img", "bench", *objects, "-w", "-t", cache, "-c", str(count), "-d", str(depth),
                           "-s", size, "--image-opts", image_opts], capture_output=True, text=True, timeout=600)
    found = re.search(r"Run completed in ([0-9.]+) seconds", done.stdout)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"qemu-img bench failed on {image_opts}: {done.stderr.strip()[-400:]}")
    return float(found.group(1))


def io_iops(image_opts: str, objects: list[str], runs: int) -> float:
    """The median of `runs` io_latency_iops measurements."""
    return statistics.median(io_latency_iops(image_opts, objects) for _ in range(runs))


def io_latency_iops(image_opts: str, objects: list[str], count: int = 2000) -> float:
    """4 KiB writes at depth 1 with qemu-io, which (unlike qemu-img bench) takes --object, so it can speak TLS:
    the IOPS that the sum of the per-write times qemu-io reports gives (its own overhead left out)."""
    commands = [argument for offset in range(count) for argument in ("-c", f"write -C {offset * 4}k 4k")]
    done = subprocess.run(["qemu-io", *objects, "--image-opts", image_opts, *commands], capture_output=True,
                          text=True, timeout=600)
    rates = [float(line.rsplit(",", 1)[1]) for line in done.stdout.splitlines() if line.count(",") == 4]
    if done.returncode != 0 or len(rates) != count:
        raise RuntimeError(f"qemu-io failed on {image_opts}: {done.stderr.strip()[-400:]}")
    return count / sum(1 / rate for rate in rates)


def measure(image_opts: str, runs: int, objects: list[str] | None = None, patterns: dict | None = None,
            cache: str = "writeback") -> dict[str, float]:
    figures = {}
    for name, (count, depth, size) in (patterns or PATTERNS).items():
        seconds = statistics.median(bench_once(image_opts, count, depth, size, objects or [], cache)
                                    for _ in range(runs))
        if size == "4k":
            figures[f"{name}_iops"] = count / seconds
        else:
            figures[f"{name}_mibps"] = count * int(size[:-1]) / seconds
    return figures


def make_tls(directory: Path) -> tuple[Path, Path]:
    now = time.time()
    ca = pki.create_ca("bench", now)
    primary = pki.issue_node_certificate(ca, "node1", ["127.0.0.1"], now)
    secondary = pki.issue_node_certificate(ca, "node2", ["127.0.0.1"], now)
    return (write_tls_dir(directory / "server", ca.cert_pem, secondary.cert_pem, secondary.key_pem, "server"),
            write_tls_dir(directory / "client", ca.cert_pem, primary.cert_pem, primary.key_pem, "client"))


def raw_qsd(image: Path, listener: socket.socket) -> subprocess.Popen:
    """A bare export on an already listening socket (unix, or TCP without TCP_NODELAY)."""
    return subprocess.Popen(["qemu-storage-daemon",
                             "--blockdev", f"driver=file,node-name=f0,filename={image}",
                             "--blockdev", "driver=raw,node-name=d0,file=f0",
                             "--nbd-server", f"addr.type=fd,addr.str={listener.fileno()}",
                             "--export", "type=nbd,id=e0,node-name=d0,name=disk0,writable=on"],
                            pass_fds=[listener.fileno()], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()


def start_relay(directory: Path, name: str, address: str, tls_dir: Path | None = None) -> tuple[Path, subprocess.Popen]:
    path = directory / f"{name}.sock"
    config = nbd_relay.Config(path, "127.0.0.1", int(address.rpartition(":")[2]), 30.0, tls_dir)
    process = subprocess.Popen(nbd_relay.relay_command(config), cwd=ROOT, stderr=subprocess.DEVNULL)
    while not path.exists():
        if process.poll() is not None:
            raise RuntimeError("the relay did not start")
        time.sleep(0.01)
    return path, process


def tcp_opts(address: str, tls: bool = False) -> str:
    return (f"driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={address.rpartition(':')[2]},"
            f"export=disk0" + (",tls-creds=tls0" if tls else ""))


def unix_opts(path: Path, tls: bool = False) -> str:
    return f"driver=nbd,server.type=unix,server.path={path},export=disk0" + (
        ",tls-creds=tls0,tls-hostname=127.0.0.1" if tls else "")


def bare_paths(directory: Path, image: Path, runs: int, results: dict) -> None:
    """local, unix and tcp_nagle: no Cairn code in the path."""
    results.update(prefixed("local", measure(f"driver=raw,file.driver=file,file.filename={image}", runs)))
    results.update(prefixed("local_wt", measure(f"driver=raw,file.driver=file,file.filename={image}", runs,
                                                patterns={"4k_qd1": (1000, 1, "4k")}, cache="writethrough")))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(directory / "unix.sock"))
    listener.listen(16)
    process = raw_qsd(image, listener)
    listener.close()
    try:
        results.update(prefixed("unix", measure(unix_opts(directory / "unix.sock"), runs)))
    finally:
        stop(process)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    process = raw_qsd(image, listener)
    listener.close()
    try:
        results.update(prefixed("tcp_nagle", measure(tcp_opts(f"127.0.0.1:{port}"), 1,
                                                     patterns={"4k_qd16": (1000, 16, "4k")})))
    finally:
        stop(process)


async def cairn_paths(directory: Path, image: Path, runs: int, results: dict) -> None:
    """tcp, relay, tls, relay_tls, relay_tls_e2e and relay_tls_wt: exports started as Cairn starts them."""
    server_tls, client_tls = make_tls(directory / "tls")
    client_object = ["--object", f"tls-creds-x509,id=tls0,dir={client_tls},endpoint=client"]
    plain = ExportDaemon(directory / "plain", image, 0, "127.0.0.1", writethrough=False)
    address = await plain.ensure_export()
    try:
        results.update(prefixed("tcp", measure(tcp_opts(address), runs)))
        results["tcp_io_4k_qd1_iops"] = io_iops(tcp_opts(address), [], runs)
        path, relay = start_relay(directory, "relay", address)
        try:
            results.update(prefixed("relay", measure(unix_opts(path), runs)))
            results["relay_io_4k_qd1_iops"] = io_iops(unix_opts(path), [], runs)
        finally:
            stop(relay)
    finally:
        await plain.stop()
    for writethrough, label in ((False, ""), (True, "_wt")):
        secure = ExportDaemon(directory / f"tls{label}", image, 0, "127.0.0.1", tls_dir=server_tls,
                              writethrough=writethrough)
        address = await secure.ensure_export()
        try:
            path, relay = start_relay(directory, f"relay-tls{label}", address, client_tls)
            try:
                patterns = {"4k_qd1": (1000, 1, "4k")} if writethrough else None
                results.update(prefixed(f"relay_tls{label}", measure(unix_opts(path), runs, patterns=patterns)))
                if not writethrough:
                    results["relay_tls_io_4k_qd1_iops"] = io_iops(unix_opts(path), [], runs)
            finally:
                stop(relay)
            if writethrough:
                continue
            results["tls_io_4k_qd1_iops"] = io_iops(tcp_opts(address, tls=True), client_object, runs)
            path, relay = start_relay(directory, "relay-e2e", address)
            try:
                results["relay_tls_e2e_io_4k_qd1_iops"] = io_iops(unix_opts(path, tls=True), client_object, runs)
            finally:
                stop(relay)
        finally:
            await secure.stop()


def prefixed(prefix: str, figures: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{key}": value for key, value in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for binary in ("qemu-img", "qemu-storage-daemon"):
        if shutil.which(binary) is None:
            sys.exit(f"{binary} is missing; install qemu-utils")
    directory = Path(tempfile.mkdtemp(prefix="nbdb", dir="/tmp"))
    try:
        image = directory / "disk.raw"
        subprocess.run(["qemu-img", "create", "-f", "raw", str(image), f"{IMAGE_MIB}M"], check=True,
                       capture_output=True)
        results: dict[str, float] = {}
        bare_paths(directory, image, args.runs, results)
        trio.run(cairn_paths, directory, image, args.runs, results)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    results["relay_added_us"] = (1 / results["relay_4k_qd1_iops"] - 1 / results["tcp_4k_qd1_iops"]) * 1e6
    results["relay_io_added_us"] = (1 / results["relay_io_4k_qd1_iops"] - 1 / results["tcp_io_4k_qd1_iops"]) * 1e6
    results["relay_tls_io_added_us"] = (1 / results["relay_tls_io_4k_qd1_iops"]
                                        - 1 / results["tls_io_4k_qd1_iops"]) * 1e6
    for key, value in results.items():
        print(f"{key:32} {value:10.0f}")
    print("RESULT " + " ".join(f"{key}={value:.0f}" for key, value in results.items()))


if __name__ == "__main__":
    main()
