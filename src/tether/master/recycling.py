"""Recycling a worker (``--max-requests``, ``--max-worker-memory``) as a reload of one slot.

A worker that reached its limit has already stopped taking requests when it
says so (``RECYCLE=1``): what it would take queues in the master's sockets for
its siblings and its successor. A successor starts in its slot at once; once
it is READY it takes the slot, and the old worker drains. So the old worker
serves no more than its limit plus one request per open connection, and no
request fails.

Invariant: the slot is never left without a worker that accepts. A successor
that fails (exits, is not READY within ``--reload-timeout``, is refused by
the OS) is retried with backoff (:func:`tether.master.replacement.delay`),
and the old worker is told to take requests again meanwhile
(:data:`~tether.worker.RESUME_SIGNAL`); a worker due while its generation is
still starting takes requests again and is recycled once the generation
serves (``Pool`` calls :meth:`Recycling.due` again when it promotes it).

Everything here goes through the pool's public face (``holds``,
``new_worker``, ``keep_task``, ``ask_to_stop``): the slots stay the pool's.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

from tether.master.replacement import BACKOFF_FIRST, delay
from tether.master.workers import Generation, Worker, WorkerFailed
from tether.worker import RESUME_SIGNAL

if TYPE_CHECKING:
    from tether.master.pool import Pool

__all__ = ["Recycling"]

log = logging.getLogger("tether.master")


class Recycling:
    """The pool's recycling of workers; counts them (``recycles``)."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._pid = os.getpid()
        #: Workers replaced after their --max-requests or --max-worker-memory.
        self.recycles = 0

    def due(self, w: Worker) -> None:
        """``w`` is due (--max-requests, --max-worker-memory) and has stopped taking requests.

        A successor takes its slot once READY. A successor that asks before it
        has taken over is recycled as soon as it has. When none can be started
        for it now (its generation is still starting), it is told to take
        requests again, and recycled once the generation serves.
        """
        pool = self._pool
        w.recycle_due = True
        if pool.stopping or w.asked_to_stop or not w.child.alive or w.recycling:
            return  # it is stopping anyway, or its successor is on the way
        gen = pool.generations.get(w.generation)
        if gen is None:
            return
        if pool.holds(gen, w):
            w.recycling = True
            pool.keep_task(gen, w.slot, self._recycle(gen, w))
        elif gen.successors.get(w.slot) is not w:
            self._resume(w, f"generation {gen.number} is {gen.state}")

    def _resume(self, w: Worker, why: str) -> None:
        """A worker waiting for its successor takes requests again: none is coming yet."""
        if w.child.alive and not w.asked_to_stop:
            log.warning("master %d: %s takes requests again: %s", self._pid, w.label, why)
            w.child.signal(RESUME_SIGNAL)

    async def _recycle(self, gen: Generation, old: Worker) -> None:
        """Start ``old``'s successor; when it is READY, it takes the slot and ``old`` drains."""
        pool = self._pool
        attempt = 0
        while pool.holds(gen, old):
            attempt += 1
            if attempt > 1:
                await asyncio.sleep(max(BACKOFF_FIRST, delay(attempt)))
                if not pool.holds(gen, old):
                    return
            try:
                new = pool.new_worker(gen, old.slot, 0)
            except OSError as exc:
                log.error(  # noqa: TRY400 - the OS error says it all
                    "master %d: cannot start a successor for %s: %s; it serves on",
                    self._pid,
                    old.label,
                    exc,
                )
                self._resume(old, "no successor could be started")
                continue
            log.info("master %d: %s recycles; started %s", self._pid, old.label, new.label)
            gen.successors[old.slot] = new
            try:
                async with asyncio.timeout(pool.config.reload_timeout):
                    await new.until_ready()
            except asyncio.CancelledError:
                gen.retired.append(new)  # the master is stopping: it stops with the rest
                raise
            except (TimeoutError, WorkerFailed) as exc:
                log.error(  # noqa: TRY400 - the reason is the whole story
                    "master %d: %s, successor of %s, failed: %s; %s serves on",
                    self._pid,
                    new.label,
                    old.label,
                    exc if isinstance(exc, WorkerFailed) else "not READY in --reload-timeout",
                    old.label,
                )
                new.child.kill()
                self._resume(old, "its successor failed")
                continue
            finally:
                gen.successors.pop(old.slot, None)
            if not pool.holds(gen, old):
                gen.retired.append(new)  # the slot moved on meanwhile (a crash, a reload)
                pool.ask_to_stop(new)
                return
            gen.slots[old.slot] = new
            gen.retired.append(old)
            pool.ask_to_stop(old)
            self.recycles += 1
            pool.hooks.restarted("recycling")
            log.info("master %d: %s took over from %s", self._pid, new.label, old.label)
            pool.hooks.systemd.status(pool.status_line())
            if new.recycle_due:  # it reached its own limit before it took over
                self.due(new)
            return
