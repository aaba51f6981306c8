"""The worker pool: the generations of workers and their slots; a worker's spawn, READY, exit.

The note's graceful restart, done so that no request is refused: a reload
starts a whole new generation and waits for every worker of it to be READY
before the old one is asked to drain (:mod:`.handover`).

Invariants:

- at most one generation is not yet ready (tableflip's), and at most two
  exist: the serving one and one starting or draining;
- reloads and upgrades run one at a time, from one queue; reloads queued
  meanwhile are coalesced into one more;
- the first generation is a failed start (``StartupError``) only if no worker
  of it ever became READY; once one serves, a failing sibling is a crash to
  replace;
- a worker that dies while its generation serves is replaced in its slot
  (:mod:`.replacement`); one due for recycling is replaced by a successor
  that is READY first (:mod:`.recycling`); a READY worker whose loop sends no
  heartbeat is killed (:mod:`.watchdog`);
- every wait on a worker's exit is bounded, then SIGKILL.

Everything that touches the OS to start a worker goes through one seam, the
``spawn`` callable, so the pool's logic is tested with fake children. What
happens to workers is told through :class:`PoolHooks`: every exit, each
restart with its cause (crash, watchdog), each reload's outcome (the master's
``/metrics`` counts them and keeps the final counts of workers that exit).

The pool owns the generations and their slots; what moves workers between
slots lives beside it and acts through its public face (``holds``,
``new_worker``, ``spawn_worker``, ``keep_task``, ``ask_to_stop``,
``start_generation``, ``promote``, ``drain``, ``reload``, ``reconcile_size``):
:mod:`.handover` (a new generation, READY before the old drains),
:mod:`.operations` (the queue of reloads, upgrades and
resizes), :mod:`.replacement` (a worker that left its slot, with backoff),
:mod:`.recycling` (``--max-requests``, ``--max-worker-memory``),
:mod:`.drain` (waiting for workers by the plan's deadline, then killing),
:mod:`.priority` (a reload's workers start at a low CPU priority) and
:mod:`.watchdog` (a READY worker whose loop stopped beating).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from tether import signals
from tether._children import Child
from tether.config import RunConfig, ShutdownPlan
from tether.errors import StartupError
from tether.master.drain import judge, wait_or_kill
from tether.master.handover import Reloads, start_generation
from tether.master.operations import Operations, RequestKind
from tether.master.priority import Priority, StartingPriority, set_priority
from tether.master.recycling import Recycling
from tether.master.replacement import Replacements
from tether.master.support import SystemdLink
from tether.master.watchdog import Watchdog
from tether.master.workers import Generation, Worker, WorkerFailed
from tether.notify import NotifyMessage
from tether.worker import WorkerReport

__all__ = ["Pool", "PoolHooks", "Spawn"]

log = logging.getLogger("tether.master")

#: What the master sends a worker to drain, and to skip to cancelling.
_STOP = signals.signum_for("worker", "stop")
_FAST_STOP = signals.signum_for("worker", "fast_stop")


#: Start a worker: (worker id, generation number) -> its child and private debug socket path.
#: Raises OSError when the OS refuses (EMFILE, EAGAIN, ENOMEM).
Spawn = Callable[[int, int], tuple[Child, str | None]]


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


class Pool:
    """The workers of one master. See the module docstring for the invariants."""

    def __init__(self, config: RunConfig, spawn: Spawn, hooks: PoolHooks | None = None) -> None:
        self.config = config
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
        #: The one queue of reloads, upgrades and resizes (tether.master.operations).
        self.operations = Operations(self)
        self._reloads = Reloads(self)
        #: Crashed workers replaced (tether.master.replacement); recycled ones (.recycling).
        self.replacements = Replacements(self)
        self.recycling = Recycling(self)

    # -- what others ask ----------------------------------------------------------

    def request(self, kind: RequestKind) -> asyncio.Future[dict[str, Any]]:
        """Queue a reload, an upgrade or a resize; the future gets the outcome."""
        return self.operations.request(kind)

    def scale(self, n: int) -> None:
        """Run ``n`` workers per generation from now on (applied between reloads)."""
        log.info("master %d: scaling from %d to %d worker(s)", self._pid, self.size, n)
        old, self.size = self.size, n
        self.hooks.resized(n, old)
        self.request("scale")

    @property
    def restarts(self) -> int:
        """Workers of the serving generation replaced after a crash or a watchdog kill."""
        return self.replacements.restarts

    @property
    def recycles(self) -> int:
        """Workers replaced after their --max-requests or --max-worker-memory."""
        return self.recycling.recycles

    def backoff(self, gen: Generation, w: Worker) -> tuple[float, int]:
        """The delay before ``w``'s slot is filled again, and its failures in a row."""
        return self.replacements.backoff(gen, w)

    @property
    def reloads(self) -> int:
        return self._reloads.count

    @property
    def reloads_failed(self) -> int:
        return self._reloads.failed

    @property
    def last_reload(self) -> dict[str, Any] | None:
        """The last reload's outcome (None before the first)."""
        return self._reloads.last

    @property
    def next_generation(self) -> int:
        """The number the next generation started will have."""
        return self._next_generation

    @property
    def reload_queued(self) -> bool:
        return self.operations.reload_queued

    @property
    def reloading(self) -> bool:
        """True while a reload runs."""
        return self.operations.reloading

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
            gen = await self.start_generation(first=True)
        except WorkerFailed as exc:
            # The worker's own error is on the same stderr, just above: say it once.
            msg = f"the app failed to start: {exc}"
            raise StartupError(msg) from None
        self.promote(gen)

    async def serve(self) -> None:
        """Run queued reloads, upgrades and resizes one at a time until cancelled or handed over."""
        await self.operations.serve()

    def begin_stop(self) -> None:
        """No more reloads or replacements; whatever is queued is answered."""
        self.stopping = True
        for gen in self.generations.values():
            for task in gen.replacing.values():
                task.cancel()
        self.operations.refuse_all()

    async def stop_workers(self, *, fast: bool, plan: ShutdownPlan | None = None) -> None:
        """Ask every worker to stop (TERM, or QUIT when ``fast``) and wait by the plan.

        ``plan``: this stop's deadlines, made once when it began (the master's,
        which its workers were given too); None: a stop that begins now. A
        graceful stop waits until ``plan.master_kill``; a fast one, or a worker
        still starting (it had no work to lose: TERM during its import is not
        a failure), until the ``master_kill`` of a stop that ends now.

        Raises ShutdownAbandoned if a worker that served abandoned work or had
        to be killed, WorkersFailed if one exited with an error (:mod:`.drain`).
        """
        self.begin_stop()
        self._read_pending()  # a READY already sent: that worker serves, and drains
        workers = self.live_workers()
        for w in workers:
            self.ask_to_stop(w, fast=fast)
        if plan is None:
            plan = ShutdownPlan.begin(self.config, drain_delay=False)
        short = ShutdownPlan.until(self.config, time.monotonic()).master_kill
        deadline = short if fast else plan.master_kill
        served = [w for w in workers if w.ready_at is not None]
        starting = [w for w in workers if w.ready_at is None]
        stuck_served, stuck_starting = await asyncio.gather(
            self._wait_or_kill(served, deadline),
            self._wait_or_kill(starting, min(deadline, short)),
        )
        log.info("master %d: stopped (%d worker(s) drained)", self._pid, len(workers))
        judge(served, stuck_served + stuck_starting)

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

    def promote(self, gen: Generation) -> None:
        gen.state = "serving"
        self.active = gen
        for w in list(gen.slots.values()):
            if w.recycle_due:  # it asked while its generation was starting
                self.recycling.due(w)

    def open_generation(self) -> Generation:
        """A new generation of ``size`` empty slots, known to the pool (:mod:`.handover`)."""
        number = self._next_generation
        self._next_generation += 1
        gen = Generation(number, self.size)
        self.generations[number] = gen
        return gen

    async def start_generation(self, *, first: bool = False) -> Generation:
        """Start a generation; once every worker is READY, return it (:mod:`.handover`)."""
        return await start_generation(self, first=first)

    async def reload(self) -> dict[str, Any]:
        """Start a new generation; once it is READY, drain the serving one (:mod:`.handover`)."""
        return await self._reloads.run()

    async def drain(self, gen: Generation, why: str) -> None:
        """Ask a generation to drain (TERM), wait by its plan's ``master_kill``, then kill."""
        gen.state = "draining"
        for task in gen.replacing.values():
            task.cancel()
        workers = gen.workers()
        for w in workers:
            self.ask_to_stop(w)
        log.info("master %d: generation %d draining (%s)", self._pid, gen.number, why)
        # A reload's drain is a stop of that generation, planned when it begins.
        plan = ShutdownPlan.begin(self.config, drain_delay=False)
        await self._wait_or_kill(workers, plan.master_kill)
        gen.state = "exited"
        self._forget(gen)

    async def discard(self, gen: Generation) -> None:
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

    def spawn_worker(self, gen: Generation, slot: int, restarts: int = 0) -> Worker:
        """Start a worker in ``slot``; raises OSError if the OS refuses (EMFILE, EAGAIN...)."""
        w = self.new_worker(gen, slot, restarts)
        old = gen.slots.get(slot)
        if old is not None and old.child.alive:
            gen.retired.append(old)
        elif old is not None:
            self.by_pid.pop(old.pid, None)
            old.child.close()
        gen.slots[slot] = w
        log.info("master %d: started %s in slot %d", self._pid, w.label, slot)
        return w

    def new_worker(self, gen: Generation, slot: int, restarts: int) -> Worker:
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

    def holds(self, gen: Generation, w: Worker) -> bool:
        """Whether ``w`` is still the serving worker of its slot in the serving generation."""
        return (
            not self.stopping
            and gen is self.active
            and gen.state == "serving"
            and gen.slots.get(w.slot) is w
            and w.child.alive
        )

    def ask_to_stop(self, w: Worker, *, fast: bool = False) -> None:
        """Tell ``w`` to drain (TERM), or to skip to cancelling (QUIT) when ``fast``; once."""
        if w.child.alive and not w.asked_to_stop:
            w.asked_to_stop = True
            w.state = "stopping"
            self.watchdog.cancel(w)
            w.child.signal(_FAST_STOP if fast else _STOP)

    async def _wait_or_kill(self, workers: list[Worker], deadline: float) -> list[Worker]:
        """Wait for ``workers`` by ``deadline`` (``time.monotonic()``); kill and return the rest."""
        return await wait_or_kill(workers, deadline, config=self.config, hurry=self.hurry)

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
        self.replacements.replace_later(gen, w, w.child.describe_exit())

    def keep_task(self, gen: Generation, slot: int, coro: Any) -> None:
        """Run ``coro`` for ``slot``; the generation holds it (cancelled when it drains)."""
        task = asyncio.get_running_loop().create_task(coro, name=f"master:slot-{slot}")
        gen.replacing[slot] = task
        task.add_done_callback(
            lambda t: gen.replacing.pop(slot, None) if gen.replacing.get(slot) is t else None
        )

    def reconcile_size(self) -> None:
        """Bring the serving generation to ``size`` workers (after a turn of the queue)."""
        gen = self.active
        if gen is None or self.stopping:
            return
        gen.size = self.size
        for slot in range(self.size):
            if slot not in gen.slots:
                self.replacements.fill(gen, slot)
        for slot in sorted(gen.slots, reverse=True):
            if slot >= self.size:
                w = gen.slots.pop(slot)
                gen.retired.append(w)
                task = gen.replacing.pop(slot, None)
                if task is not None:
                    task.cancel()
                self.ask_to_stop(w)

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
            self.recycling.due(w)
        if report.heartbeat and w.state == "ready":
            w.last_heartbeat = time.monotonic()
            self.watchdog.beat(w)

    def _read_pending(self) -> None:
        """Act on every notification already sent, before judging a worker by what it said."""
        for message in self.hooks.pending():
            self.on_notification(message)
