"""What the app's own metrics cost a scrape: 8 workers, 1,000 prometheus_client series.

The app (``apps/many_metrics.py``) defines 1,000 series and touches every
one at import, so each of the 8 workers' files holds all of them. Figures,
each the median (and worst) of ``--scrapes`` scrapes of the master's
``/metrics`` over loopback:

1. ``--no-app-metrics``: tether's own figures alone (the 8 workers scraped
   over their private sockets, parsed and summed);
2. ``--app-metrics`` (the default): the same plus the app's 1,000 series,
   the directory read and merged by prometheus_client's MultiProcessCollector;
3. the peer, for the same directory while the master runs: what
   prometheus_client's documented multiprocess set-up does on every scrape
   in whatever process serves it (``MultiProcessCollector`` over a fresh
   registry, then ``generate_latest``), timed in this process without HTTP.
   (2) minus (1) against (3) is what tether adds to the library's own work;
4. (2) again after ``--dead`` workers have come and gone (a reload a day,
   recycling): each left its counter and histogram files, which
   prometheus_client keeps so that counters never go back.

    python benchmarks/bench_app_metrics.py [--scrapes 30] [--dead 100]
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from peers import free_port, wait_listening

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent
WORKERS = 8


def get(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (response.status, body)
        return body
    finally:
        conn.close()


@contextmanager
def master(app_metrics: bool) -> Iterator[tuple[int, int]]:
    """`tether run` with 8 workers, every one ready: (app port, debug port)."""
    port, debug_port = free_port(), free_port()
    argv = [str(BIN / "tether"), "run", "many_metrics:app", "--workers", str(WORKERS)]
    argv += ["--bind", f"127.0.0.1:{port}", "--debug-bind", f"127.0.0.1:{debug_port}"]
    argv += ["--log-level", "warning", "--app-metrics" if app_metrics else "--no-app-metrics"]
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    proc = subprocess.Popen(argv, cwd=HERE / "apps", env=env)
    try:
        wait_listening(port, proc)
        ready = b'tether_master_workers{state="ready"} %d.0' % WORKERS
        deadline = time.monotonic() + 120
        while ready not in get(debug_port, "/metrics"):
            assert time.monotonic() < deadline, "the workers never became ready"
            time.sleep(0.2)  # a harness polling a state it does not own
        yield port, debug_port
    finally:
        proc.terminate()
        proc.wait(60)


def timed(fn: Callable[[], bytes], n: int) -> tuple[float, float, int]:
    """Median and worst milliseconds of ``fn``; lines in its last answer."""
    fn()  # warm: imports, caches
    times, lines = [], 0
    for _ in range(n):
        start = time.perf_counter()
        body = fn()
        times.append((time.perf_counter() - start) * 1000)
        lines = body.count(b"\n")
    return statistics.median(times), max(times), lines


def library_scrape(directory: str) -> bytes:
    """prometheus_client's own multiprocess scrape of ``directory`` (no HTTP)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return bytes(generate_latest(registry))


def leave_dead_workers(directory: str, n: int) -> None:
    """What ``n`` workers that served and exited leave behind: their counter and histogram
    files (copies of a live worker's, under pids that no longer run)."""
    files = sorted(Path(directory).glob("counter_*.db")) + sorted(
        Path(directory).glob("histogram_*.db")
    )
    kinds = {f.name.split("_", 1)[0]: f for f in files}
    for i in range(n):
        for kind, source in kinds.items():
            shutil.copyfile(source, Path(directory) / f"{kind}_{4_000_000 + i}.db")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=30)
    parser.add_argument("--dead", type=int, default=100)
    args = parser.parse_args()
    n = args.scrapes

    with master(app_metrics=False) as (_, debug_port):
        off = timed(lambda: get(debug_port, "/metrics"), n)
    with master(app_metrics=True) as (port, debug_port):
        directory = get(port, "/").decode().split(" ", 1)[1]
        on = timed(lambda: get(debug_port, "/metrics"), n)
        peer = timed(lambda: library_scrape(directory), n)
        files = len(os.listdir(directory))
        leave_dead_workers(directory, args.dead)
        dead = timed(lambda: get(debug_port, "/metrics"), n)
        dead_peer = timed(lambda: library_scrape(directory), n)
        dead_files = len(os.listdir(directory))

    rows = [
        ("master /metrics, --no-app-metrics (tether's own)", off, ""),
        ("master /metrics, app's 1,000 series included", on, f"{files} files"),
        ("prometheus_client alone, same directory (no HTTP)", peer, f"{files} files"),
        (f"master /metrics, after {args.dead} dead workers", dead, f"{dead_files} files"),
        (f"prometheus_client alone, after {args.dead} dead workers", dead_peer, ""),
    ]
    print(f"\n{WORKERS} workers, {n} scrapes each; milliseconds per scrape\n")
    print("| scrape | median | worst | lines | directory |")
    print("|---|---|---|---|---|")
    for name, (median, worst, lines), note in rows:
        print(f"| {name} | {median:.1f} | {worst:.1f} | {lines} | {note} |")
    added = on[0] - off[0]
    print(f"\nthe app's series add {added:.1f} ms to the master's answer; ", end="")
    print(f"prometheus_client's own read and format of them takes {peer[0]:.1f} ms")
    print(f"cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
