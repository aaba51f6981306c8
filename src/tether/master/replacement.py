"""Replacing a worker that left its slot of the serving generation: at once, or with backoff.

A worker that dies while its generation serves (a crash, a kill by the
watchdog), or a slot left empty (scaling up, a spawn the OS refused), gets a
new worker in the same slot. The policy is about what the death says:

- a worker that had served for :data:`SERVED_AFTER` seconds is replaced at
  once: a request that kills workers (a query of death) must not grow a delay
  that empties the service;
- a worker that died before READY, or right after it, counts as a failure of
  the slot (a broken app or deploy): the next start waits :func:`delay`, 0 for
  the first failure in a row, then 0.5 s doubling up to 30 s;
- a spawn the OS refuses (EMFILE, EAGAIN, ENOMEM) is retried the same way:
  the slot stays empty for now, not for good;
- a replacement not READY within ``--reload-timeout`` is killed, and its exit
  schedules the next attempt.

Invariant: a replacement only ever starts for a slot of the serving
generation while the pool is not stopping; the task that starts it is held
by the generation (``Pool.keep_task``), so draining or stopping cancels it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING

from tether.master.workers import Generation, Worker, WorkerFailed

if TYPE_CHECKING:
    from tether.master.pool import Pool

__all__ = ["BACKOFF_FIRST", "BACKOFF_MAX", "SERVED_AFTER", "Replacements", "delay"]

log = logging.getLogger("tether.master")

#: Backoff between restarts of a slot whose workers keep failing: first at once, then doubling.
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
#: A worker READY this long before it died had served: it is replaced at once.
SERVED_AFTER = 0.5


def delay(failures: int) -> float:
    """0 for the first failure in a row, then 0.5 s doubling up to 30 s."""
    return 0.0 if failures <= 1 else min(BACKOFF_FIRST * 2 ** (failures - 2), BACKOFF_MAX)


class Replacements:
    """The pool's replacements of workers; counts them (``restarts``)."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._pid = os.getpid()
        #: Workers of the serving generation replaced after a crash or a watchdog kill.
        self.restarts = 0

    def backoff(self, gen: Generation, w: Worker) -> tuple[float, int]:
        """The delay before ``w``'s slot is filled again, and its failures in a row.

        Only workers that die before READY, or right after it, count as
        failures of the slot and back off (see the module docstring).
        """
        served = w.ready_at is not None and time.monotonic() - w.ready_at >= SERVED_AFTER
        failures = 0 if served else gen.failures.get(w.slot, 0) + 1
        gen.failures[w.slot] = failures
        return delay(failures), failures

    def replace_later(self, gen: Generation, w: Worker, what: str) -> None:
        """Schedule a replacement for ``w``, which left its slot of the serving generation."""
        pool = self._pool
        wait, failures = self.backoff(gen, w)
        log.warning(
            "master %d: %s %s %s; replacing it%s",
            self._pid,
            w.label,
            what,
            "while serving" if w.ready_at is not None else "before it was ready",
            f" in {wait:.1f}s (failure {failures} in a row)" if wait else "",
        )
        self.restarts += 1
        pool.hooks.restarted("watchdog" if w.watchdog_killed else "crash")
        pool.keep_task(gen, w.slot, self._replace(gen, w.slot, wait, w.restarts + 1))
        pool.hooks.systemd.status(pool.status_line())

    def fill(self, gen: Generation, slot: int) -> None:
        """Start a worker in the empty ``slot`` now (the pool grew)."""
        self._pool.keep_task(gen, slot, self._replace(gen, slot, 0.0, 0))

    def watch(self, gen: Generation, w: Worker) -> None:
        """Watch ``w``, still starting in its slot, as a replacement is watched."""
        self._pool.keep_task(gen, w.slot, self.watch_start(w))

    async def _replace(self, gen: Generation, slot: int, wait: float, restarts: int) -> None:
        pool = self._pool
        if wait:
            await asyncio.sleep(wait)
        if pool.stopping or gen is not pool.active or gen.state != "serving":
            return
        try:
            w = pool.spawn_worker(gen, slot, restarts)
        except OSError as exc:
            failures = gen.failures.get(slot, 0) + 1
            gen.failures[slot] = failures
            retry = max(BACKOFF_FIRST, delay(failures))
            log.error(  # noqa: TRY400 - the OS error says it all
                "master %d: cannot start a worker in slot %d: %s; retrying in %.1fs",
                self._pid,
                slot,
                exc,
                retry,
            )
            gen.replacing.pop(slot, None)
            pool.keep_task(gen, slot, self._replace(gen, slot, retry, restarts))
            return
        await self.watch_start(w)

    async def watch_start(self, w: Worker) -> None:
        """Kill a worker that is not READY within --reload-timeout (its exit replaces it)."""
        timed_out = False
        try:
            async with asyncio.timeout(self._pool.config.reload_timeout):
                await w.until_ready()
        except TimeoutError:
            timed_out = True
        except WorkerFailed as exc:
            log.debug("replacement failed: %s", exc)  # its exit schedules the next attempt
        if timed_out:
            log.error(
                "master %d: %s was not READY within --reload-timeout; killing it",
                self._pid,
                w.label,
            )
            w.child.kill()
