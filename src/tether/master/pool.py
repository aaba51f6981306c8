"""The worker pool: generations of workers, their slots, replacement, watchdog and drain.

The note's graceful restart, done so that no request is refused: a reload
starts a whole new generation and waits for every worker of it to be READY
before the old one is asked to drain; a generation that fails to start is
killed and the old one keeps serving.

Invariants:

- at most one generation is not yet ready (tableflip's), and at most two
  exist: the serving one and one starting or draining;
- reloads and upgrades run one at a time, from one queue; reloads queued
  meanwhile are coalesced into one more;
- the first generation is a failed start (``StartupError``) only if no worker
  of it ever became READY; once one serves, a failing sibling is a crash to
  replace;
- a worker that dies while its generation serves is replaced in its slot: at
  once if it had served, with backoff if it died before READY or right
  after it (a broken app); a spawn the OS refuses is retried the same way;
- a worker due for recycling (``--max-requests``, ``--max-worker-memory``)
  has stopped taking requests; its successor starts at once, and it drains
  once the successor is READY; if no successor can start, it is told to take
  requests again (:data:`~tether.worker.RESUME_SIGNAL`) until one does;
- a READY worker whose event loop sends no heartbeat for
  ``--watchdog-timeout`` is asked for its stacks and killed (:mod:`.watchdog`);
- every wait on a worker's exit is bounded, then SIGKILL.

Everything that touches the OS to start a worker goes through one seam, the
``spawn`` callable, so the pool's logic is tested with fake children. What
happens to workers is told through :class:`PoolHooks`: every exit, each
restart with its cause (crash, watchdog), each reload's outcome (the master's
``/metrics`` counts them and keeps the final counts of workers that exit).

Why this module is long: Pool is one state machine of generations and slots, and its
invariants hold across start, reload, replacement, recycling and drain, which all move
workers between the same slots; split, one invariant would be spread over files. The
recycling path is the candidate to move out.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from tether import signals
from tether._children import Child
from tether.config import RunConfig, ShutdownBudget
from tether.errors import AbandonedWork, ShutdownAbandoned, StartupError
from tether.master.priority import Priority, StartingPriority, set_priority
from tether.master.support import SystemdLink
from tether.master.watchdog import Watchdog
from tether.master.workers import Generation, Worker, WorkerFailed, WorkersFailed
from tether.notify import NotifyMessage
from tether.worker import RESUME_SIGNAL, WorkerReport

__all__ = ["Pool", "PoolHooks", "Spawn"]

log = logging.getLogger("tether.master")

#: What the master sends a worker to drain, to skip to cancelling, to log its stacks.
_STOP = signals.signum_for("worker", "stop")
_FAST_STOP = signals.signum_for("worker", "fast_stop")
_DUMP = signals.signum_for("worker", "dump")

#: Seconds a worker asked for its stacks (USR1) gets to write them before it is killed.
STACKS_GRACE = 2.0

#: Start a worker: (worker id, generation number) -> its child and private debug socket path.
#: Raises OSError when the OS refuses (EMFILE, EAGAIN, ENOMEM).
Spawn = Callable[[int, int], tuple[Child, str | None]]

#: Backoff between restarts of a slot whose workers keep failing: first at once, then doubling.
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
#: A worker READY this long before it died had served: it is replaced at once.
SERVED_AFTER = 0.5


@dataclass
class PoolHooks:
    """What the pool tells the rest of the master, and asks of it."""

    #: A step of a long operation, for the log and for ``ctl`` clients waiting on it.
    progress: Callable[[str], None] = lambda _message: None
    systemd: SystemdLink = field(default_factory=lambda: SystemdLink(None))
    #: Notifications already sent and not yet read (read before judging a worker).
    pending: Callable[[], list[NotifyMessage]] = list
    #: Runs an upgrade of the master (USR2); the outcome for ``ctl upgrade``.
    upgrade: Callable[[], Awaitable[dict[str, Any]]] | None = None
    #: Sets the CPU priority of every thread of a pid (a fake pool has none).
    prioritise: Callable[[int, Priority], None] = lambda pid, level: set_priority(pid, level)
    #: A worker's process ended, whatever the cause (its metrics are kept).
    exited: Callable[[Worker], None] = lambda _w: None
    #: A worker of the serving generation is replaced: ``crash``, ``watchdog`` or
    #: ``recycling`` (it served its --max-requests).
    restarted: Callable[[str], None] = lambda _cause: None
    #: A reload finished, with its outcome (the one ``tether ctl reload`` gets).
    reloaded: Callable[[dict[str, Any]], None] = lambda _outcome: None
    #: A reload begins (gunicorn's on_reload hook).
    reloading: Callable[[], None] = lambda: None
    #: The number of workers changes: (new, old) (gunicorn's nworkers_changed hook).
    resized: Callable[[int, int], None] = lambda _new, _old: None


RequestKind = Literal["reload", "upgrade", "scale"]
Request = tuple[RequestKind, "asyncio.Future[dict[str, Any]]"]


class Pool:
    """The workers of one master. See the module docstring for the invariants."""

    def __init__(self, config: RunConfig, spawn: Spawn, hooks: PoolHooks | None = None) -> None:
        self.config = config
        self.budget = ShutdownBudget.of(config)
        self.size = config.workers
        self.hooks = hooks or PoolHooks()
        self._spawn = spawn
        self.watchdog = Watchdog(config.watchdog_timeout, self._read_pending)
        self._pid = os.getpid()
        self.generations: dict[int, Generation] = {}
        self.active: Generation | None = None
        self.by_pid: dict[int, Worker] = {}
        #: Workers of a reload still starting at a low priority (tether.master.priority).
        self.priority = StartingPriority(lambda pid, level: self.hooks.prioritise(pid, level))
        self._next_generation = 1
        self._next_worker = 1
        self.stopping = False
        self.handed_over = False
        #: A second stop signal: workers were told to skip to cancelling; waits shorten.
        self.hurry = asyncio.Event()
        #: The one queue of reloads, upgrades and resizes; ``_wake`` is set while it is not empty.
        self._requests: collections.deque[Request] = collections.deque()
        self._wake = asyncio.Event()
        self.last_reload: dict[str, Any] | None = None
        self.reloads = 0
        self.reloads_failed = 0
        self.reloading = False
        self.restarts = 0
        #: Workers replaced after their --max-requests.
        self.recycles = 0

    # -- what others ask ----------------------------------------------------------

    def request(self, kind: RequestKind) -> asyncio.Future[dict[str, Any]]:
        """Queue a reload, an upgrade or a resize; the future gets the outcome."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if self.stopping:
            fut.set_result({"ok": False, "error": "the master is stopping"})
            return fut
        if kind == "reload" and self.reload_queued:
            log.info("master %d: reload already queued; coalesced", self._pid)
        elif kind != "scale":
            log.info("master %d: %s requested", self._pid, kind)
        self._requests.append((kind, fut))
        self._wake.set()
        return fut

    def scale(self, n: int) -> None:
        """Run ``n`` workers per generation from now on (applied between reloads)."""
        log.info("master %d: scaling from %d to %d worker(s)", self._pid, self.size, n)
        old, self.size = self.size, n
        self.hooks.resized(n, old)
        self.request("scale")

    @property
    def reload_queued(self) -> bool:
        return any(kind == "reload" for kind, _ in self._requests)

    def live_workers(self) -> list[Worker]:
        return [w for g in self.generations.values() for w in g.workers()]

    def is_ready(self) -> bool:
        return not self.stopping and self.active is not None and self.active.ready_count() > 0

    def status_line(self) -> str:
        gen = self.active
        if gen is None:
            return "starting"
        return f"generation {gen.number} serving with {gen.ready_count()} worker(s)"

    # -- the life of the pool -----------------------------------------------------

    async def start(self) -> None:
        """Start the first generation; StartupError if no worker of it becomes READY."""
        try:
            gen = await self._start_generation(first=True)
        except WorkerFailed as exc:
            # The worker's own error is on the same stderr, just above: say it once.
            msg = f"the app failed to start: {exc}"
            raise StartupError(msg) from None
        self._promote(gen)

    async def serve(self) -> None:
        """Run queued reloads, upgrades and resizes one at a time until cancelled or handed over."""
        while not self.handed_over:
            await self._wake.wait()
            batch = self._take_all()
            try:
                await self._run_batch(batch)
            finally:  # cancelled by a stop: nobody is left waiting for an answer
                _resolve([f for _, f in batch], {"ok": False, "error": "the master is stopping"})

    async def _run_batch(self, batch: list[Request]) -> None:
        """One turn of the queue: upgrades first, then one reload for every reload asked."""
        upgrades = [f for k, f in batch if k == "upgrade"]
        reloads = [f for k, f in batch if k == "reload"]
        if upgrades:
            outcome = await self._upgrade()
            _resolve(upgrades, outcome)
            if self.handed_over:
                _resolve(reloads, {"ok": False, "error": "the master was upgraded"})
                return
        if reloads:
            self.hooks.reloading()
            self.reloading = True
            try:
                outcome = await self._reload()
            finally:
                self.reloading = False
            _resolve(reloads, outcome)
        _resolve([f for k, f in batch if k == "scale"], {"ok": True})
        self._reconcile_size()

    async def _upgrade(self) -> dict[str, Any]:
        if self.hooks.upgrade is None:
            return {"ok": False, "error": "this master cannot be upgraded"}
        return await self.hooks.upgrade()

    def _take_all(self) -> list[Request]:
        taken = list(self._requests)
        self._requests.clear()
        self._wake.clear()
        return taken

    def begin_stop(self) -> None:
        """No more reloads or replacements; whatever is queued is answered."""
        self.stopping = True
        for gen in self.generations.values():
            for task in gen.replacing.values():
                task.cancel()
        stopping = {"ok": False, "error": "the master is stopping"}
        _resolve([f for _, f in self._take_all()], stopping)

    async def stop_workers(self, *, fast: bool, kill_at: float | None = None) -> None:
        """Ask every worker to stop (TERM, or QUIT when ``fast``) and wait within the budget.

        ``kill_at`` (``time.monotonic()``): the stop plan's ``master_kill``, when
        a plan made earlier bounds this stop; otherwise the budget starts now.

        Raises ShutdownAbandoned if a worker that served abandoned work or had
        to be killed, WorkersFailed if one exited with an error; a worker still
        starting had no work to lose (TERM during its import is not a failure),
        so it is killed after the short bound (``master_kill``), not the budget.
        """
        self.begin_stop()
        self._read_pending()  # a READY already sent: that worker serves, and drains
        workers = self.live_workers()
        for w in workers:
            self._ask_to_stop(w, _FAST_STOP if fast else _STOP)
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + self.budget.master_kill if fast else self.budget.deadline(now)
        if not fast:
            deadline += self.budget.master_kill
            if kill_at is not None:
                deadline = min(deadline, now + max(0.0, kill_at - time.monotonic()))
        served = [w for w in workers if w.ready_at is not None]
        # A worker still starting has nothing to drain: it gets the short bound.
        starting = [w for w in workers if w.ready_at is None]
        stuck_served, stuck_starting = await asyncio.gather(
            self._wait_or_kill(served, deadline),
            self._wait_or_kill(starting, min(deadline, now + self.budget.master_kill)),
        )
        stuck = stuck_served + stuck_starting
        log.info("master %d: stopped (%d worker(s) drained)", self._pid, len(workers))
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

    def escalate(self) -> None:
        """A second stop signal: workers skip to cancelling (QUIT), waits shorten."""
        self.hurry.set()
        for w in self.live_workers():
            if w.asked_to_stop:
                w.child.signal(_FAST_STOP)

    async def close(self) -> None:
        """Kill every worker still alive (bounded), and stop watching them."""
        for gen in self.generations.values():
            for task in gen.replacing.values():
                task.cancel()
        leftovers = self.live_workers()
        for w in leftovers:
            w.child.kill()
        for w in leftovers:
            await w.child.wait(5)
        for gen in self.generations.values():
            for w in [*gen.slots.values(), *gen.retired]:
                w.child.close()

    # -- generations --------------------------------------------------------------

    def _promote(self, gen: Generation) -> None:
        gen.state = "serving"
        self.active = gen
        for w in list(gen.slots.values()):
            if w.recycle_due:  # it asked while its generation was starting
                self._on_recycle(w)

    async def _start_generation(self, *, first: bool = False) -> Generation:
        """Start a generation and wait until every worker is READY; WorkerFailed if not.

        The first generation is different once one of its workers is READY:
        the service is up, so a sibling that fails is a crash to replace (with
        backoff), not a failed start that takes the serving worker down.
        """
        number = self._next_generation
        self._next_generation += 1
        gen = Generation(number, self.size)
        self.generations[number] = gen
        timeout = self.config.reload_timeout
        failure: WorkerFailed | None = None
        try:
            for slot in range(gen.size):
                try:
                    self._spawn_worker(gen, slot)
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
            self.priority.restore(laggard.pid)
            laggard.child.signal(_DUMP)  # ask for its stacks before it goes
            # Give it a moment (the reload has failed already; the old code serves).
            await laggard.child.wait(STACKS_GRACE)
            failure = WorkerFailed(laggard, f"was not READY within --reload-timeout {timeout:g}s")
        except ExceptionGroup as group:
            first_error = group.exceptions[0]
            if not isinstance(first_error, WorkerFailed):
                await self._discard(gen)
                raise
            failure = first_error
        except WorkerFailed as exc:
            failure = exc
        except asyncio.CancelledError:
            # A stop while the generation starts. A READY worker is serving (its
            # sockets are the service's): it holds requests and background work, so it
            # drains with every other worker (stop_workers), as do those still starting.
            if gen.ready_count() == 0:
                await asyncio.shield(self._discard(gen))
            raise
        except BaseException:
            await asyncio.shield(self._discard(gen))
            raise
        if failure is None:
            return gen
        if first and gen.ready_count() > 0:
            self._serve_partly(gen, failure)
            return gen
        await self._discard(gen)
        raise failure

    def _serve_partly(self, gen: Generation, failure: WorkerFailed) -> None:
        """The first generation serves with the workers that are READY; the rest are replaced."""
        log.warning(
            "master %d: %s; generation %d serves with %d of %d worker(s) and replaces the rest",
            self._pid,
            failure,
            gen.number,
            gen.ready_count(),
            gen.size,
        )
        self._promote(gen)
        for w in list(gen.slots.values()):
            if w.state == "ready":
                continue
            if not w.child.alive:
                self._replace_later(gen, w, w.child.describe_exit())
            elif w is failure.worker:
                w.child.kill()  # not READY in time: its exit replaces it
            else:
                self._keep_task(gen, w.slot, self._watch_start(w))

    async def _reload(self) -> dict[str, Any]:
        old = self.active
        assert old is not None
        self.reloads += 1
        began = time.monotonic()
        self.hooks.progress(
            f"reload: starting generation {self._next_generation} ({self.size} worker(s))"
        )
        self.hooks.systemd.reloading(f"reloading: starting generation {self._next_generation}")
        failure: WorkerFailed | None = None
        try:
            gen = await self._start_generation()
        except WorkerFailed as exc:
            failure = exc
        if failure is not None:
            self.reloads_failed += 1
            log.error(
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
            self._promote(gen)
            ready_after = time.monotonic() - began
            self.hooks.progress(
                f"generation {gen.number} ready in {ready_after:.2f}s; "
                f"draining generation {old.number}"
            )
            self.hooks.systemd.ready(self.status_line())
            await self._drain(old, f"replaced by generation {gen.number}")
            took = time.monotonic() - began
            self.hooks.progress(f"generation {old.number} exited; reload done in {took:.2f}s")
            outcome = {
                "ok": True,
                "generation": gen.number,
                "ready_after": round(ready_after, 3),
                "seconds": round(took, 3),
            }
        self.hooks.systemd.ready(self.status_line())
        outcome["finished_at"] = time.time()
        self.last_reload = outcome
        self.hooks.reloaded(outcome)
        return outcome

    async def _drain(self, gen: Generation, why: str) -> None:
        """Ask a generation to drain (TERM), wait within the shutdown budget, then kill."""
        gen.state = "draining"
        for task in gen.replacing.values():
            task.cancel()
        workers = gen.workers()
        for w in workers:
            self._ask_to_stop(w, _STOP)
        log.info("master %d: generation %d draining (%s)", self._pid, gen.number, why)
        now = asyncio.get_running_loop().time()
        await self._wait_or_kill(workers, self.budget.deadline(now) + self.budget.master_kill)
        gen.state = "exited"
        self._forget(gen)

    async def _discard(self, gen: Generation) -> None:
        """Kill a generation that did not make it (bounded wait)."""
        gen.state = "failed"
        workers = gen.workers()
        for w in workers:
            w.asked_to_stop = True
            w.child.kill()
        for w in workers:
            await w.child.wait(5)
        gen.state = "exited"

    def _forget(self, gen: Generation) -> None:
        for w in [*gen.slots.values(), *gen.retired]:
            if not w.child.alive:
                self.by_pid.pop(w.pid, None)
                w.child.close()
        if gen is not self.active:
            self.generations.pop(gen.number, None)

    # -- single workers -----------------------------------------------------------

    def _spawn_worker(self, gen: Generation, slot: int, restarts: int = 0) -> Worker:
        """Start a worker in ``slot``; raises OSError if the OS refuses (EMFILE, EAGAIN...)."""
        w = self._start_worker(gen, slot, restarts)
        old = gen.slots.get(slot)
        if old is not None and old.child.alive:
            gen.retired.append(old)
        elif old is not None:
            self.by_pid.pop(old.pid, None)
            old.child.close()
        gen.slots[slot] = w
        log.info("master %d: started %s in slot %d", self._pid, w.label, slot)
        return w

    def _start_worker(self, gen: Generation, slot: int, restarts: int) -> Worker:
        """A new worker for ``slot``, known by pid, not yet in the slot."""
        wid = self._next_worker
        self._next_worker += 1
        child, debug_path = self._spawn(wid, gen.number)
        if self.active is not None and self.active is not gen:  # a reload: serving workers first
            self.priority.start_low(child.pid)
        w = Worker(wid, gen.number, slot, child, debug_path, restarts=restarts)
        self.by_pid[w.pid] = w
        child.exited.add_done_callback(lambda _: self._on_worker_exit(w))
        return w

    # -- recycling (--max-requests) -----------------------------------------------

    def _on_recycle(self, w: Worker) -> None:
        """``w`` is due (--max-requests, --max-worker-memory) and has stopped taking requests.

        A successor takes its slot once READY. A successor that asks before it
        has taken over is recycled as soon as it has. When none can be started
        for it now (its generation is still starting), it is told to take
        requests again, and recycled once the generation serves.
        """
        w.recycle_due = True
        if self.stopping or w.asked_to_stop or not w.child.alive or w.recycling:
            return  # it is stopping anyway, or its successor is on the way
        gen = self.generations.get(w.generation)
        if gen is None:
            return
        if self._holds(gen, w):
            w.recycling = True
            self._keep_task(gen, w.slot, self._recycle(gen, w))
        elif gen.successors.get(w.slot) is not w:
            self._resume(w, f"generation {gen.number} is {gen.state}")

    def _resume(self, w: Worker, why: str) -> None:
        """A worker waiting for its successor takes requests again: none is coming yet."""
        if w.child.alive and not w.asked_to_stop:
            log.warning("master %d: %s takes requests again: %s", self._pid, w.label, why)
            w.child.signal(RESUME_SIGNAL)

    async def _recycle(self, gen: Generation, old: Worker) -> None:
        """Start ``old``'s successor; when it is READY, it takes the slot and ``old`` drains.

        ``old`` stopped taking requests when it asked (what it would take queues
        in the master's sockets for its siblings and the successor), so it
        serves no more than its limit plus one request per open connection. A
        successor that fails (exits, not READY in --reload-timeout, refused by
        the OS) is retried with backoff, and ``old`` takes requests again
        meanwhile (RESUME_SIGNAL): the slot is never left without a worker that
        accepts.
        """
        attempt = 0
        while self._holds(gen, old):
            attempt += 1
            if attempt > 1:
                await asyncio.sleep(max(BACKOFF_FIRST, _delay(attempt)))
                if not self._holds(gen, old):
                    return
            try:
                new = self._start_worker(gen, old.slot, 0)
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
                async with asyncio.timeout(self.config.reload_timeout):
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
            if not self._holds(gen, old):
                gen.retired.append(new)  # the slot moved on meanwhile (a crash, a reload)
                self._ask_to_stop(new, _STOP)
                return
            gen.slots[old.slot] = new
            gen.retired.append(old)
            self._ask_to_stop(old, _STOP)
            self.recycles += 1
            self.hooks.restarted("recycling")
            log.info("master %d: %s took over from %s", self._pid, new.label, old.label)
            self.hooks.systemd.status(self.status_line())
            if new.recycle_due:  # it reached its own limit before it took over
                self._on_recycle(new)
            return

    def _holds(self, gen: Generation, w: Worker) -> bool:
        """Whether ``w`` is still the serving worker of its slot in the serving generation."""
        return (
            not self.stopping
            and gen is self.active
            and gen.state == "serving"
            and gen.slots.get(w.slot) is w
            and w.child.alive
        )

    def _ask_to_stop(self, w: Worker, sig: int) -> None:
        if w.child.alive and not w.asked_to_stop:
            w.asked_to_stop = True
            w.state = "stopping"
            self.watchdog.cancel(w)
            w.child.signal(sig)

    async def _wait_or_kill(self, workers: list[Worker], deadline: float) -> list[Worker]:
        """Wait for ``workers`` to exit by ``deadline`` (loop time); kill and return the rest.

        A second stop signal (``hurry``) brings the deadline to the cancel budget:
        the workers were told to skip to cancelling.
        """
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Future[Any]] = {w.child.exited for w in workers if w.child.alive}
        hurried = self.hurry.is_set()
        if hurried:
            deadline = min(deadline, loop.time() + self.budget.master_kill)
        hurry = asyncio.ensure_future(self.hurry.wait())
        try:
            while pending and (remaining := deadline - loop.time()) > 0:
                waiting = pending if hurried else pending | {hurry}
                done, _ = await asyncio.wait(
                    waiting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                pending -= done
                if not hurried and hurry in done:
                    hurried = True
                    deadline = min(deadline, loop.time() + self.budget.master_kill)
        finally:
            hurry.cancel()
        stuck = [w for w in workers if w.child.alive]
        for w in stuck:
            log.error(
                "master %d: %s did not exit within its shutdown budget; killing it",
                self._pid,
                w.label,
            )
            w.killed = True
            w.child.kill()
        for w in stuck:
            await w.child.wait(5)
        return stuck

    def _on_worker_exit(self, w: Worker) -> None:
        self.priority.forget(w.pid)  # gone: nothing to raise any more
        self._read_pending()  # its last STATUS (why it failed) may still be in the socket
        w.state = "exited"
        self.watchdog.cancel(w)
        self.hooks.exited(w)
        gen = self.generations.get(w.generation)
        if w.asked_to_stop or self.stopping or gen is None:
            # A generation that failed to start is discarded: its failure is the story.
            level = logging.DEBUG if gen is not None and gen.state == "failed" else logging.INFO
            log.log(level, "master %d: %s %s", self._pid, w.label, w.child.describe_exit())
            return
        if gen.state != "serving" or gen is not self.active or gen.slots.get(w.slot) is not w:
            if gen.state != "starting":
                log.info("master %d: %s %s", self._pid, w.label, w.child.describe_exit())
            return
        self._replace_later(gen, w, w.child.describe_exit())

    def backoff(self, gen: Generation, w: Worker) -> tuple[float, int]:
        """The delay before ``w``'s slot is filled again, and its failures in a row.

        A worker that served for a while is replaced at once: a request that
        kills workers (a query of death) must not grow a delay that empties the
        service. Only workers that die before READY, or right after it, count
        as failures of the slot and back off: that is a broken app or deploy.
        """
        served = w.ready_at is not None and time.monotonic() - w.ready_at >= SERVED_AFTER
        failures = 0 if served else gen.failures.get(w.slot, 0) + 1
        gen.failures[w.slot] = failures
        return _delay(failures), failures

    def _replace_later(self, gen: Generation, w: Worker, what: str) -> None:
        """Schedule a replacement for ``w``, which left its slot of the serving generation."""
        delay, failures = self.backoff(gen, w)
        log.warning(
            "master %d: %s %s %s; replacing it%s",
            self._pid,
            w.label,
            what,
            "while serving" if w.ready_at is not None else "before it was ready",
            f" in {delay:.1f}s (failure {failures} in a row)" if delay else "",
        )
        self.restarts += 1
        self.hooks.restarted("watchdog" if w.watchdog_killed else "crash")
        self._keep_task(gen, w.slot, self._replace(gen, w.slot, delay, w.restarts + 1))
        self.hooks.systemd.status(self.status_line())

    def _keep_task(self, gen: Generation, slot: int, coro: Any) -> None:
        """Run ``coro`` for ``slot``; the generation holds it (cancelled when it drains)."""
        task = asyncio.get_running_loop().create_task(coro, name=f"master:slot-{slot}")
        gen.replacing[slot] = task
        task.add_done_callback(
            lambda t: gen.replacing.pop(slot, None) if gen.replacing.get(slot) is t else None
        )

    async def _replace(self, gen: Generation, slot: int, delay: float, restarts: int) -> None:
        if delay:
            await asyncio.sleep(delay)
        if self.stopping or gen is not self.active or gen.state != "serving":
            return
        try:
            w = self._spawn_worker(gen, slot, restarts)
        except OSError as exc:
            # The OS refused (EMFILE, EAGAIN, ENOMEM): the slot stays empty for now, not for good.
            failures = gen.failures.get(slot, 0) + 1
            gen.failures[slot] = failures
            retry = max(BACKOFF_FIRST, _delay(failures))
            log.error(  # noqa: TRY400 - the OS error says it all
                "master %d: cannot start a worker in slot %d: %s; retrying in %.1fs",
                self._pid,
                slot,
                exc,
                retry,
            )
            gen.replacing.pop(slot, None)
            self._keep_task(gen, slot, self._replace(gen, slot, retry, restarts))
            return
        await self._watch_start(w)

    async def _watch_start(self, w: Worker) -> None:
        """Kill a worker that is not READY within --reload-timeout (its exit replaces it)."""
        timed_out = False
        try:
            async with asyncio.timeout(self.config.reload_timeout):
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

    def _reconcile_size(self) -> None:
        gen = self.active
        if gen is None or self.stopping:
            return
        gen.size = self.size
        for slot in range(self.size):
            if slot not in gen.slots:
                self._keep_task(gen, slot, self._replace(gen, slot, 0.0, 0))
        for slot in sorted(gen.slots, reverse=True):
            if slot >= self.size:
                w = gen.slots.pop(slot)
                gen.retired.append(w)
                task = gen.replacing.pop(slot, None)
                if task is not None:
                    task.cancel()
                self._ask_to_stop(w, _STOP)

    # -- notifications and the watchdog --------------------------------------------

    def on_notification(self, message: NotifyMessage) -> None:
        """A worker said something (READY, WATCHDOG, STATUS)."""
        w = self.by_pid.get(message.pid)
        if w is None:
            log.debug("notification from unknown pid %d ignored: %r", message.pid, message.fields)
            return
        report = WorkerReport.parse(message.fields)
        if report.status is not None:
            w.status = report.status
        if report.ready and not w.ready.is_set():
            self.priority.restore(w.pid)
            w.mark_ready()
            took = time.monotonic() - w.started_at
            gen = self.generations.get(w.generation)
            if gen is not None and gen.state == "starting":
                self.hooks.progress(
                    f"{w.label} ready in {took:.2f}s ({gen.ready_count()}/{gen.size})"
                )
            else:
                log.info("master %d: %s ready in %.2fs", self._pid, w.label, took)
                self.hooks.systemd.status(self.status_line())
            self.watchdog.beat(w)
        if report.recycle:
            self._on_recycle(w)
        if report.heartbeat and w.state == "ready":
            w.last_heartbeat = time.monotonic()
            self.watchdog.beat(w)

    def _read_pending(self) -> None:
        """Act on every notification already sent, before judging a worker by what it said."""
        for message in self.hooks.pending():
            self.on_notification(message)


def _delay(failures: int) -> float:
    """0 for the first failure in a row, then 0.5 s doubling up to 30 s."""
    return 0.0 if failures <= 1 else min(BACKOFF_FIRST * 2 ** (failures - 2), BACKOFF_MAX)


def _check_alive(gen: Generation) -> None:
    """A worker that exited between its READY and the generation's is a failed start."""
    for w in gen.slots.values():
        if not w.child.alive:
            raise WorkerFailed(w, w.child.describe_exit() + " right after READY")


def _resolve(futures: list[asyncio.Future[dict[str, Any]]], outcome: dict[str, Any]) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_result(outcome)
