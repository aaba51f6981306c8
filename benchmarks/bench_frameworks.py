"""Real frameworks at the edges of tether's lifecycle, measured; optionally beside another tree.

Runs the framework apps of tests/apps/frameworks under `tether run --workers 0`:

- sse-starlette: seconds from SIGTERM to exit with one event stream open, the
  exit code, and whether the app's lifespan shutdown ran;
- an endless plain stream at a 3 s budget: the same;
- Django ASGI: ERROR lines in the log after 20 requests;
- Flask: bytes the app receives of a 5 MiB upload sent chunked;
- Flask: seconds for 32 parallel 1 s requests (``--threads 32`` where the tree has it).

``--base DIR`` runs the same on another checkout's ``src`` first (for example
``git archive COMMIT src | tar -x -C /tmp/base``), so that both are measured
side by side in one run::

    .venv/bin/python benchmarks/bench_frameworks.py --base /tmp/base/src
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from fwproc import Served, request  # noqa: E402
from test_frameworks import chunks, read_until_closed  # noqa: E402

_scratch = tempfile.TemporaryDirectory(prefix="bench-fw-")


def served(src: str, target: str, *extra: str) -> Served:
    s = Served(Path(tempfile.mkdtemp(dir=_scratch.name)), target, "single", *extra)
    s.env["PYTHONPATH"] = src
    return s


def has_threads_option(src: str) -> bool:
    out = subprocess.run(
        [sys.executable, "-m", "tether", "run", "--help"],
        env={**os.environ, "PYTHONPATH": src},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return "--threads" in out


def stop_with_open_stream(src: str, path: str, budget: str) -> str:
    with served(src, "fw_fastapi:app", "--graceful-timeout", budget) as s:
        s.ready()
        _, pid = s.serving()
        begin = "sse-begin" if path == "/sse" else "stream-begin"
        if path == "/sse":
            s.get("/sse?count=2")  # a finished stream first, as a user's first page view
        with ThreadPoolExecutor(1) as pool:
            stream = pool.submit(read_until_closed, s.port, path)
            s.wait_marks(begin, 2 if path == "/sse" else 1, pid)
            started = time.monotonic()
            s.signal(signal.SIGTERM)
            code = s.wait()
            elapsed = time.monotonic() - started
            stream.result()
        ran = bool(s.marks("shutdown", pid))
    return f"{elapsed:.2f} s, exit {code}, lifespan shutdown ran: {ran}"


def measure(label: str, src: str) -> None:
    print(f"{label} ({src})")
    print(f"  SSE stream open, SIGTERM, budget 10 s:   {stop_with_open_stream(src, '/sse', '10')}")
    print(
        f"  endless stream open, SIGTERM, budget 3 s: {stop_with_open_stream(src, '/stream', '3')}"
    )
    with served(src, "fw_django:asgi") as s:
        s.ready()
        for _ in range(20):
            s.get("/hits")
        s.signal(signal.SIGTERM)
        s.wait()
        errors = sum(" ERROR " in line for line in s.log().splitlines())
    print(f"  Django ASGI, 20 requests:                 {errors} ERROR lines")
    threads = ("--threads", "32") if has_threads_option(src) else ()
    with served(src, "fw_flask:app", *threads) as s:
        s.ready()
        data = os.urandom(5 * 1024 * 1024)
        _, body = request(s.port, "/upload", method="POST", body=chunks(data))
        print(f"  Flask, 5 MiB sent chunked:                app received {body.split()[0]} bytes")
        with ThreadPoolExecutor(32) as pool:
            started = time.monotonic()
            list(pool.map(lambda _: request(s.port, "/slow?s=1"), range(32)))
            elapsed = time.monotonic() - started
        how = "--threads 32" if threads else "default threads"
        print(f"  Flask, 32 parallel 1 s requests ({how}): {elapsed:.2f} s")
        s.signal(signal.SIGTERM)
        s.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", metavar="SRC", help="another tree's src directory, run first")
    args = parser.parse_args()
    with _scratch:
        if args.base:
            measure("base", args.base)
        measure("this tree", str(Path(__file__).resolve().parent.parent / "src"))


if __name__ == "__main__":
    main()
