"""The master's watchdog over its workers' event loops.

A READY worker sends ``WATCHDOG=1`` from its event loop every half
``--watchdog-timeout``; a worker silent for a whole timeout has a blocked
loop: it is asked for its stacks (USR1, written by faulthandler even while
the loop is stuck) and killed a second later, and its exit replaces it.

Invariant: a worker is judged by its own silence only. Before judging, every
notification already sent is read (the reader task may not have run: the
master was busy); and a timer that fires late means the master itself was
not running (SIGSTOP, swap, a debugger), so the worker gets a whole period
from now instead of being killed for the master's stall.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

from tether import signals
from tether.master.workers import Worker

__all__ = ["MASTER_STALL", "Watchdog"]

log = logging.getLogger("tether.master")

#: A timer that fires this late means the master itself was not running.
MASTER_STALL = 1.0


class Watchdog:
    """One timer per READY worker, re-armed by each heartbeat."""

    def __init__(self, timeout: float, read_pending: Callable[[], None]) -> None:
        self.timeout = timeout
        self._read_pending = read_pending
        self._pid = os.getpid()

    def beat(self, w: Worker) -> None:
        """``w`` is alive: give it a whole period from now."""
        self.cancel(w)
        loop = asyncio.get_running_loop()
        w.watchdog = loop.call_later(self.timeout, self._expired, w)

    def cancel(self, w: Worker) -> None:
        """Stop watching ``w`` (it stops, or exited)."""
        if w.watchdog is not None:
            w.watchdog.cancel()
            w.watchdog = None

    def _expired(self, w: Worker) -> None:
        if not w.child.alive or w.state != "ready" or w.watchdog is None:
            return
        due = w.watchdog.when()
        # Heartbeats may be waiting in the socket: the reader task has not run yet.
        self._read_pending()
        if w.watchdog is None or w.watchdog.when() != due:
            return  # a heartbeat came in and re-armed the timer
        late = asyncio.get_running_loop().time() - due
        if late > MASTER_STALL:
            log.warning(
                "master %d: this master was stalled for %.1fs; not judging %s by it",
                self._pid,
                late,
                w.label,
            )
            self.beat(w)
            return
        log.error(
            "master %d: %s sent no heartbeat for %gs (--watchdog-timeout): its event loop is "
            "blocked; asking it for its stacks (USR1), then killing it",
            self._pid,
            w.label,
            self.timeout,
        )
        w.watchdog_killed = True
        w.child.signal(signals.signum_for("worker", "dump"))
        asyncio.get_running_loop().call_later(1.0, w.child.kill)
