"""Hello-world throughput: `tether run` against bare `uvicorn`, same app, same run.

Each round starts one server pinned to CPU 0, loads it with wrk pinned to
CPU 1 (`wrk -t1 -c64 -d DURATION`), records requests/s and the server's CPU
time per request (from /proc, which other load on a shared machine disturbs
far less than throughput), and stops it. Rounds alternate (tether, uvicorn,
uvicorn, tether, ...) so that drift in the machine's load hits both alike;
the figures are ratios of the medians.

    python benchmarks/bench_hello.py [--rounds 5] [--duration 10] [--vs-tether OPTIONS]

wrk comes from Debian's packages (installed by this script if missing).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from peers import ensure_wrk, free_port, tree_cpu_seconds, wait_listening

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent


#: With --vs-tether: the second server is tether with these options added, not uvicorn.
VS_TETHER: list[str] = []


def server_argv(name: str, port: int) -> list[str]:
    if name == "uvicorn" and VS_TETHER:
        return [*server_argv("tether", port), *VS_TETHER]
    if name == "uvicorn":
        return [
            str(BIN / "uvicorn"),
            "hello:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
    return [
        str(BIN / "tether"),
        "run",
        "hello:app",
        "--workers",
        "0",
        "--bind",
        f"127.0.0.1:{port}",
        "--debug-bind",
        f"127.0.0.1:{free_port()}",
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def measure(wrk: str, name: str, duration: int) -> tuple[float, float]:
    port = free_port()
    taskset = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    proc = subprocess.Popen([*taskset, *server_argv(name, port)], cwd=HERE / "apps")
    try:
        wait_listening(port, proc)
        url = f"http://127.0.0.1:{port}/"
        pin = ["taskset", "-c", "1"] if taskset else []
        subprocess.run([*pin, wrk, "-t1", "-c64", "-d2s", url], capture_output=True, check=True)
        cpu_before = tree_cpu_seconds(proc.pid)
        out = subprocess.run(
            [*pin, wrk, "-t1", "-c64", f"-d{duration}s", url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
        if errors:
            print(f"  {name}: {errors.group(0)}")
        cpu = tree_cpu_seconds(proc.pid) - cpu_before
        match = re.search(r"Requests/sec:\s+([\d.]+)", out)
        total = re.search(r"(\d+) requests in", out)
        assert match and total, out
        return float(match.group(1)), cpu / int(total.group(1)) * 1e6
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument(
        "--vs-tether",
        metavar="OPTIONS",
        help="compare with `tether run` given these options instead of uvicorn "
        "(for example '--blocked-loop-threshold 0': what the watch costs); "
        "the figures keep the name uvicorn for the second server",
    )
    args = parser.parse_args()
    VS_TETHER[:] = (args.vs_tether or "").split()
    wrk = ensure_wrk()
    rps: dict[str, list[float]] = {"tether": [], "uvicorn": []}
    cpu: dict[str, list[float]] = {"tether": [], "uvicorn": []}
    for i in range(args.rounds):
        for name in ("tether", "uvicorn") if i % 2 == 0 else ("uvicorn", "tether"):
            r, c = measure(wrk, name, args.duration)
            rps[name].append(r)
            cpu[name].append(c)
            print(f"round {i + 1} {name:8s} {r:10.0f} req/s {c:8.1f} us CPU/request", flush=True)
    t, u = statistics.median(rps["tether"]), statistics.median(rps["uvicorn"])
    tc, uc = statistics.median(cpu["tether"]), statistics.median(cpu["uvicorn"])
    print(f"\nmedian throughput  tether {t:.0f} req/s  uvicorn {u:.0f} req/s  ratio {t / u:.3f}")
    print(f"median CPU/request tether {tc:.1f} us  uvicorn {uc:.1f} us  ratio {uc / tc:.3f}")
    print(f"cpu count {os.cpu_count()}, wrk -t1 -c64 -d{args.duration}s, {args.rounds} rounds")


if __name__ == "__main__":
    main()
