"""Entries per second of tether.walk and tether.awalk against os.walk, and peak memory.

Generates a tree of files in a temporary directory, then times every walker on
it in interleaved rounds (so a noisy neighbour slows all of them alike) and
keeps each one's best round, by wall clock (entries/s) and by CPU time of the
whole process, reader thread included (entries per CPU-second: steadier when
the machine is shared). Memory is the tracemalloc peak of a streaming walk
against collecting the same entries in a list first, the "return the whole
list" shape.

    .venv/bin/python benchmarks/bench_walk.py            # 100,000 files
    .venv/bin/python benchmarks/bench_walk.py --files 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import tracemalloc
from collections.abc import Callable

from tether._walk import awalk, walk

#: Goals from the issue, as fractions of os.walk's entries per second.
GOALS = {"walk": 0.9, "awalk": 0.7}


def make_tree(root: str, files: int) -> int:
    """Create ``files`` files under ``root``, 100 per leaf directory, 10 leaves per branch.

    In each leaf the first file is created and the others are hard links to
    it: to a walk a link is a file like any other, and linking is several
    times quicker than creating.
    """
    made = 0
    branch = 0
    while made < files:
        for leaf in range(10):
            path = os.path.join(root, f"branch{branch:03d}", f"leaf{leaf}")
            os.makedirs(path)
            first = os.path.join(path, "file000.txt")
            with open(first, "wb"):
                pass
            made += 1
            for i in range(1, min(100, files - made + 1)):
                os.link(first, os.path.join(path, f"file{i:03d}.txt"))
                made += 1
            if made == files:
                break
        branch += 1
    return made


def count_os_walk(root: str) -> int:
    count = 0
    for _top, dirs, files in os.walk(root):
        count += len(dirs) + len(files)
    return count


def count_os_walk_paths(root: str) -> int:
    """os.walk doing what walk's entries come with: the full path of each entry."""
    count = 0
    join = os.path.join
    for top, dirs, files in os.walk(root):
        for name in dirs:
            join(top, name)
        for name in files:
            join(top, name)
        count += len(dirs) + len(files)
    return count


def count_walk(root: str) -> int:
    count = 0
    for _entry in walk(root):
        count += 1
    return count


async def count_awalk(root: str) -> int:
    count = 0
    async for _entry in awalk(root):
        count += 1
    return count


def timed(fn: Callable[[], int]) -> tuple[int, float, float]:
    """Entries counted, wall seconds, CPU seconds of the whole process (reader thread included)."""
    start, cpu = time.perf_counter(), time.process_time()
    count = fn()
    return count, time.perf_counter() - start, time.process_time() - cpu


def speed(root: str, rounds: int) -> dict[str, tuple[int, float, float]]:
    """Best wall and CPU time of each walker over ``rounds`` interleaved rounds."""
    loop = asyncio.new_event_loop()
    try:
        walkers: dict[str, Callable[[], int]] = {
            "os.walk": lambda: count_os_walk(root),
            "os.walk + paths": lambda: count_os_walk_paths(root),
            "walk": lambda: count_walk(root),
            "awalk": lambda: loop.run_until_complete(count_awalk(root)),
        }
        best: dict[str, tuple[int, float, float]] = {}
        for _ in range(rounds):
            for name, fn in walkers.items():
                count, wall, cpu = timed(fn)
                if name in best:
                    wall, cpu = min(wall, best[name][1]), min(cpu, best[name][2])
                best[name] = (count, wall, cpu)
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()
    return best


def peak_memory(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def memory(root: str) -> dict[str, int]:
    return {
        "walk (streaming)": peak_memory(lambda: count_walk(root)),
        "awalk (streaming)": peak_memory(lambda: asyncio.run(count_awalk(root))),
        "list(walk(root))": peak_memory(lambda: list(walk(root))),
        "os.walk into a list of paths": peak_memory(
            lambda: [os.path.join(t, n) for t, ds, fs in os.walk(root) for n in ds + fs]
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tether-bench-walk-") as root:
        files = make_tree(root, args.files)
        best = speed(root, args.rounds)
        count, wall, cpu = best["os.walk"]
        base_wall, base_cpu = count / wall, count / cpu
        print(f"tree: {files:,} files, {count:,} entries; best of {args.rounds} rounds")
        print(
            f"{'walker':<16} {'entries/s':>10} {'vs os.walk':>10}"
            f" {'per CPU-s':>10} {'vs os.walk':>10} {'goal':>6}"
        )
        for name, (count, wall, cpu) in best.items():
            goal = f">={GOALS[name]:.1f}x" if name in GOALS else ""
            print(
                f"{name:<16} {count / wall:>10,.0f} {count / wall / base_wall:>9.2f}x"
                f" {count / cpu:>10,.0f} {count / cpu / base_cpu:>9.2f}x {goal:>6}"
            )
        counts = {count for count, _, _ in best.values()}
        if len(counts) != 1:
            raise SystemExit(f"walkers disagree on the number of entries: {sorted(counts)}")
        print()
        print(f"{'peak memory (tracemalloc)':<30} {'KiB':>10}")
        for name, peak in memory(root).items():
            print(f"{name:<30} {peak / 1024:>10,.0f}")


if __name__ == "__main__":
    main()
