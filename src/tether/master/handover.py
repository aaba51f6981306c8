"""Starting a generation, and a reload: the new generation READY before the serving one drains.

The note's graceful restart, done so that no request is refused: the new
generation starts beside the serving one (at a low CPU priority,
:mod:`.priority`), and only once every worker of it has said READY is it
promoted and the old one asked to drain, by the plan of a stop that begins
then (:mod:`.drain`). A generation that fails to start (a worker exits
before READY, is not READY within ``--reload-timeout``, is refused by the
OS) is killed, and the old one keeps serving.

Starting a generation (the first, or a reload's) waits until every worker of
it is READY; a worker not READY within ``--reload-timeout`` is asked for its
stacks first (it gets its normal priority back to write them). The first
generation is a failed start (``StartupError``) only if no worker of it ever
became READY: once one serves, a failing sibling is a crash to replace
(:mod:`.replacement`), not a failed start that takes the serving worker down.

Invariant: at every moment after the first READY some generation serves; the old one is told to
drain only after the new one is promoted. Every reload ends with an outcome
(``ok``, the generation that serves, how long it took or why it failed),
kept as ``last`` and told to ``PoolHooks.reloaded`` (``tether ctl reload``,
``/metrics``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from tether import signals
from tether.master.workers import Generation, WorkerFailed

if TYPE_CHECKING:
    from tether.master.pool import Pool

__all__ = ["Reloads", "start_generation"]

log = logging.getLogger("tether.master")

#: What the master sends a worker to log its stacks.
_DUMP = signals.signum_for("worker", "dump")
#: Seconds a worker asked for its stacks (USR1) gets to write them before it is killed.
STACKS_GRACE = 2.0


class Reloads:
    """The pool's reloads, and their counts."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._pid = os.getpid()
        self.count = 0
        self.failed = 0
        #: The last reload's outcome (None before the first).
        self.last: dict[str, Any] | None = None

    async def run(self) -> dict[str, Any]:
        """Start a new generation; once it is READY, drain the serving one; the outcome."""
        pool = self._pool
        old = pool.active
        assert old is not None
        self.count += 1
        began = time.monotonic()
        number = pool.next_generation
        pool.hooks.progress(f"reload: starting generation {number} ({pool.size} worker(s))")
        pool.hooks.systemd.reloading(f"reloading: starting generation {number}")
        try:
            gen = await pool.start_generation()
        except WorkerFailed as failure:
            self.failed += 1
            log.error(  # noqa: TRY400 - the worker's reason is the whole story
                "master %d: reload failed: %s; generation %d keeps serving",
                self._pid,
                failure.with_cause(),
                old.number,
            )
            outcome: dict[str, Any] = {
                "ok": False,
                "error": failure.with_cause(),
                "generation": old.number,
            }
        else:
            pool.promote(gen)
            ready_after = time.monotonic() - began
            pool.hooks.progress(
                f"generation {gen.number} ready in {ready_after:.2f}s; "
                f"draining generation {old.number}"
            )
            pool.hooks.systemd.ready(pool.status_line())
            await pool.drain(old, f"replaced by generation {gen.number}")
            took = time.monotonic() - began
            pool.hooks.progress(f"generation {old.number} exited; reload done in {took:.2f}s")
            outcome = {
                "ok": True,
                "generation": gen.number,
                "ready_after": round(ready_after, 3),
                "seconds": round(took, 3),
            }
        pool.hooks.systemd.ready(pool.status_line())
        outcome["finished_at"] = time.time()
        self.last = outcome
        pool.hooks.reloaded(outcome)
        return outcome


async def start_generation(pool: Pool, *, first: bool = False) -> Generation:
    """Start a generation and wait until every worker is READY; WorkerFailed if not.

    The first generation is different once one of its workers is READY:
    the service is up, so a sibling that fails is a crash to replace (with
    backoff), not a failed start that takes the serving worker down.
    """
    gen = pool.open_generation()
    timeout = pool.config.reload_timeout
    failure: WorkerFailed | None = None
    try:
        for slot in range(gen.size):
            try:
                pool.spawn_worker(gen, slot)
            except OSError as exc:
                raise WorkerFailed(None, f"could not be started: {exc}") from None
        async with asyncio.timeout(timeout):
            async with asyncio.TaskGroup() as tg:
                for w in gen.slots.values():
                    tg.create_task(w.until_ready())
        _check_alive(gen)
    except TimeoutError:
        laggard = next(w for w in gen.slots.values() if not w.ready.is_set())
        # Its task dump is written from its event loop: a worker still at a starting
        # priority on a busy host would not get the CPU to write it before it is killed.
        pool.priority.restore(laggard.pid)
        laggard.child.signal(_DUMP)  # ask for its stacks before it goes
        # Give it a moment (the reload has failed already; the old code serves).
        await laggard.child.wait(STACKS_GRACE)
        failure = WorkerFailed(laggard, f"was not READY within --reload-timeout {timeout:g}s")
    except ExceptionGroup as group:
        first_error = group.exceptions[0]
        if not isinstance(first_error, WorkerFailed):
            await pool.discard(gen)
            raise
        failure = first_error
    except WorkerFailed as exc:
        failure = exc
    except asyncio.CancelledError:
        # A stop while the generation starts. A READY worker is serving (its
        # sockets are the service's): it holds requests and background work, so it
        # drains with every other worker (stop_workers), as do those still starting.
        if gen.ready_count() == 0:
            await asyncio.shield(pool.discard(gen))
        raise
    except BaseException:
        await asyncio.shield(pool.discard(gen))
        raise
    if failure is None:
        return gen
    if first and gen.ready_count() > 0:
        _serve_partly(pool, gen, failure)
        return gen
    await pool.discard(gen)
    raise failure


def _serve_partly(pool: Pool, gen: Generation, failure: WorkerFailed) -> None:
    """The first generation serves with the workers that are READY; the rest are replaced."""
    log.warning(
        "master %d: %s; generation %d serves with %d of %d worker(s) and replaces the rest",
        os.getpid(),
        failure,
        gen.number,
        gen.ready_count(),
        gen.size,
    )
    pool.promote(gen)
    for w in list(gen.slots.values()):
        if w.state == "ready":
            continue
        if not w.child.alive:
            pool.replacements.replace_later(gen, w, w.child.describe_exit())
        elif w is failure.worker:
            w.child.kill()  # not READY in time: its exit replaces it
        else:
            pool.replacements.watch(gen, w)


def _check_alive(gen: Generation) -> None:
    """A worker that exited between its READY and the generation's is a failed start."""
    for w in gen.slots.values():
        if not w.child.alive:
            raise WorkerFailed(w, w.child.describe_exit() + " right after READY")
