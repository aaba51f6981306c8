"""What the access log costs: tether's (text and JSON) against uvicorn's, same run.

Five servers of the same hello app, each pinned to CPU 0 and loaded by wrk
pinned to CPU 1 (`wrk -t1 -c64 -d DURATION`): tether without an access log,
with its text access log, with `--log-format json`; uvicorn without and with
its access log. Every server writes its log (stdout and stderr) to a file, as
a container runtime's log pipe would take it. Rounds rotate the order so
drift in the machine's load hits all alike; figures are medians, and CPU time
per request comes from /proc (less disturbed by other load than throughput).
Each run also checks that the log holds one access line per request.

    python benchmarks/bench_access_log.py [--rounds 3] [--duration 5]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from peers import ensure_wrk, free_port, tree_cpu_seconds, wait_listening

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent

CONFIGS: dict[str, list[str]] = {
    "tether off": ["--no-access-log"],
    "tether text": [],
    "tether json": ["--log-format", "json"],
    "uvicorn off": ["--no-access-log"],
    "uvicorn on": ["--access-log"],
}


def server_argv(name: str, port: int) -> list[str]:
    extra = CONFIGS[name]
    if name.startswith("uvicorn"):
        return [str(BIN / "uvicorn"), "hello:app", "--host", "127.0.0.1", "--port", str(port),
                "--loop", "uvloop", "--http", "httptools", *extra]  # fmt: skip
    return [str(BIN / "tether"), "run", "hello:app", "--workers", "0", "--port", str(port),
            "--debug-bind", f"127.0.0.1:{free_port()}", *extra]  # fmt: skip


def load(pin: list[str], wrk: str, seconds: str, url: str) -> str:
    cmd = [*pin, wrk, "-t1", "-c64", f"-d{seconds}s", url]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def measure(wrk: str, name: str, duration: int, logdir: Path) -> tuple[float, float]:
    """(requests/s, µs of server CPU per request) for one server."""
    port = free_port()
    taskset = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    pin = ["taskset", "-c", "1"] if taskset else []
    log_path = logdir / f"{name.replace(' ', '-')}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*taskset, *server_argv(name, port)], cwd=HERE / "apps", stdout=log, stderr=log
        )
        try:
            wait_listening(port, proc)
            url = f"http://127.0.0.1:{port}/"
            warm = load(pin, wrk, "2", url)
            before = tree_cpu_seconds(proc.pid)
            out = load(pin, wrk, str(duration), url)
            cpu = tree_cpu_seconds(proc.pid) - before
        finally:
            proc.terminate()
            proc.wait(30)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    warm_total = re.search(r"(\d+) requests in", warm)
    assert rate and total and warm_total, out
    requests = int(total.group(1))
    if not name.endswith("off"):
        with open(log_path, "rb") as f:
            lines = sum(1 for line in f if b"GET / HTTP/1.1" in line)
        # wrk counts completed responses; in-flight ones at its end may be logged too.
        assert lines >= requests + int(warm_total.group(1)), (name, lines, requests)
    return float(rate.group(1)), cpu / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    args = parser.parse_args()
    wrk = ensure_wrk()
    names = list(CONFIGS)
    rps: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="bench-access-") as tmp:
        for i in range(args.rounds):
            order = names[i % len(names) :] + names[: i % len(names)]
            for name in order:
                r, c = measure(wrk, name, args.duration, Path(tmp))
                rps[name].append(r)
                cpu[name].append(c)
                print(
                    f"round {i + 1} {name:12s} {r:9.0f} req/s {c:7.1f} us CPU/request", flush=True
                )
    med = {n: statistics.median(rps[n]) for n in names}
    mcpu = {n: statistics.median(cpu[n]) for n in names}
    print()
    for n in names:
        print(f"median {n:12s} {med[n]:9.0f} req/s {mcpu[n]:7.1f} us CPU/request")
    tether_cost = mcpu["tether text"] - mcpu["tether off"]
    json_cost = mcpu["tether json"] - mcpu["tether off"]
    uvicorn_cost = mcpu["uvicorn on"] - mcpu["uvicorn off"]
    kept_text = med["tether text"] / med["tether off"]
    print(
        f"\nthroughput kept with the access log: tether text {kept_text:.3f}, "
        f"tether json {med['tether json'] / med['tether off']:.3f}, "
        f"uvicorn {med['uvicorn on'] / med['uvicorn off']:.3f}"
    )
    print(f"json vs text throughput: {med['tether json'] / med['tether text']:.3f}")
    print(
        f"CPU per request the access log adds: tether text {tether_cost:.1f} us, "
        f"tether json {json_cost:.1f} us, uvicorn {uvicorn_cost:.1f} us "
        f"(tether text / uvicorn {tether_cost / uvicorn_cost:.2f})"
    )
    print(
        f"tether with its access log vs uvicorn with its own: "
        f"{med['tether text'] / med['uvicorn on']:.3f} (throughput ratio)"
    )
    print(f"cpu count {os.cpu_count()}, wrk -t1 -c64 -d{args.duration}s, {args.rounds} rounds")


if __name__ == "__main__":
    main()
