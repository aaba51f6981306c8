"""CPU per request, tether against uvicorn, for the workloads where per-connection cost shows.

`make bench` measures five servers in every workload; this runs only tether
and uvicorn (and, with ``--base SRC...``, more tethers from other source
trees, e.g. ``main`` checked out elsewhere, as the "before" of a change) in
alternated rounds (A B C, then C B A, ...), each round as ``suite.one_round``
does it: start, 1 s warm-up, ``wrk -t1 -c64`` for ``--duration`` seconds, CPU
of the whole process tree from /proc divided by completed requests.

    python benchmarks/bench_conn.py [--rounds 5] [--duration 3] [--workers 1 2]
        [--workloads close keep-alive fastapi] [--base /tmp/tether-main/src ...] [--floor]

``--floor`` adds, with one worker on the hello workloads, ``floor_server.py``:
not a server but the least an HTTP/1.1 protocol written in Python does on the
same event loop and parser, which says how much of a request's cost is the
protocol's own Python (uvicorn's, under tether too) rather than the kernel's.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import os
import statistics
from collections.abc import Iterator

from suite import HERE, OUT, Round, one_round

from peers import ensure_peers, ensure_wrk

#: Short name -> suite.py's workload.
WORKLOADS = {
    "close": "hello connection-close",
    "keep-alive": "hello keep-alive",
    "fastapi": "FastAPI GET",
}


@contextlib.contextmanager
def source(src: str | None) -> Iterator[None]:
    """Servers started inside import tether from ``src`` (None: the installed tree)."""
    if src is None:
        yield
        return
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = src
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


def run_round(
    name: str, workload: str, workers: int, seconds: float, trees: dict[str, str]
) -> Round:
    """One round of ``name``: a server, or ``tether@N``, tether from the N-th ``--base`` tree."""
    with source(trees.get(name)):
        return one_round("tether" if name in trees else name, workload, workers, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=["close"])
    parser.add_argument("--base", nargs="+", default=[], help="tether source trees (src/)")
    parser.add_argument("--floor", action="store_true", help="add floor_server.py (see above)")
    args = parser.parse_args()
    ensure_wrk()
    ensure_peers()
    trees = {f"tether@{i}" if len(args.base) > 1 else "tether@base": tree
             for i, tree in enumerate(args.base, 1)}  # fmt: skip
    for tree in [str(HERE.parent / "src"), *args.base]:
        compileall.compile_dir(tree, quiet=1)
    OUT.mkdir(exist_ok=True)
    servers = ["tether", "uvicorn", *trees]
    table = ["| workload | workers | server | CPU µs/request median (min-max) | vs uvicorn |"]
    table.append("|---|---|---|---|---|")
    for short in args.workloads:
        workload = WORKLOADS[short]
        for workers in args.workers:
            floor = args.floor and workers == 1 and short != "fastapi"
            here = [*servers, "floor"] if floor else servers
            cpu: dict[str, list[float]] = {name: [] for name in here}
            for i in range(args.rounds):
                for name in here if i % 2 == 0 else reversed(here):
                    r = run_round(name, workload, workers, args.duration, trees)
                    cpu[name].append(r.cpu_us)
                    print(
                        f"{short:10s} w{workers} {name:11s} {r.rps:8.0f} req/s "
                        f"{r.cpu_us:7.1f} us CPU/request {r.errors} errors",
                        flush=True,
                    )
            base = statistics.median(cpu["uvicorn"])
            for name in here:
                m = statistics.median(cpu[name])
                table.append(
                    f"| {short} | {workers} | {name} | {m:.1f} ({min(cpu[name]):.1f}-"
                    f"{max(cpu[name]):.1f}) | {m / base:.2f}x |"
                )
    print("\n".join(table))


if __name__ == "__main__":
    main()
