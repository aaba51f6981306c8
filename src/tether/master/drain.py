"""Waiting for workers asked to stop, by the stop plan's absolute deadline; then killing them.

A master never waits on a worker without end: every wait here ends at an
absolute ``time.monotonic()`` deadline taken from a
:class:`~tether.config.ShutdownPlan` (its ``master_kill``: a worker's own
graceful deadline plus the time it has to cancel and report), never from
seconds counted again at each hop. A second stop signal (``hurry``) cuts the
deadline to the plan of a stop that ends now: the workers were told to skip
to cancelling.

Invariant: when :func:`wait_or_kill` returns, every worker it was given has
exited (killed if need be, then reaped within a bounded wait); the ones that
had to be killed are returned and marked ``killed``.

Error handling: :func:`judge` turns how the workers that served ended into
the stop's outcome: :class:`~tether.errors.ShutdownAbandoned` names each that
was killed or abandoned work (exit code 4), ``WorkersFailed`` each that
failed; a worker still starting had no work to lose, so its end is no error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from tether.config import RunConfig, ShutdownPlan
from tether.errors import AbandonedWork, ShutdownAbandoned
from tether.master.workers import Worker, WorkersFailed

__all__ = ["judge", "wait_or_kill"]

log = logging.getLogger("tether.master")

#: Seconds to reap a worker after SIGKILL (the kernel ends it; this only bounds the wait).
REAP_WITHIN = 5.0


async def wait_or_kill(
    workers: list[Worker], deadline: float, *, config: RunConfig, hurry: asyncio.Event
) -> list[Worker]:
    """Wait for ``workers`` to exit by ``deadline`` (``time.monotonic()``); kill the rest.

    Returns the workers that had to be killed. Once ``hurry`` is set, the
    deadline is at most that of a stop that ends now (``master_kill`` of
    ``ShutdownPlan.until(config, now)``).
    """
    pending: set[asyncio.Future[Any]] = {w.child.exited for w in workers if w.child.alive}
    hurried = hurry.is_set()
    if hurried:
        deadline = min(deadline, _cut_short(config))
    hurrying = asyncio.ensure_future(hurry.wait())
    try:
        while pending and (left := deadline - time.monotonic()) > 0:
            waiting = pending if hurried else pending | {hurrying}
            done, _ = await asyncio.wait(waiting, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            pending -= done
            if not hurried and hurrying in done:
                hurried = True
                deadline = min(deadline, _cut_short(config))
    finally:
        hurrying.cancel()
    stuck = [w for w in workers if w.child.alive]
    for w in stuck:
        log.error(
            "master %d: %s did not exit within its shutdown budget; killing it",
            os.getpid(),
            w.label,
        )
        w.killed = True
        w.child.kill()
    for w in stuck:
        await w.child.wait(REAP_WITHIN)
    return stuck


def _cut_short(config: RunConfig) -> float:
    """The master's kill deadline of a stop that ends now (a second signal)."""
    return ShutdownPlan.until(config, time.monotonic()).master_kill


def judge(served: list[Worker], stuck: list[Worker]) -> None:
    """The stop's outcome from the workers that served: raise what it lost, or who failed."""
    abandoned = [
        AbandonedWork("worker", w.label, detail="killed at the deadline")
        for w in served
        if w in stuck
    ]
    abandoned += [
        AbandonedWork("worker", w.label, detail="abandoned work at its deadline")
        for w in served
        if w not in stuck and w.child.exited.result() == 4
    ]
    if abandoned:
        raise ShutdownAbandoned(abandoned)
    failed = [
        f"{w.label} {w.child.describe_exit()}"
        for w in served
        if w not in stuck and w.child.exited.result() != 0
    ]
    if failed:
        raise WorkersFailed(failed)
