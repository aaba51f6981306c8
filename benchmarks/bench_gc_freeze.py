"""CPU per request on a realistic FastAPI app: tether with and without gc.freeze, and uvicorn.

One worker each, pinned to CPU 0, loaded by ``wrk -t1 -c64`` pinned to CPU 1, in
alternated rounds; the figure is the server's CPU time per completed request
(from /proc), which a shared machine disturbs far less than requests per
second. The app counts the garbage collector's runs (apps/gc_counted.py): young
collections per second and the collector's time per request are reported too,
the cost a per-request allocation pattern shows first.

    python benchmarks/bench_gc_freeze.py [--rounds 5] [--duration 10]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from peers import ensure_wrk, free_port, tree_cpu_seconds, wait_listening

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent
SERVERS = ("tether", "tether --no-gc-freeze", "uvicorn")


def server_argv(name: str, port: int) -> list[str]:
    if name == "uvicorn":
        return [str(BIN / "uvicorn"), "gc_counted:app", "--host", "127.0.0.1",
                "--port", str(port), "--loop", "uvloop", "--http", "httptools",
                "--no-access-log", "--log-level", "warning"]  # fmt: skip
    extra = ["--no-gc-freeze"] if "no-gc-freeze" in name else []
    return [str(BIN / "tether"), "run", "gc_counted:app", "--workers", "0",
            "--bind", f"127.0.0.1:{port}", "--debug-bind", f"127.0.0.1:{free_port()}",
            "--no-access-log", "--log-level", "warning", *extra]  # fmt: skip


def gc_counts(port: int, reset: bool = False) -> dict[str, Any]:
    query = "?reset=1" if reset else ""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/gc{query}", timeout=5) as resp:
        counts: dict[str, Any] = json.load(resp)
    return counts


def measure(wrk: str, name: str, path: str, duration: int) -> tuple[float, float, float, float]:
    """Requests/s, CPU µs per request, young collections/s, GC µs per request: one round."""
    port = free_port()
    taskset = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    proc = subprocess.Popen([*taskset, *server_argv(name, port)], cwd=HERE / "apps")
    try:
        wait_listening(port, proc)
        url = f"http://127.0.0.1:{port}{path}"
        pin = ["taskset", "-c", "1"] if taskset else []
        subprocess.run([*pin, wrk, "-t1", "-c64", "-d2s", url], capture_output=True, check=True)
        gc_counts(port, reset=True)
        before = tree_cpu_seconds(proc.pid)
        out = subprocess.run([*pin, wrk, "-t1", "-c64", f"-d{duration}s", "--latency", url],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        cpu = tree_cpu_seconds(proc.pid) - before
        collected = gc_counts(port)
        rps = float(out.split("Requests/sec:")[1].split()[0])
        total = int(out.split(" requests in ")[0].split()[-1])
        if "Non-2xx" in out or "Socket errors" in out:
            print(f"  {name}: errors in wrk's output:\n{out}")
        young = collected["collections"][0] / duration
        return rps, cpu / total * 1e6, young, collected["seconds"] / total * 1e6
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--path", default="/item")
    args = parser.parse_args()
    wrk = ensure_wrk()
    cpu: dict[str, list[float]] = {name: [] for name in SERVERS}
    rps: dict[str, list[float]] = {name: [] for name in SERVERS}
    young: dict[str, list[float]] = {name: [] for name in SERVERS}
    gc_us: dict[str, list[float]] = {name: [] for name in SERVERS}
    for i in range(args.rounds):
        order = SERVERS if i % 2 == 0 else tuple(reversed(SERVERS))
        for name in order:
            r, c, y, g = measure(wrk, name, args.path, args.duration)
            rps[name].append(r)
            cpu[name].append(c)
            young[name].append(y)
            gc_us[name].append(g)
            print(f"round {i + 1} {name:22s} {r:9.0f} req/s {c:7.1f} us CPU/request "
                  f"{y:6.1f} young GCs/s {g:5.2f} us GC/request", flush=True)  # fmt: skip
    base = statistics.median(cpu["uvicorn"])
    print(f"\nGET {args.path}, wrk -t1 -c64 -d{args.duration}s, {args.rounds} alternated rounds")
    for name in SERVERS:
        c = statistics.median(cpu[name])
        print(
            f"{name:22s} CPU/request median {c:6.1f} us (min {min(cpu[name]):.1f}, "
            f"max {max(cpu[name]):.1f}), {c / base:.3f}x uvicorn; "
            f"req/s median {statistics.median(rps[name]):.0f}; young GCs/s "
            f"{statistics.median(young[name]):.1f}, GC {statistics.median(gc_us[name]):.2f} "
            "us/request"
        )


if __name__ == "__main__":
    main()
