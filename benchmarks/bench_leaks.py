"""What recording creation sites costs on ``asyncio.create_task``, and what a check costs.

Run: ``.venv/bin/python benchmarks/bench_leaks.py`` (``--tasks N``, ``--repeat R``).

Part 1 creates N trivial tasks per round, in the same process and alternating
rounds, with and without tether's creation tracking on the loop, and prints the
per-task cost of each and their ratio (best of R rounds each, so that a noisy
neighbour does not inflate one side). "Tracking + chained factory" adds a
second, pass-through factory installed before tether's, as tether's Tracker
would, to show that chaining stays cheap.

Part 2 times one ``snapshot()`` and one clean ``find()`` (no leaks, so no
retries) with 1,000 live tasks that existed at the snapshot.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from tether import leaks


async def _nothing() -> None:
    return None


async def _create_tasks(n: int) -> float:
    """Seconds to create n tasks (they are awaited afterwards, outside the timed part)."""
    loop = asyncio.get_running_loop()
    coros = [_nothing() for _ in range(n)]
    start = time.perf_counter()
    tasks = [loop.create_task(c) for c in coros]
    elapsed = time.perf_counter() - start
    await asyncio.gather(*tasks)
    return elapsed


def _passthrough(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
    return asyncio.Task(coro, loop=loop, **kwargs)


async def _measure(n: int, repeat: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    best = {"plain": float("inf"), "tracking": float("inf"), "chained": float("inf")}
    for _ in range(repeat):
        loop.set_task_factory(None)
        best["plain"] = min(best["plain"], await _create_tasks(n))
        leaks.install_creation_tracking(loop)
        best["tracking"] = min(best["tracking"], await _create_tasks(n))
        leaks.uninstall_creation_tracking(loop)
        loop.set_task_factory(_passthrough)
        leaks.install_creation_tracking(loop)
        best["chained"] = min(best["chained"], await _create_tasks(n))
        leaks.uninstall_creation_tracking(loop)
        loop.set_task_factory(None)
    return {k: v / n for k, v in best.items()}


async def _check_cost(live: int) -> tuple[float, float]:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(stop.wait()) for _ in range(live)]
    await asyncio.sleep(0)
    start = time.perf_counter()
    since = leaks.snapshot()
    snap_time = time.perf_counter() - start
    start = time.perf_counter()
    found = await leaks.afind(since)
    find_time = time.perf_counter() - start
    assert not found, found
    stop.set()
    await asyncio.gather(*tasks)
    return snap_time, find_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    per_task = asyncio.run(_measure(args.tasks, args.repeat))
    plain = per_task["plain"]
    print(f"create_task, {args.tasks} tasks per round, best of {args.repeat} rounds:")
    for label, key in [
        ("no recording", "plain"),
        ("creation tracking", "tracking"),
        ("tracking + chained factory", "chained"),
    ]:
        cost = per_task[key]
        print(f"  {label:28} {cost * 1e6:6.2f} us/task  x{cost / plain:.2f}")
    print(f"  recording adds {(per_task['tracking'] - plain) * 1e6:.2f} us per task")

    snap_time, find_time = asyncio.run(_check_cost(1000))
    print("with 1,000 live tasks (all older than the snapshot):")
    print(f"  snapshot()             {snap_time * 1e3:6.2f} ms")
    print(f"  afind(), none leaked   {find_time * 1e3:6.2f} ms")


if __name__ == "__main__":
    main()
