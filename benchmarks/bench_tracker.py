"""What tracking costs: Tracker.spawn against bare create_task, and adoption's task factory.

(a) spawn and complete N trivial tasks with ``await tracker.spawn(...)`` and
    ``await tracker.shutdown(...)``, against ``asyncio.create_task`` + ``gather``.
    Goal: ratio <= 1.3.
(b) the adoption factory on a plain ``create_task`` micro-benchmark: create N
    trivial tasks (keeping references) and run them to completion, with the
    factory installed, outside any request scope and inside one, against no
    factory. Goal: ratio <= 1.15.

Each figure is the best of several runs of the process's CPU time (so that other
load on the machine counts less), the variants interleaved in one process so
that they see the same machine. Usage:

    .venv/bin/python benchmarks/bench_tracker.py [--n 100000] [--repeat 7] [--loop both]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections.abc import Awaitable, Callable

from tether.tracker import Tracker, install_adoption, request_scope

Variant = Callable[[int], Awaitable[None]]


async def trivial() -> None:
    pass


# -- (a) spawn -----------------------------------------------------------------------------


async def bare_create_task(n: int) -> None:
    tasks = [asyncio.create_task(trivial()) for _ in range(n)]
    await asyncio.gather(*tasks)


async def tracker_spawn(n: int) -> None:
    tracker = Tracker()
    for _ in range(n):
        await tracker.spawn(trivial())
    report = await tracker.shutdown(60)
    assert report.completed == n, report


# -- (b) adoption --------------------------------------------------------------------------


async def create_and_run(n: int) -> None:
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(trivial()) for _ in range(n)]
    # Tasks run in creation order and each finishes in one step, so once the last
    # is done all are (and so are the tracker's callbacks, which run before ours).
    await tasks[-1]


async def no_factory(n: int) -> None:
    await create_and_run(n)


async def factory_outside_request(n: int) -> None:
    tracker = Tracker()
    with install_adoption(tracker):
        await create_and_run(n)
    assert tracker.stats().spawned == 0


async def factory_inside_request(n: int) -> None:
    tracker = Tracker()
    with install_adoption(tracker):
        with request_scope("GET /bench"):
            await create_and_run(n)
        report = await tracker.shutdown(60)
    assert report.completed == n, report


# -- harness -------------------------------------------------------------------------------


def best_times(
    variants: dict[str, Variant], n: int, repeat: int, runner: Callable[..., object]
) -> dict[str, float]:
    """Best wall time of each variant, running them interleaved on a fresh loop each time."""
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(repeat):
        for name, variant in variants.items():
            gc.collect()

            async def timed(variant: Variant = variant) -> float:
                started = time.process_time()
                await variant(n)
                return time.process_time() - started

            elapsed = runner(timed())
            assert isinstance(elapsed, float)
            best[name] = min(best[name], elapsed)
    return best


def report(title: str, times: dict[str, float], baseline: str, n: int, goal: float) -> bool:
    print(f"{title}")
    base = times[baseline]
    ok = True
    for name, elapsed in times.items():
        line = f"  {name:<26} {elapsed * 1e3:8.1f} ms  {elapsed / n * 1e6:6.2f} us/task"
        if name != baseline:
            ratio = elapsed / base
            ok = ok and ratio <= goal
            line += f"  ratio {ratio:.3f} (goal <= {goal})"
        print(line)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--loop", choices=["asyncio", "uvloop", "both"], default="both")
    args = parser.parse_args()

    runners: dict[str, Callable[..., object]] = {}
    if args.loop in ("asyncio", "both"):
        runners["asyncio"] = asyncio.run
    if args.loop in ("uvloop", "both"):
        try:
            import uvloop
        except ImportError:
            print("uvloop is not installed; skipping it")
        else:
            runners["uvloop"] = uvloop.run

    print(f"python {sys.version.split()[0]}, n={args.n}, best of {args.repeat}")
    ok = True
    for loop_name, runner in runners.items():
        spawn_times = best_times(
            {"create_task + gather": bare_create_task, "Tracker.spawn": tracker_spawn},
            args.n,
            args.repeat,
            runner,
        )
        ok &= report(
            f"[{loop_name}] (a) spawn and complete",
            spawn_times,
            "create_task + gather",
            args.n,
            1.3,
        )
        adoption_times = best_times(
            {
                "no factory": no_factory,
                "factory, outside request": factory_outside_request,
                "factory, inside request": factory_inside_request,
            },
            args.n,
            args.repeat,
            runner,
        )
        ok &= report(
            f"[{loop_name}] (b) create_task with the adoption factory",
            adoption_times,
            "no factory",
            args.n,
            1.15,
        )
    print("all goals met" if ok else "SOME GOALS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
