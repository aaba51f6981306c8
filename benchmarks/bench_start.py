"""Start to first response, alone: tether (master + 1 worker, and one process) against uvicorn.

The same measure as `make bench`'s start column (suite.py's ``Server``: from the start of
``Popen`` to the first HTTP answer on hello), without the hour of throughput around it, so
a change to the start path can be timed in a minute. Starts are alternated (A B C, then
C B A, ...) so the machine's drift hits every server alike.

    python benchmarks/bench_start.py [--rounds 9] [--baseline DIR]

``--baseline DIR`` adds the same two tether variants run from another checkout's ``src``
(``DIR/src`` first on ``PYTHONPATH``, which the workers inherit): for example a copy of
main made with ``git archive main src | tar -x -C DIR``, to time a change before and after
side by side on the same machine at the same time.
"""

from __future__ import annotations

import argparse
import compileall
import os
import statistics
import time
from pathlib import Path

from suite import HERE, OUT, Server, med

from peers import ensure_peers

#: (label, suite.py's server name, workers)
VARIANTS = [
    ("uvicorn", "uvicorn", 1),
    ("tether --workers 1", "tether", 1),
    ("tether --workers 0", "tether --workers 0", 1),
]


def start_once(name: str, workers: int, pythonpath: str | None) -> float:
    """Seconds from Popen to the first answer; the server is stopped again before returning."""
    saved = os.environ.get("PYTHONPATH")
    if pythonpath is not None:
        os.environ["PYTHONPATH"] = pythonpath
    try:
        server = Server(name, "hello:app", "/", workers).start()
    finally:
        if pythonpath is not None:
            if saved is None:
                del os.environ["PYTHONPATH"]
            else:
                os.environ["PYTHONPATH"] = saved
    server.stop()
    return server.first_response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--baseline", type=Path, help="another checkout, timed beside this one")
    args = parser.parse_args()
    ensure_peers()
    OUT.mkdir(exist_ok=True)
    compileall.compile_dir(HERE.parent / "src", quiet=1)  # as an installed package is
    variants: list[tuple[str, str, int, str | None]] = [(*v, None) for v in VARIANTS]
    if args.baseline is not None:
        src = args.baseline.resolve() / "src"
        compileall.compile_dir(src, quiet=1)
        variants += [(f"{label} (baseline)", n, w, str(src)) for label, n, w in VARIANTS[1:]]
    times: dict[str, list[float]] = {v[0]: [] for v in variants}
    for i in range(args.rounds):
        for label, name, workers, path in variants if i % 2 == 0 else reversed(variants):
            times[label].append(start_once(name, workers, path))
            time.sleep(0.2)  # the stopped tree's last exits settle before the next start
        print(f"round {i + 1}/{args.rounds} done", flush=True)
    base = statistics.median(times["uvicorn"])
    print(f"\nMedian of {args.rounds} alternated starts (min-max), hello, start to first response")
    print("\n| server | seconds | vs uvicorn |\n|---|---|---|")
    for label, *_ in variants:
        ratio = statistics.median(times[label]) / base
        print(f"| {label} | {med(times[label], 3)} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
