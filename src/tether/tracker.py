"""Tracked background work: nothing a service starts is lost at shutdown.

A handler that fires ``asyncio.create_task(send_event())`` and returns leaves a
task that nobody references, nobody waits for, and that the event loop simply
drops when the process stops. A :class:`Tracker` owns such work instead: it
keeps a strong reference to every task, logs a failure the moment it happens,
and at shutdown waits for the work within a deadline, cancels what is left,
waits a short hard deadline more, and returns a report naming every task it
had to abandon, with the stack it was stuck in.

The invariant: **work the tracker accepted is finished, or reported by name.**
Work offered after shutdown began is refused with :class:`TrackerClosed` (or,
by option, run inline), never accepted and then dropped.

Two ways in, besides :meth:`Tracker.spawn`:

- :func:`spawn`, the process's tracker (the one ``tether run`` installs with
  :func:`set_current_tracker`), for a one-line fire-and-forget from a handler;
- adoption (:func:`install_adoption`): a loop task factory that registers every
  task created, directly or transitively, inside a request scope
  (:func:`request_scope`), so plain ``asyncio.create_task`` in existing code is
  tracked without a change. The factory chains to whichever factory was there
  before (leak detection installs one too).

Written by hand: asyncio's ``TaskGroup`` cancels everything on the first
failure and cannot report what it abandoned, and no maintained library offers
a drain with a deadline, a report and adoption.

This module is the tracker's machinery and the process's tracker; the errors
and report types live in :mod:`tether._trackertypes`, the adoption factory in
:mod:`tether._adoption`. Every name is importable from here.

Why this module is long: Tracker is one state machine (open, draining, cancelling, done)
whose spawn paths, slot accounting and drain keep one invariant together (``spawned`` is
the sum of the outcomes); its types and phases (tether._trackertypes) and the adoption
factory (tether._adoption) already live apart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from contextvars import Context
from types import CoroutineType
from typing import Any, Literal, TypeVar

from tether._adoption import (
    REQUEST_SCOPE,
    REQUESTS,
    Adoption,
    current_origin,
    install_adoption,
    no_adoption,
    no_adoption_for,
    origin_label,
    request_scope,
)
from tether._checks import check_timeout
from tether._creation import task_site
from tether._stacks import format_frames, task_frames
from tether._trackertypes import (
    CANCELLING,
    DONE,
    DRAINING,
    OPEN,
    PHASE_NAMES,
    AbandonedTask,
    BaseExceptionInWork,
    NoCurrentTracker,
    TrackerClosed,
    TrackerFull,
    TrackerReport,
    TrackerStats,
)
from tether.errors import ConfigError

__all__ = [
    "Tracker",
    "TrackerStats",
    "TrackerReport",
    "AbandonedTask",
    "spawn",
    "current_tracker",
    "set_current_tracker",
    "REQUEST_SCOPE",
    "REQUESTS",
    "current_origin",
    "origin_label",
    "request_scope",
    "no_adoption",
    "no_adoption_for",
    "install_adoption",
    "Adoption",
    "TrackerClosed",
    "TrackerFull",
    "NoCurrentTracker",
    "BaseExceptionInWork",
]

logger = logging.getLogger("tether.tracker")

T = TypeVar("T")
#: See ``Tracker.observer``.
TaskObserver = Callable[
    [str, "str | None", bool, "Context | None"],
    "tuple[Context, Callable[[asyncio.Task[Any]], None]]",
]
WhenClosed = Literal["refuse", "inline"]

#: Seconds cancelled work gets to unwind before it is reported as ignoring cancellation.
DEFAULT_CANCEL_TIMEOUT = 2.0
#: Loop iterations an adopted task's creator has to retrieve the exception it raised
#: before the tracker calls it a failure. Awaiting the task, ``gather``, ``TaskGroup``
#: and ``asyncio.wait`` followed by ``task.result()`` (Django's request handler) all
#: retrieve it within two.
RETRIEVE_ITERATIONS = 4


class Tracker:
    """Owns background tasks: references them, counts them, drains them at shutdown.

    ``limit`` bounds how many explicitly spawned tasks run at once (adopted
    tasks are never refused and do not take slots); ``None`` means no bound.
    ``when_closed`` says what happens to work offered after :meth:`shutdown`
    began: ``"refuse"`` raises :class:`TrackerClosed`; ``"inline"`` makes
    ``await tracker.spawn(...)`` run the work to completion before returning
    (the synchronous :meth:`try_spawn` still refuses: it cannot wait).

    Resource handling: a refused coroutine is closed, so it never warns
    "coroutine was never awaited". Use the tracker from its event loop's
    thread only, like every asyncio object.

    Error handling: a failure in tracked work is logged on ``tether.tracker``
    with its traceback the moment the task ends, and counted; it never reaches
    the caller of ``spawn``. ``KeyboardInterrupt`` and ``SystemExit`` raised by
    explicitly spawned work are turned into :class:`BaseExceptionInWork`
    failures instead of stopping the event loop.
    """

    def __init__(
        self, limit: int | None = None, *, name: str = "tracker", when_closed: WhenClosed = "refuse"
    ) -> None:
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            msg = f"tracker limit must be a whole number >= 1, or None for no limit; got {limit!r}"
            raise ConfigError(msg)
        if when_closed not in ("refuse", "inline"):
            msg = f'when_closed must be "refuse" or "inline"; got {when_closed!r}'
            raise ConfigError(msg)
        self.name = name
        self.limit = limit
        self.when_closed: WhenClosed = when_closed
        # Settled tasks still running (see _settle): task -> the request scope it was
        # adopted from, None if spawned explicitly.
        self._tasks: dict[asyncio.Task[Any], object] = {}
        # When each of those was settled (loop time), for the debug console's "running for".
        self._since: dict[asyncio.Task[Any], float] = {}
        # Registered, not settled yet: parallel lists of tasks and origins, then in flight.
        self._fresh: list[asyncio.Task[Any]] = []
        self._fresh_origins: list[object] = []
        self._fresh_spawned = 0  # how many of _fresh were spawned (the rest were adopted)
        self._batches: deque[tuple[list[asyncio.Task[Any]], list[object]]] = deque()
        self._phase = OPEN
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop it runs work on
        self._used = 0  # slots held by explicitly spawned tasks
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._spawning = False  # tells the adoption factory that spawn() is creating this task
        self._idle: asyncio.Future[None] | None = None
        self._deadline: asyncio.Timeout | None = None
        self._shutdown_done: asyncio.Future[TrackerReport] | None = None
        self._stragglers: set[asyncio.Task[Any]] = set()  # abandoned, still referenced
        # adopted during the cancel phase, so cancelled at once
        self._late: list[tuple[asyncio.Task[Any], object]] = []
        # Adopted tasks that raised, while their creator may still retrieve the exception.
        self._unjudged: dict[asyncio.Task[Any], object] = {}
        self._completed = self._failed = self._cancelled = self._abandoned = self._adopted = 0
        self._on_done_cb = self._on_done
        #: Told of each task before it is created (name, who started it, spawned rather
        #: than adopted, the context it would run in); returns the context to run it in and
        #: a done callback. OpenTelemetry's task spans; None: nothing is called.
        self.observer: TaskObserver | None = None

    def __repr__(self) -> str:
        phase = PHASE_NAMES[self._phase]
        return f"<Tracker {self.name!r} {phase} running={self._running()} limit={self.limit}>"

    @property
    def closed(self) -> bool:
        """True once :meth:`shutdown` has begun."""
        return self._phase != OPEN

    def stats(self) -> TrackerStats:
        """A snapshot of the counters."""
        running = self._running()
        return TrackerStats(
            spawned=running + self._completed + self._failed + self._cancelled + self._abandoned,
            running=running,
            completed=self._completed,
            failed=self._failed,
            cancelled=self._cancelled,
            abandoned=self._abandoned,
            adopted=self._adopted + len(self._fresh) - self._fresh_spawned,
            waiting=len(self._waiters),
        )

    def tasks(self) -> list[asyncio.Task[Any]]:
        """The tasks tracked now (a copy; one that just finished may still be in it)."""
        result = list(self._tasks)
        for batch, _ in self._batches:
            result.extend(batch)
        result.extend(self._fresh)
        return result

    def running(self) -> list[dict[str, Any]]:
        """Tracked tasks still running: name, who started them, seconds running; longest first.

        ``started_by`` is the request a task was adopted from or spawned in, else
        the task that spawned it (a member is ``service:NAME``), else where it was
        created (with creation tracking on), else ``tether.spawn``. The age counts
        from the task's first step, so a task that just started shows 0.
        """
        now = self._loop.time() if self._loop is not None else 0.0
        out = []
        for task in self.tasks():
            if task.done():
                continue
            origin = self._tasks.get(task)
            started_by = origin_label(origin if origin is not None else _spawned_by(task))
            if started_by is None:
                site = task_site(task)
                started_by = "tether.spawn"
                if site is not None:
                    started_by = f"{site[0].co_name} ({site[2]}:{site[1]})"
            since = self._since.get(task)
            out.append(
                {
                    "name": _display_name(task),
                    "started_by": started_by,
                    "adopted": origin is not None,
                    "age": 0.0 if since is None else round(now - since, 3),
                }
            )
        return sorted(out, key=lambda t: -t["age"])

    def _running(self) -> int:
        return (
            len(self._tasks)
            + len(self._fresh)
            + sum(len(b) for b, _ in self._batches)
            + len(self._unjudged)
        )

    def _busy(self) -> bool:
        return bool(self._tasks or self._fresh or self._batches or self._unjudged)

    # -- starting work --------------------------------------------------------------------

    async def spawn(
        self, coro: Coroutine[Any, Any, T], *, name: str | None = None
    ) -> asyncio.Task[T]:
        """Start ``coro`` as a tracked task and return it; wait for a free slot if limited.

        Raises :class:`TrackerClosed` if shutdown has begun (or began while
        waiting), unless the tracker runs late work inline.
        """
        _check_coro(coro)
        if self._phase == OPEN and (
            self.limit is None or (self._used < self.limit and not self._waiters)
        ):
            if self.limit is not None:
                self._used += 1
            return self._start(coro, name)
        return await self._spawn_slow(coro, name)

    def try_spawn(
        self, coro: Coroutine[Any, Any, T], *, name: str | None = None
    ) -> asyncio.Task[T]:
        """Start ``coro`` as a tracked task now, or raise TrackerFull or TrackerClosed."""
        _check_coro(coro)
        if self._phase != OPEN:
            coro.close()
            raise TrackerClosed(self.name, _work_name(coro, name))
        if self.limit is not None:
            if self._used >= self.limit or self._waiters:
                coro.close()
                raise TrackerFull(self.name, _work_name(coro, name), self.limit)
            self._used += 1
        return self._start(coro, name)

    async def _spawn_slow(self, coro: Coroutine[Any, Any, T], name: str | None) -> asyncio.Task[T]:
        if self._phase == OPEN:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                # Resolved by a finishing task (which took the slot for us) or by shutdown.
                await waiter
            except BaseException:
                coro.close()
                if waiter.cancelled():
                    self._waiters.remove(waiter)
                elif self._phase == OPEN:
                    self._release_slot()  # handed a slot, then cancelled before using it
                raise
            if self._phase == OPEN:
                return self._start(coro, name)
        if self.when_closed == "refuse":
            coro.close()
            raise TrackerClosed(self.name, _work_name(coro, name))
        # Inline: the caller waits for the work, so nothing is accepted and then dropped.
        task = self._start(coro, name)
        await asyncio.wait((task,))
        return task

    def _start(self, coro: Coroutine[Any, Any, T], name: str | None) -> asyncio.Task[T]:
        name = _work_name(coro, name)
        # Who spawned it, for the debug console: the request, else the task (a member).
        by = current_origin()
        if by is None:
            creator = asyncio.current_task()
            by = creator.get_name() if creator is not None else None
        wrapped = _guarded(coro, name, by)
        self._spawning = True
        try:
            loop = asyncio.get_running_loop()
            if loop is not self._loop:
                self._bind(loop)
            if self.observer is None:
                task = loop.create_task(wrapped, name=name)
            else:
                context, done = self.observer(name, origin_label(by), True, None)
                task = loop.create_task(wrapped, name=name, context=context)
                task.add_done_callback(done)
        except BaseException:
            if self.limit is not None and self._phase == OPEN:
                self._release_slot()
            wrapped.close()
            coro.close()
            raise
        finally:
            self._spawning = False
        fresh = self._fresh
        if not fresh:
            loop.call_soon(self._hop, loop)
        fresh.append(task)
        self._fresh_origins.append(None)
        self._fresh_spawned += 1
        return task

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        # Unsettled tasks wait for a callback on the loop they were created on.
        if self._loop is not None and self._loop is not loop and not self._loop.is_closed():
            msg = (
                f"tracker {self.name!r} already runs work on another event loop; "
                "a tracker belongs to one loop: create one per loop"
            )
            raise RuntimeError(msg)
        if self._loop is not None:
            self._settle_all()  # the old loop closed before it could settle them
        self._loop = loop

    def _adopt_late(self, task: asyncio.Task[Any], origin: object) -> None:
        """Adopt a task created during the cancel phase: the drain is over, so it is abandoned."""
        self._adopted += 1
        self._abandoned += 1
        self._late.append((task, origin))  # named later: create_task names it after us
        self._stragglers.add(task)
        task.add_done_callback(self._on_abandoned_done)
        task.cancel("tether: created after the shutdown deadline")

    # The adoption factory registers the other adopted tasks itself (as _start does for
    # spawned ones): it runs on every create_task, so the registration is inlined there.

    # Most background tasks finish in their first step. A done callback on each costs a
    # scheduled handle per task (a third of a trivial task's cost, a dict entry another
    # tenth). Instead, the tasks registered in one loop iteration are held in a list and
    # settled together two iterations later, when each has run its first step: finished
    # ones are counted there, only those still running go into the dict with a done
    # callback. So failures are logged, and slots freed, within two loop iterations.

    def _hop(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._fresh:
            self._batches.append(self._take_fresh())
            loop.call_soon(self._settle_next)  # after the first step of every task in it

    def _take_fresh(self) -> tuple[list[asyncio.Task[Any]], list[object]]:
        batch, origins = self._fresh, self._fresh_origins
        self._adopted += len(batch) - self._fresh_spawned
        self._fresh, self._fresh_origins, self._fresh_spawned = [], [], 0
        return batch, origins

    def _settle_next(self) -> None:
        if self._batches:
            self._settle(*self._batches.popleft())

    def _settle_all(self) -> None:
        while self._batches:
            self._settle(*self._batches.popleft())
        if self._fresh:
            self._settle(*self._take_fresh())

    def _settle(self, batch: list[asyncio.Task[Any]], origins: list[object]) -> None:
        tasks = self._tasks
        on_done = self._on_done_cb
        no_slots = self.limit is None or self._phase != OPEN
        completed = 0
        now = -1.0
        for task, origin in zip(batch, origins, strict=True):
            if not task.done():
                tasks[task] = origin
                if now < 0:
                    now = self._loop.time() if self._loop is not None else 0.0
                self._since[task] = now
                task.add_done_callback(on_done)
                continue
            # _on_done's common case, inlined. An exception not retrieved yet is left to
            # _on_done: reading it here would retrieve it before the task's creator can.
            if no_slots and not task._log_traceback:
                try:
                    if task.exception() is None:
                        completed += 1
                        continue
                except asyncio.CancelledError:
                    pass
            tasks[task] = origin
            on_done(task)
        self._completed += completed
        if not self._busy():
            self._wake_idle()

    def _wake_idle(self) -> None:
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _release_slot(self) -> None:
        self._used -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._used += 1
                waiter.set_result(None)
                return

    def _on_done(self, task: asyncio.Task[Any]) -> None:
        origin = self._tasks.pop(task)
        self._since.pop(task, None)
        if origin is None and self.limit is not None and self._phase == OPEN:
            self._release_slot()
        if task.cancelled():
            self._cancelled += 1
        elif origin is not None and task._log_traceback:
            # An adopted task is its creator's: the creator may still retrieve the
            # exception and handle it (Django's handler does, with the RequestAborted its
            # disconnect listener raises). Judge once it had the chance.
            self._unjudged[task] = origin
            assert self._loop is not None
            self._loop.call_soon(self._judge, task, RETRIEVE_ITERATIONS - 1)
            return
        else:
            exc = task.exception()
            # An adopted task whose exception was retrieved was handled by its creator.
            if exc is None or origin is not None:
                self._completed += 1
            else:
                self._failed += 1
                _log_failure(task, exc, "failed")
        if not self._busy():
            self._wake_idle()

    def _judge(self, task: asyncio.Task[Any], iterations: int = 0) -> None:
        """An adopted task raised: a failure, unless its creator retrieved the exception."""
        if task not in self._unjudged:
            return  # judged already, when the shutdown reached its cancel phase
        if iterations > 0 and task._log_traceback:
            assert self._loop is not None
            self._loop.call_soon(self._judge, task, iterations - 1)
            return
        origin = self._unjudged.pop(task)
        if task._log_traceback:
            self._failed += 1
            exc = task.exception()  # retrieved now, so asyncio does not log it a second time
            assert exc is not None
            label = origin_label(origin)
            _log_failure(task, exc, f"(started by {label}) failed" if label else "failed")
        else:
            self._completed += 1
        if not self._busy():
            self._wake_idle()

    def _on_abandoned_done(self, task: asyncio.Task[Any]) -> None:
        self._stragglers.discard(task)
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                _log_failure(task, exc, "raised while being cancelled")

    # -- shutdown -------------------------------------------------------------------------

    async def shutdown(
        self,
        # Not a cancel scope for the caller: it ends the drain and starts the cancel phase.
        timeout: float | None = None,  # noqa: ASYNC109
        *,
        deadline: float | None = None,
        cancel_timeout: float = DEFAULT_CANCEL_TIMEOUT,
    ) -> TrackerReport:
        """Refuse new work, wait up to ``timeout`` for the rest, cancel what is left, report.

        ``deadline`` (a ``time.monotonic()`` value, a stop plan's) ends the
        wait at that moment instead: a budget that began earlier is passed
        whole, not as seconds left. Give one of the two.

        After cancelling, waits at most ``cancel_timeout`` more; work that
        ignores cancellation is reported then and left running (still
        referenced), so the report always comes by ``timeout + cancel_timeout``.
        Tasks adopted while the drain runs are waited for too.

        A second call while a shutdown runs brings its deadline forward if its
        own is earlier (``shutdown(0)`` on a second SIGTERM) and returns the same
        report; a call after it finished returns that report at once.
        Cancelling the caller cancels the remaining work at once, without waiting.
        """
        if timeout is not None and deadline is not None:
            msg = "Tracker.shutdown takes a timeout or a deadline, not both"
            raise TypeError(msg)
        if deadline is not None:
            timeout = max(0.0, deadline - time.monotonic())
        if timeout is None:
            msg = "Tracker.shutdown needs a timeout or a deadline"
            raise TypeError(msg)
        timeout = check_timeout("shutdown timeout", timeout)
        cancel_timeout = check_timeout("shutdown cancel_timeout", cancel_timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._shutdown_done is not None:
            when = self._deadline.when() if self._deadline is not None else None
            if self._deadline is not None and when is not None and deadline < when:
                self._deadline.reschedule(deadline)
            return await asyncio.shield(self._shutdown_done)

        started = time.monotonic()
        self._shutdown_done = done = loop.create_future()
        self._phase = DRAINING
        while self._waiters:  # spawners waiting for a slot wake up closed: refused, or inline
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        try:
            await self._drain(deadline)
            abandoned = await self._cancel_rest(cancel_timeout)
        except BaseException:
            for task in self.tasks():
                task.cancel("tether: tracker shutdown was cancelled")
            done.cancel()
            raise
        finally:
            self._phase = DONE
        report = TrackerReport(
            completed=self._completed,
            failed=self._failed,
            cancelled=self._cancelled,
            abandoned=tuple(abandoned),
            elapsed=time.monotonic() - started,
        )
        for item in report.abandoned:
            logger.error(
                "tracker %r abandoned task %r (%s); stack when the deadline passed:\n%s",
                self.name,
                item.name,
                item.to_abandoned_work().detail,
                item.stack or "  (not started)\n",
            )
        logger.info("tracker %r shut down: %s", self.name, report.summary())
        done.set_result(report)
        return report

    async def _drain(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline) as self._deadline:
                while self._busy():
                    self._idle = loop.create_future()
                    await self._idle
        except TimeoutError:
            pass
        finally:
            self._idle = None
            self._deadline = None

    async def _cancel_rest(self, cancel_timeout: float) -> list[AbandonedTask]:
        self._phase = CANCELLING
        self._settle_all()
        for task in list(self._unjudged):
            self._judge(task)
        cancelled: list[tuple[asyncio.Task[Any], AbandonedTask]] = []
        for task, origin in list(self._tasks.items()):
            if task.done():  # finished, just not settled yet
                self._on_done(task)
                continue
            # Take the stack first: where it was stuck is what the report is for.
            stack = format_frames(task_frames(task, hide=_GUARD_CODE))  # without the guard
            item = AbandonedTask(_display_name(task), stack, False, origin_label(origin))
            cancelled.append((task, item))
            task.remove_done_callback(self._on_done_cb)
            del self._tasks[task]
            self._since.pop(task, None)
            self._abandoned += 1
            self._stragglers.add(task)
            task.add_done_callback(self._on_abandoned_done)
            task.cancel("tether: shutdown deadline passed")
        if self._stragglers:
            # The hard deadline: work that ignores cancellation must not hold up the report.
            await asyncio.wait(set(self._stragglers), timeout=cancel_timeout)
        for task, origin in self._late:
            cancelled.append(
                (task, AbandonedTask(_display_name(task), "", False, origin_label(origin)))
            )
        self._late = []
        return [
            item if task.done() else dataclasses.replace(item, ignored_cancellation=True)
            for task, item in cancelled
        ]


# -- helpers ------------------------------------------------------------------------------


def _check_coro(coro: object) -> None:
    if type(coro) is CoroutineType or asyncio.iscoroutine(coro):
        return
    if callable(coro):
        what = getattr(coro, "__qualname__", repr(coro))
        msg = f"spawn() takes a coroutine object, got the callable {what}; call it: {what}(...)"
        raise TypeError(msg)
    msg = (
        "spawn() takes a coroutine object (what calling an `async def` function returns), "
        f"got {type(coro).__name__}: {coro!r}"
    )
    raise TypeError(msg)


def _work_name(coro: object, name: str | None) -> str:
    if name is not None:
        return name
    return getattr(coro, "__qualname__", None) or type(coro).__name__


async def _guarded(coro: Coroutine[Any, Any, T], name: str, by: object = None) -> T:
    # ``by`` is only kept to be read from this frame by Tracker.running().
    # Keeps KeyboardInterrupt/SystemExit from escaping a task, which would stop the loop.
    try:
        return await coro
    except (KeyboardInterrupt, SystemExit) as exc:
        raise BaseExceptionInWork(name, exc) from exc


_GUARD_CODE = _guarded.__code__


def _spawned_by(task: asyncio.Task[Any]) -> object:
    """What ``spawn`` noted as the spawner of a task it started: a request scope or a task name."""
    frame = getattr(task.get_coro(), "cr_frame", None)
    if frame is None or frame.f_code is not _GUARD_CODE:
        return None
    return frame.f_locals.get("by")


def _display_name(task: asyncio.Task[Any]) -> str:
    name = task.get_name()
    if name.startswith("Task-"):  # asyncio's default; the coroutine says more
        qualname = getattr(task.get_coro(), "__qualname__", None)
        if qualname is not None:
            return f"{qualname} ({name})"
    return name


def _log_failure(task: asyncio.Task[Any], exc: BaseException, what: str) -> None:
    logger.error("tracked task %r %s", _display_name(task), what, exc_info=exc)


# -- the process's tracker ----------------------------------------------------------------

_current: Tracker | None = None


def set_current_tracker(tracker: Tracker | None) -> Tracker | None:
    """Install ``tracker`` as this process's tracker (None to remove); return the previous one."""
    global _current
    previous, _current = _current, tracker
    return previous


def current_tracker() -> Tracker:
    """This process's tracker; raises :class:`NoCurrentTracker` if none is installed."""
    if _current is None:
        raise NoCurrentTracker(call="tether.current_tracker()")
    return _current


def spawn(coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
    """Start ``coro`` as tracked work of this process's tracker, without waiting; return the task.

    A synchronous one-liner for handlers. It never waits: if the tracker has a
    limit and it is reached, it raises :class:`TrackerFull` (use
    ``await tether.current_tracker().spawn(...)`` to wait for a slot instead);
    after shutdown began it raises :class:`TrackerClosed`.
    """
    tracker = _current
    if tracker is None:
        _check_coro(coro)
        coro.close()
        raise NoCurrentTracker(call=f"tether.spawn({_work_name(coro, name)}(...))")
    return tracker.try_spawn(coro, name=name)
