"""What one process reports once it has stopped: the work it abandoned, what its app left running.

Two lists, told differently:

- *abandoned* work (requests, background tasks, members cut at the deadline)
  is the stop's outcome: each item is logged with its stack, and one
  :class:`~tether.errors.ShutdownAbandoned` holds them all (exit code 4),
  beside the members' own errors, in one ``ExceptionGroup``;
- *leftovers* (tasks, threads, child processes, fds the app started after
  its import and left behind) are logged as a warning; they change no exit
  code. What hosting keeps for the loop's life (the executor's threads,
  libuv's reserve fd) and this process's own successor (a reload) are not
  the app's.

Invariant: every abandoned item is in exactly one report, whichever layer
cut it (the group, the HTTP engine, the tracker); and the leftovers are
looked for only after the group has stopped, while stop signals are held,
so a TERM cannot end the process in the middle of the report.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable, Iterable, Iterator

from tether import leaks
from tether.errors import AbandonedWork, ShutdownAbandoned

__all__ = ["holding", "raise_problems", "report_leftovers"]

logger = logging.getLogger("tether.runtime")

#: How long what the app left behind may take to end on its own before it is logged.
LEAK_CHECK_TIMEOUT = 0.2
#: Pooled threads that hosting keeps for the event loop's life and ends with it: the
#: executor a2wsgi and ``run_in_executor`` use, and anyio's (FastAPI's sync endpoints).
_HOSTING_THREADS = (
    "concurrent.futures.thread._worker",
    "anyio._backends._asyncio.WorkerThread.run",
)


def raise_problems(
    problems: list[Exception],
    abandoned: list[AbandonedWork],
    *,
    told: Callable[[list[AbandonedWork]], None] | None = None,
) -> None:
    """One ExceptionGroup: members' errors, and everything abandoned in one report.

    ``abandoned``: what the engine and the tracker cut; ``told``: who else
    hears of it (OpenTelemetry), before the raise.
    """
    abandoned = list(abandoned)
    errors: list[Exception] = []
    for exc in problems:
        if isinstance(exc, ShutdownAbandoned):
            abandoned[:0] = exc.items
        else:
            errors.append(exc)
    for item in abandoned:
        # The tracker has already logged its tasks' stacks.
        stack = f"\n{item.stack}" if item.stack and item.kind != "task" else ""
        logger.error("abandoned at the deadline: %s%s", item.describe(), stack)
    if abandoned:
        if told is not None:
            told(abandoned)
        errors.append(ShutdownAbandoned(abandoned))
    if errors:
        msg = "the service ended with problems"
        raise ExceptionGroup(msg, errors)


async def report_leftovers(since: leaks.Snapshot, *, successor: int | None) -> None:
    """After the group stopped: log what the app started and left running."""

    def is_successor(leak: leaks.Leak) -> bool:
        return leak.kind == "process" and successor is not None and leak.name == str(successor)

    found = await leaks.afind(
        since,
        timeout=LEAK_CHECK_TIMEOUT,
        ignore_any=_HOSTING_THREADS,
        ignore=(_libuv_reserve_fd, is_successor),
    )
    if found:
        logger.warning("%s", leaks.format_leaks(found, "the app"))


def _libuv_reserve_fd(leak: leaks.Leak) -> bool:
    """libuv's EMFILE reserve: /dev/null per listening loop, reopened on "/" after an EMFILE."""
    return leak.kind == "fd" and leak.target in ("/dev/null", "/")


@contextlib.contextmanager
def holding(signums: Iterable[int]) -> Iterator[None]:
    """Signals in ``signums`` do nothing while the block runs (the process is ending anyway)."""
    previous = {signum: signal.signal(signum, _ignore) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _ignore(_signum: int, _frame: object) -> None:
    """The stop it asks for has already happened."""
