"""What observability costs: per-request recording, /metrics of 8 workers, an idle service.

Four figures, one run:

1. hello-world throughput of `tether run --workers 0` with per-request
   recording on, against the same build with it off
   (``TETHER_REQUEST_METRICS=off``): rounds alternate (on, off, off, on, ...),
   server pinned to CPU 0 and wrk to CPU 1, medians compared; also the server's
   CPU time per request, which a shared machine disturbs less than throughput;
2. the time the master takes to answer `/metrics` with 8 workers (it scrapes
   all 8 over their private sockets, parses and sums them), over 30 scrapes;
3. the recording alone, in process: the HTTP server's ASGI front called
   directly, with and without it (best of 7 runs of 50,000 calls), and what
   its parts cost one by one (the two clock reads, the record, a ``send``
   wrapper that does nothing): the floor of recording done in Python;
4. the CPU an idle `tether run` uses over 20 s, for one process
   (`--workers 0`) and for a master with one worker (the default), counting
   every process of the service.

    python benchmarks/bench_metrics.py [--rounds 5] [--duration 8] [--idle 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

from tether.metrics import ProcessMetrics
from tether.serving import ASGIApp, DrainHooks, HttpServer, ServeOptions
from tether.tracker import REQUESTS

from peers import ensure_wrk, free_port, wait_listening

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent


def tether_argv(port: int, debug_port: int, workers: int) -> list[str]:
    return [
        str(BIN / "tether"),
        "run",
        "hello:app",
        "--workers",
        str(workers),
        "--bind",
        f"127.0.0.1:{port}",
        "--debug-bind",
        f"127.0.0.1:{debug_port}",
        "--log-level",
        "warning",
    ]


def cpu_ns(pid: int) -> int:
    """Nanoseconds every thread of a process has run (schedstat: finer than clock ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):  # a thread that ended
            total += int((task / "schedstat").read_text().split()[0])
    return total


def tree(pid: int) -> list[int]:
    """The process and its children (a master and its workers)."""
    out = [pid]
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        out.extend(tree(int(child)))
    return out


def throughput(wrk: str, recording: bool, duration: int) -> tuple[float, float]:
    port, debug_port = free_port(), free_port()
    taskset = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    env = dict(os.environ, TETHER_REQUEST_METRICS="on" if recording else "off")
    proc = subprocess.Popen(
        [*taskset, *tether_argv(port, debug_port, 0)], cwd=HERE / "apps", env=env
    )
    try:
        wait_listening(port, proc)
        url = f"http://127.0.0.1:{port}/"
        pin = ["taskset", "-c", "1"] if taskset else []
        subprocess.run([*pin, wrk, "-t1", "-c64", "-d2s", url], capture_output=True, check=True)
        # `tether run` keeps its pid as a small keeper and serves from its child
        # (tether._init): count every process of the service.
        pids = tree(proc.pid)
        before = sum(cpu_ns(p) for p in pids)
        out = subprocess.run(
            [*pin, wrk, "-t1", "-c64", f"-d{duration}s", url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        cpu = (sum(cpu_ns(p) for p in pids) - before) / 1e9
        rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
        total = re.search(r"(\d+) requests in", out)
        assert rps and total, out
        return float(rps.group(1)), cpu / int(total.group(1)) * 1e6
    finally:
        proc.terminate()
        proc.wait(30)


async def _hello(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"Hello\n"})


async def _sink(message: Any) -> None:
    pass


async def _receive() -> Any:
    return {"type": "http.request"}


def in_process(n: int, repeat: int) -> tuple[float, float]:
    """Nanoseconds per request through the HTTP server's ASGI front, recording off and on.

    The front is what uvicorn calls per request (``HttpServer.config.app``),
    called directly: the difference is the recording alone. Best of ``repeat``.
    """

    async def one(recording: bool) -> float:
        hooks = DrainHooks(requests=REQUESTS, metrics=ProcessMetrics() if recording else None)
        server = HttpServer(_hello, [], ServeOptions(lifespan="off"), hooks)
        front = cast(ASGIApp, server.config.app)
        start = time.process_time()
        for _ in range(n):
            await front({"type": "http", "method": "GET", "path": "/"}, _receive, _sink)
        return (time.process_time() - start) / n * 1e9

    async def both() -> tuple[float, float]:
        off, on = [], []
        for _ in range(repeat):
            off.append(await one(False))
            on.append(await one(True))
        return min(off), min(on)

    return asyncio.run(both())


def parts(n: int, repeat: int) -> dict[str, float]:
    """Nanoseconds per request of each part of the recording, best of ``repeat`` runs of ``n``.

    Each is the front of figure 3 reduced to one part, against the same front
    doing nothing but call the app: what a cheaper recording could still save.
    """

    async def passthrough(scope: Any, receive: Any, send: Any) -> None:
        await _hello(scope, receive, send)

    async def clocks(scope: Any, receive: Any, send: Any) -> None:
        started = scope["tether.started"] = time.perf_counter()
        await _hello(scope, receive, send)
        time.perf_counter() - started

    metrics = ProcessMetrics()

    async def clocks_record(scope: Any, receive: Any, send: Any) -> None:
        started = scope["tether.started"] = time.perf_counter()
        await _hello(scope, receive, send)
        metrics.request(scope["method"], 200, time.perf_counter() - started, 6)

    async def wrapper(scope: Any, receive: Any, send: Any) -> None:
        def wrapped(message: Any) -> Any:
            return send(message)

        await _hello(scope, receive, wrapped)

    async def one(front: Any) -> float:
        start = time.process_time()
        for _ in range(n):
            await front({"type": "http", "method": "GET", "path": "/"}, _receive, _sink)
        return (time.process_time() - start) / n * 1e9

    async def each() -> dict[str, float]:
        fronts = {"none": passthrough, "clocks": clocks, "clocks+record": clocks_record}
        fronts["send wrapper"] = wrapper
        best = dict.fromkeys(fronts, float("inf"))
        for _ in range(repeat):
            for name, front in fronts.items():
                best[name] = min(best[name], await one(front))
        return {name: ns - best["none"] for name, ns in best.items() if name != "none"}

    return asyncio.run(each())


def get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (response.status, body)
        return body
    finally:
        conn.close()


def metrics_time(workers: int, scrapes: int) -> tuple[float, float, int]:
    """Median and worst milliseconds for the master's /metrics; lines in the answer."""
    port, debug_port = free_port(), free_port()
    proc = subprocess.Popen(tether_argv(port, debug_port, workers), cwd=HERE / "apps")
    try:
        wait_listening(port, proc)
        deadline = time.monotonic() + 60
        while b'tether_master_workers{state="ready"} %d.0' % workers not in get(
            debug_port, "/metrics"
        ):
            assert time.monotonic() < deadline, "the workers never became ready"
            time.sleep(0.2)
        for _ in range(200):
            get(port, "/")
        get(debug_port, "/metrics")  # warm
        times = []
        lines = 0
        for _ in range(scrapes):
            start = time.perf_counter()
            body = get(debug_port, "/metrics")
            times.append((time.perf_counter() - start) * 1000)
            lines = body.count(b"\n")
        return statistics.median(times), max(times), lines
    finally:
        proc.terminate()
        proc.wait(60)


def idle_cpu(workers: int, seconds: float) -> float:
    """Milliseconds of CPU the whole service used while idle for ``seconds``."""
    port, debug_port = free_port(), free_port()
    proc = subprocess.Popen(tether_argv(port, debug_port, workers), cwd=HERE / "apps")
    try:
        wait_listening(port, proc)
        get(port, "/")  # served once, so the recording path has run
        time.sleep(3)  # let start-up settle (imports, the connection's clock)
        pids = tree(proc.pid)
        # tether's keeper (the pid Popen started), the service process, its workers.
        assert len(pids) == 2 + workers, pids
        before = sum(cpu_ns(p) for p in pids)
        time.sleep(seconds)
        return (sum(cpu_ns(p) for p in pids) - before) / 1e6
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--idle", type=float, default=20.0)
    args = parser.parse_args()
    wrk = ensure_wrk()

    rps: dict[bool, list[float]] = {True: [], False: []}
    cpu: dict[bool, list[float]] = {True: [], False: []}
    for i in range(args.rounds):
        for recording in (True, False) if i % 2 == 0 else (False, True):
            r, c = throughput(wrk, recording, args.duration)
            rps[recording].append(r)
            cpu[recording].append(c)
            label = "metrics on " if recording else "metrics off"
            print(f"round {i + 1} {label} {r:9.0f} req/s {c:7.1f} us CPU/request", flush=True)
    on, off = statistics.median(rps[True]), statistics.median(rps[False])
    con, coff = statistics.median(cpu[True]), statistics.median(cpu[False])
    print(f"\nmedian throughput   on {on:.0f} req/s  off {off:.0f} req/s  cost {1 - on / off:+.1%}")
    print(f"median CPU/request  on {con:.1f} us  off {coff:.1f} us  cost {con / coff - 1:+.1%}")
    # Each round's pair ran back to back: their ratio shrugs off the load swinging between rounds.
    paired = sorted(a / b - 1 for a, b in zip(cpu[True], cpu[False], strict=True))
    print(
        f"paired CPU/request cost: median {statistics.median(paired):+.1%} "
        f"(rounds {paired[0]:+.1%} to {paired[-1]:+.1%}); "
        f"throughput on {min(rps[True]):.0f}-{max(rps[True]):.0f}, "
        f"off {min(rps[False]):.0f}-{max(rps[False]):.0f} req/s"
    )

    off_ns, on_ns = in_process(50_000, 7)
    extra = on_ns - off_ns
    print(f"in process: {off_ns:.0f} ns/request off, {on_ns:.0f} on: recording {extra:.0f} ns")
    print(
        "  its parts alone: "
        + ", ".join(f"{name} {ns:.0f} ns" for name, ns in parts(50_000, 7).items())
    )

    median, worst, lines = metrics_time(8, 30)
    print(f"\n/metrics of 8 workers: median {median:.1f} ms, worst {worst:.1f} ms ({lines} lines)")

    for workers in (0, 1):
        ms = idle_cpu(workers, args.idle)
        what = "one process (--workers 0)" if workers == 0 else "master + 1 worker"
        print(f"idle CPU over {args.idle:g}s, {what}: {ms:.2f} ms")
    print(f"\ncpu count {os.cpu_count()}, wrk -t1 -c64 -d{args.duration}s, {args.rounds} rounds")


if __name__ == "__main__":
    main()
