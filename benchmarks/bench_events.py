"""Background events kept at shutdown: tether against uvicorn, gunicorn and granian.

The note's Tracker lesson, measured. For each server, one worker of the same
app (benchmarks/apps/events_app.py): 100 parallel requests each start 0.5 s of
background work with a bare ``asyncio.create_task`` and return; as soon as
every response is in, the server gets SIGTERM. The figure is how many of the
100 events reached the file.

    python benchmarks/bench_events.py [--requests 100] [--servers tether,uvicorn,...]

Peers are installed into benchmarks/.venv-peers (not the project's environment).
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from peers import HERE, PEERS, TETHER, ensure_peers, free_port, wait_listening


def argv(name: str, port: int) -> list[str]:
    peer = PEERS / "bin"
    bind = f"127.0.0.1:{port}"
    quiet = ["--log-level", "warning"]
    return {
        "tether": [str(TETHER), "run", "events_app:app", "--bind", bind, "--no-debug", *quiet],
        "tether --workers 0": [
            str(TETHER),
            "run",
            "events_app:app",
            "--workers",
            "0",
            "--bind",
            bind,
            "--no-debug",
            *quiet,
        ],
        "uvicorn": [str(peer / "uvicorn"), "events_app:app", "--port", str(port), *quiet],
        "gunicorn": [
            str(peer / "gunicorn"),
            "events_app:app",
            "-w",
            "1",
            "-k",
            "uvicorn.workers.UvicornWorker",
            "-b",
            bind,
            *quiet,
        ],
        "granian": [
            str(peer / "granian"),
            "--interface",
            "asgi",
            "--workers",
            "1",
            "--port",
            str(port),
            *quiet,
            "events_app:app",
        ],
    }[name]


def get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def run(name: str, requests: int, path: str = "/") -> tuple[int, int, float]:
    """(events recorded, exit code, seconds from SIGTERM to exit)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        events = Path(tmp) / "events.txt"
        env = {**os.environ, "EVENTS_FILE": str(events)}
        proc = subprocess.Popen(argv(name, port), cwd=HERE / "apps", env=env)
        try:
            wait_listening(port, proc)
            get(port, "/?warm-up")  # not counted: its event may land or not
            time.sleep(0.6)
            events.unlink(missing_ok=True)
            with ThreadPoolExecutor(requests) as pool:
                statuses = list(pool.map(lambda i: get(port, f"{path}?{i}"), range(requests)))
            assert statuses == [202] * requests, statuses
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        recorded = len(events.read_text().split()) if events.exists() else 0
    return recorded, code, took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--servers", default="tether,tether --workers 0,uvicorn,gunicorn,granian")
    args = parser.parse_args()
    ensure_peers()
    print(f"{args.requests} parallel requests, each starting 0.5 s of background work; SIGTERM")
    print("as soon as every response is in. Events recorded:\n")
    print("| server | events recorded | exit code | SIGTERM to exit |\n|---|---|---|---|")
    for name in args.servers.split(","):
        recorded, code, took = run(name, args.requests)
        print(f"| {name} (create_task) | {recorded}/{args.requests} | {code} | {took:.2f} s |")
        if name.startswith("tether"):
            recorded, code, took = run(name, args.requests, "/spawn")
            print(f"| {name} (tether.spawn) | {recorded}/{args.requests} | {code} | {took:.2f} s |")
    print(f"\nmachine: {os.cpu_count()} CPUs; peers from {PEERS}")


if __name__ == "__main__":
    main()
