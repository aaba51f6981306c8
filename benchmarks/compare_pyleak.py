"""The same leak scenarios through pyleak and through tether.leaks, side by side.

Run: ``.venv/bin/python benchmarks/compare_pyleak.py``

pyleak is not a tether dependency: on first run this script creates
``benchmarks/out/venv-pyleak`` and pip-installs pyleak there, then imports it
from that venv's site-packages (pyleak and its two small dependencies are pure
Python). Each scenario runs once per tool, each tool with its defaults except
that both are asked to raise (pyleak warns by default).

It prints, per scenario, whether each tool reported a leak and whether that is
the right answer, then the time one check takes with 1,000 live tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import venv
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from tether import _leakscan, leaks

PEERS = Path(__file__).parent / "out" / "venv-pyleak"


def import_pyleak() -> Any:
    """Install pyleak into its own venv if needed, and import it from there."""
    python = PEERS / "bin" / "python"
    if not python.exists():
        venv.create(PEERS, with_pip=True)
    probe = [str(python), "-c", "import pyleak, sys; print(sys.path[-1])"]
    if subprocess.run(probe, capture_output=True).returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "pyleak"], check=True)
    site = subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()
    sys.path.append(site)
    import pyleak  # type: ignore[import-not-found]  # lives in its own venv

    return pyleak


pyleak = import_pyleak()

# -- scenarios: each leaks (or not) inside the given checker and cleans up after ------

Checker = Callable[[], Any]  # returns a sync or async context manager
STOP = threading.Event()


async def note_leak(check: Checker) -> None:
    """The note's leak: a task blocked forever on Queue.get() with no producer."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    async with check():
        asyncio.get_running_loop().create_task(queue.get())
        await asyncio.sleep(0)


async def finishes_50ms_later(check: Checker) -> None:
    """Not a leak: a task that ends 50 ms after the block."""
    async with check():
        asyncio.get_running_loop().create_task(asyncio.sleep(0.05))


async def other_threads_loop(check: Checker) -> None:
    """A task leaked on an event loop running in another thread."""
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    try:
        async with check():

            async def start() -> None:
                LEFT_RUNNING.append(loop.create_task(asyncio.Event().wait()))

            asyncio.run_coroutine_threadsafe(start(), loop).result(5)
    finally:

        async def cancel() -> None:
            for task in LEFT_RUNNING:
                task.cancel()
            await asyncio.gather(*LEFT_RUNNING, return_exceptions=True)
            LEFT_RUNNING.clear()

        asyncio.run_coroutine_threadsafe(cancel(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        runner.join()
        loop.close()


LEFT_RUNNING: list[asyncio.Task[Any]] = []


def thread_leak(check: Checker) -> None:
    """A non-daemon thread left running."""
    with check():
        threading.Thread(target=STOP.wait).start()


def daemon_thread_leak(check: Checker) -> None:
    """A daemon thread left running."""
    with check():
        threading.Thread(target=STOP.wait, daemon=True).start()


def thread_finishes_50ms_later(check: Checker) -> None:
    """Not a leak: a thread that ends 50 ms after the block."""
    with check():
        threading.Thread(target=time.sleep, args=(0.05,)).start()


def subprocess_leak(check: Checker) -> None:
    """A child process left running."""
    with check():
        subprocess.Popen(["sleep", "30"])


def socket_leak(check: Checker) -> None:
    """A listening socket left open."""
    with check():
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        LEFT_OPEN.append(server)


LEFT_OPEN: list[socket.socket] = []

SCENARIOS: list[tuple[Callable[[Checker], Any], bool, str]] = [
    (note_leak, True, "task"),
    (finishes_50ms_later, False, "task"),
    (other_threads_loop, True, "task"),
    (thread_leak, True, "thread"),
    (daemon_thread_leak, True, "thread"),
    (thread_finishes_50ms_later, False, "thread"),
    (subprocess_leak, True, "process"),
    (socket_leak, True, "fd"),
]


def pyleak_checker(kind: str) -> Checker | None:
    if kind == "task":
        return lambda: pyleak.no_task_leaks(action="raise")
    if kind == "thread":
        return lambda: pyleak.no_thread_leaks(action="raise")
    return None  # pyleak has no check for processes or fds


def tether_checker(kind: str) -> Checker:
    # Each scenario checks its own kind, so one scenario's cleanup lag is not another's leak.
    return lambda: leaks.no_leaks(kinds=frozenset({kind}))


def reports(scenario: Callable[[Checker], Any], check: Checker) -> bool:
    """True if running the scenario under ``check`` raised a leak error."""
    try:
        if asyncio.iscoroutinefunction(scenario):
            asyncio.run(cast_coro(scenario(check)))
        else:
            scenario(check)
    except (AssertionError, Exception) as exc:
        if "Leak" in type(exc).__name__ or isinstance(exc, leaks.LeakError):
            return True
        raise
    finally:
        cleanup()
    return False


def cast_coro(value: Any) -> Coroutine[Any, Any, Any]:
    return value  # type: ignore[no-any-return]


def cleanup() -> None:
    """Stop whatever the scenario left, so the next one starts clean."""
    STOP.set()
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and thread.name != "MainThread":
            thread.join(2)
    STOP.clear()
    for server in LEFT_OPEN:
        server.close()
    LEFT_OPEN.clear()
    with contextlib.suppress(ChildProcessError):
        while True:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                for child in _leakscan._proc.children():
                    os.kill(child.pid, 9)
                    os.waitpid(child.pid, 0)
                break


# -- timing with 1,000 live tasks ---------------------------------------------------


async def time_check(make: Checker, leak_inside: bool) -> float:
    """Seconds from the end of the block to the check's answer, with 1,000 live tasks."""
    stop = asyncio.Event()
    outside = [] if leak_inside else [asyncio.create_task(stop.wait()) for _ in range(1000)]
    await asyncio.sleep(0)
    inside: list[asyncio.Task[Any]] = []
    start = 0.0
    with contextlib.suppress(Exception):
        async with make():
            if leak_inside:
                inside = [asyncio.create_task(stop.wait()) for _ in range(1000)]
                await asyncio.sleep(0)
            start = time.perf_counter()
    elapsed = time.perf_counter() - start
    stop.set()
    await asyncio.gather(*outside, *inside)
    return elapsed


def main() -> None:
    print(f"pyleak {pyleak_version()} vs tether.leaks, Python {sys.version.split()[0]}\n")
    print(f"{'scenario':28} {'leak?':6} {'pyleak':12} {'tether':12}")
    for scenario, is_leak, kind in SCENARIOS:
        cells = []
        for make in (pyleak_checker(kind), tether_checker(kind)):
            if make is None:
                cells.append("not checked")
                continue
            got = reports(scenario, make)
            verdict = "ok" if got == is_leak else ("MISSED" if is_leak else "FALSE ALARM")
            cells.append(f"{'reported' if got else 'silent'} {verdict}" if verdict != "ok" else
                         ("reported" if got else "silent"))  # fmt: skip
        print(f"{scenario.__name__:28} {'yes' if is_leak else 'no':6} {cells[0]:12} {cells[1]:12}")

    print("\none check, 1,000 live tasks (best of 5):")
    rows = [
        ("pyleak no_task_leaks", lambda: pyleak.no_task_leaks(action="raise")),
        ("tether no_leaks(kinds=task)", lambda: leaks.no_leaks(kinds=frozenset({"task"}))),
        ("tether no_leaks (all kinds)", lambda: leaks.no_leaks()),
        ("tether no_leaks(timeout=0)", lambda: leaks.no_leaks(timeout=0)),
    ]
    for label, make in rows:
        clean = min(asyncio.run(time_check(make, leak_inside=False)) for _ in range(5))
        leaked = min(asyncio.run(time_check(make, leak_inside=True)) for _ in range(5))
        print(f"  {label:30} none leaked {clean * 1e3:7.2f} ms", end="")
        print(f"   all 1,000 leaked {leaked * 1e3:8.2f} ms")


def pyleak_version() -> str:
    from importlib.metadata import PathDistribution

    site = Path(sys.path[-1])
    dist = next(site.glob("pyleak-*.dist-info"), None)
    return PathDistribution(dist).version if dist else "?"


if __name__ == "__main__":
    main()
