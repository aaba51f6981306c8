"""What the app's own metrics cost a scrape: 8 workers, 1,000 prometheus_client series.

The app (``apps/many_metrics.py``) defines 1,000 series and touches every
one at import, so each of the 8 workers' files holds all of them. Figures,
each the median (and worst) of ``--scrapes`` scrapes of the master's
``/metrics`` over loopback:

Two masters run side by side and every figure's scrapes are interleaved
with the others', so a shared machine's load falls on all of them alike.

1. ``--no-app-metrics``: tether's own figures alone (the 8 workers scraped
   over their private sockets, parsed and summed);
2. ``--app-metrics`` (the default): the same plus the app's 1,000 series,
   the directory read and merged by prometheus_client's MultiProcessCollector;
3. the peer, for the same directory while the master runs: what
   prometheus_client's documented multiprocess set-up does on every scrape
   in whatever process serves it (``MultiProcessCollector`` over a fresh
   registry, then ``generate_latest``), timed in this process without HTTP.
   (2) minus (1) against (3) is what tether adds to the library's own work;
4. (2) again after ``--reloads`` HUPs (8 workers exit in each): every
   worker that exits leaves counter and histogram files, which
   prometheus_client keeps so that counters never go back, and which the
   master merges into one file per kind; (3) over the directory so made,
   and over a copy of it taken before the reloads, in turn.

    python benchmarks/bench_app_metrics.py [--scrapes 30] [--reloads 12]
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
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
def master(app_metrics: bool) -> Iterator[tuple[int, int, int]]:
    """`tether run` with 8 workers, every one ready: (its pid, app port, debug port)."""
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
        yield proc.pid, port, debug_port
    finally:
        proc.terminate()
        proc.wait(60)


def interleaved(fns: list[Callable[[], bytes]], n: int) -> list[tuple[float, float, int]]:
    """Median and worst milliseconds of each of ``fns``, called in turn ``n`` times (so a
    shared machine's load falls on all alike); lines in each one's last answer."""
    for fn in fns:
        fn()  # warm: imports, caches
    times: list[list[float]] = [[] for _ in fns]
    lines = [0] * len(fns)
    for _ in range(n):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            body = fn()
            times[i].append((time.perf_counter() - start) * 1000)
            lines[i] = body.count(b"\n")
    return [(statistics.median(t), max(t), k) for t, k in zip(times, lines, strict=True)]


def library_scrape(directory: str) -> bytes:
    """prometheus_client's own multiprocess scrape of ``directory`` (no HTTP)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return bytes(generate_latest(registry))


def reload(master_pid: int, debug_port: int, done: int) -> None:
    """HUP: a new generation of 8 workers; return once the old one has exited."""
    os.kill(master_pid, signal.SIGHUP)
    want = b'tether_reloads_total{outcome="ok"} %d.0' % done
    deadline = time.monotonic() + 120
    while True:
        body = get(debug_port, "/metrics")
        if want in body and b'tether_master_workers{state="stopping"} 0.0' in body:
            return
        assert time.monotonic() < deadline, f"reload {done} did not finish"
        time.sleep(0.2)  # a harness polling a state it does not own


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=30)
    parser.add_argument("--reloads", type=int, default=12)
    args = parser.parse_args()
    n = args.scrapes

    with master(app_metrics=False) as (_, _, off_port), master(app_metrics=True) as m:
        pid, port, debug_port = m
        directory = get(port, "/").decode().split(" ", 1)[1]
        off, on, peer = interleaved(
            [
                lambda: get(off_port, "/metrics"),
                lambda: get(debug_port, "/metrics"),
                lambda: library_scrape(directory),
            ],
            n,
        )
        files = len(os.listdir(directory))
        # A copy of the directory as it is now: read beside it after the reloads, so the
        # two are compared under the same load.
        before = tempfile.mkdtemp(prefix="bench-app-metrics-")
        shutil.copytree(directory, before, dirs_exist_ok=True)
        for i in range(args.reloads):
            reload(pid, debug_port, i + 1)
        dead, dead_peer, snapshot = interleaved(
            [
                lambda: get(debug_port, "/metrics"),
                lambda: library_scrape(directory),
                lambda: library_scrape(before),
            ],
            n,
        )
        shutil.rmtree(before)
        dead_files = len(os.listdir(directory))
    exited = args.reloads * WORKERS

    rows = [
        ("master /metrics, --no-app-metrics (tether's own)", off, ""),
        ("master /metrics, app's 1,000 series included", on, f"{files} files"),
        ("prometheus_client alone, same directory (no HTTP)", peer, f"{files} files"),
        (f"master /metrics, after {exited} workers exited", dead, f"{dead_files} files"),
        ("prometheus_client alone, same directory (no HTTP)", dead_peer, f"{dead_files} files"),
        ("prometheus_client alone, the copy made before the reloads", snapshot, f"{files} files"),
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
