"""Run members together, stop them together, with a deadline on every wait.

This is the note's "never start a goroutine without knowing when it will
stop", as an asyncio primitive. A :class:`Group` runs *members*: async
callables that receive a :class:`StopToken`. The invariant:

* the first member to exit, for any reason (returning, raising, being
  cancelled), stops the group; ``asyncio.TaskGroup`` does not do this when a
  member simply returns;
* once stopped, a group is settled by a known time: members get the stop token
  first; whatever still runs at the graceful deadline is cancelled; whatever
  still runs ``cancel_timeout`` later is reported as abandoned, never waited
  for without end;
* every member's error is collected, never only the first.

Resource handling: each member runs in its own task, which the group holds a
strong reference to until it ends. A member that ignores cancellation keeps
running in the background after ``wait`` returns; it is reported, not hidden.

Error handling: ``wait`` raises an ``ExceptionGroup`` holding every member's
exception (each with a note naming the member) and, if work was cut short at
the deadline, a :class:`~tether.errors.ShutdownAbandoned` naming it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from tether._checks import check_timeout
from tether._stacks import format_frames, task_frames
from tether.errors import AbandonedWork, ShutdownAbandoned, TetherError

__all__ = ["Group", "GroupReport", "Member", "MemberExitedEarly", "StopToken"]

logger = logging.getLogger("tether.group")

Member = Callable[["StopToken"], Awaitable[Any]]


class MemberExitedEarly(TetherError, RuntimeError):
    """``Group.start`` was waiting for a member to be ready, and it returned first."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"member {name!r} returned before it was ready; "
            "call stop.ready() once it can do its work, or add it with Group.add"
        )
        self.name = name


class _StopState:
    """What all the tokens of one group share."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.reason: str | None = None
        self.deadline: float | None = None
        #: The same moment on the plan's clock (``time.monotonic()``).
        self.monotonic_deadline: float | None = None

    def end_at(self, loop: asyncio.AbstractEventLoop, deadline: float) -> float:
        """The graceful period ends at ``deadline`` (``time.monotonic()``, never before now).

        Returns the same moment as event-loop time.

        The one place a plan's deadline meets the loop's clock: asyncio's loop
        reads ``time.monotonic()`` itself, uvloop the same clock to the
        millisecond, so the offset is measured rather than assumed.
        """
        now = time.monotonic()
        self.monotonic_deadline = max(now, deadline)
        self.deadline = at = loop.time() + (self.monotonic_deadline - now)
        return at


class StopToken:
    """Given to each member: tells it when to stop and lets it say it is ready.

    ``await token`` (or ``await token.wait()``) returns the reason once the group
    is stopping. ``deadline`` is the event-loop time by which graceful work
    must be done; after it, the member is cancelled. ``monotonic_deadline`` is
    the same moment as a ``time.monotonic()`` value, the clock of
    :class:`~tether.config.ShutdownPlan`, for work that takes a plan's deadline
    (``Tracker.shutdown(deadline=)``).
    """

    __slots__ = ("_ready", "_state", "name")

    def __init__(self, state: _StopState, name: str) -> None:
        self._state = state
        self._ready: asyncio.Future[Any] | None = None
        self.name = name

    def is_set(self) -> bool:
        """True once the group is stopping."""
        return self._state.event.is_set()

    @property
    def reason(self) -> str | None:
        """Why the group is stopping (None while it is not)."""
        return self._state.reason

    @property
    def deadline(self) -> float | None:
        """Event-loop time at which the graceful period ends (None while running)."""
        return self._state.deadline

    @property
    def monotonic_deadline(self) -> float | None:
        """The same moment as a ``time.monotonic()`` value (None while running)."""
        return self._state.monotonic_deadline

    def remaining(self) -> float | None:
        """Seconds left in the graceful period (None while running, never negative)."""
        if self._state.deadline is None:
            return None
        return max(0.0, self._state.deadline - asyncio.get_running_loop().time())

    async def wait(self) -> str:
        """Wait until the group is stopping; return the reason."""
        await self._state.event.wait()
        return self._state.reason or "stopped"

    def __await__(self) -> Generator[Any, None, str]:
        return self.wait().__await__()

    def ready(self, value: Any = None) -> None:
        """Tell ``Group.start`` that this member is ready; ``value`` is what it returns."""
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(value)


@dataclass
class GroupReport:
    """How a group ended."""

    reason: str | None = None
    errors: dict[str, BaseException] = field(default_factory=dict)
    abandoned: list[AbandonedWork] = field(default_factory=list)


@dataclass
class _Running:
    name: str
    task: asyncio.Task[Any]
    cancelled_by_group: bool = False
    #: Where the member was suspended when the group cancelled it (what its report shows).
    stack: str = ""

    def current_stack(self) -> str:
        """The member's await chain now, without the group's own wrapper frame."""
        return format_frames(task_frames(self.task, hide=_RUN_MEMBER_CODE))


async def _run_member(member: Member, token: StopToken) -> Any:
    return await member(token)


_RUN_MEMBER_CODE = _run_member.__code__


class Group:
    """Members that run together and stop together.

    Usage::

        async with Group(graceful_timeout=10) as group:
            port = await group.start(serve_http, name="app")   # returns once ready
            group.add(consume_queue, name="consumer")
        # leaving the block waits for every member; any exit stops all

    ``graceful_timeout`` bounds the time from ``stop`` until members are
    cancelled; ``cancel_timeout`` bounds the time cancelled members get before
    they are reported as abandoned.
    """

    def __init__(
        self, name: str = "group", *, graceful_timeout: float = 30.0, cancel_timeout: float = 2.0
    ) -> None:
        self.name = name
        self.graceful_timeout = check_timeout("graceful_timeout", graceful_timeout)
        self.cancel_timeout = check_timeout("cancel_timeout", cancel_timeout)
        self._state: _StopState | None = None
        self._members: list[_Running] = []
        self._settled: asyncio.Event | None = None
        self._cancel_handle: asyncio.TimerHandle | None = None
        self._abandon_handle: asyncio.TimerHandle | None = None
        self._report = GroupReport()
        self._counter = 0
        self._forced = False

    # -- starting -----------------------------------------------------------------

    def _shared(self) -> _StopState:
        if self._state is None:
            self._state = _StopState()
            self._settled = asyncio.Event()
        return self._state

    def add(self, member: Member, *, name: str | None = None) -> StopToken:
        """Start ``member`` now; it runs until it returns or the group stops it."""
        token = self._token(member, name)
        self._launch(member, token)
        return token

    async def start(self, member: Member, *, name: str | None = None) -> Any:
        """Start ``member`` and wait until it calls ``stop.ready(value)``; return ``value``.

        Raises the member's exception if it fails first, or
        :class:`MemberExitedEarly` if it returns without being ready.
        """
        token = self._token(member, name)
        ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        token._ready = ready
        running = self._launch(member, token)
        await asyncio.wait({ready, running.task}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done():
            return ready.result()
        exc = running.task.exception() if not running.task.cancelled() else None
        if exc is not None:
            raise exc
        raise MemberExitedEarly(token.name)

    def _token(self, member: Member, name: str | None) -> StopToken:
        if not callable(member):
            msg = f"a group member must be an async callable, got {member!r}"
            raise TypeError(msg)
        self._counter += 1
        label = name or getattr(member, "__name__", None) or f"member-{self._counter}"
        return StopToken(self._shared(), label)

    def _launch(self, member: Member, token: StopToken) -> _Running:
        if self._settled is not None and self._settled.is_set():
            msg = f"group {self.name!r} has already ended; start a new Group"
            raise TetherError(msg)

        task = asyncio.get_running_loop().create_task(
            _run_member(member, token), name=f"{self.name}:{token.name}"
        )
        running = _Running(token.name, task)
        self._members.append(running)
        task.add_done_callback(lambda _t: self._member_done(running))
        return running

    # -- stopping -----------------------------------------------------------------

    @property
    def deadline(self) -> float | None:
        """Event-loop time at which the graceful period ends (None while running)."""
        return self._state.deadline if self._state is not None else None

    @property
    def monotonic_deadline(self) -> float | None:
        """The same moment as a ``time.monotonic()`` value (None while running)."""
        return self._state.monotonic_deadline if self._state is not None else None

    @property
    def stopping(self) -> bool:
        """True once ``stop`` was called or a member exited."""
        return self._state is not None and self._state.event.is_set()

    async def wait_stopping(self) -> str:
        """Wait until the group begins to stop (``stop`` or a member's exit); return the reason."""
        state = self._shared()
        await state.event.wait()
        return state.reason or "stopped"

    def tasks(self) -> dict[str, asyncio.Task[Any]]:
        """The members' tasks by name (for waiting on some of them)."""
        return {m.name: m.task for m in self._members}

    def stop(
        self,
        reason: str = "stop requested",
        *,
        force: bool = False,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> None:
        """Ask every member to stop; ``force`` skips the graceful period.

        ``deadline`` (a ``time.monotonic()`` value, as
        :class:`~tether.config.ShutdownPlan` holds them) ends the graceful
        period of this stop at that moment: a budget that began earlier is
        passed down whole, never as seconds left. ``timeout`` is the same
        counted from now; without either, ``graceful_timeout`` from now. The
        first reason sticks. Safe to call before any member runs, and more
        than once; a forced stop after a graceful one cancels at once.
        """
        if timeout is not None and deadline is not None:
            msg = "Group.stop takes a timeout or a deadline, not both"
            raise TypeError(msg)
        state = self._shared()
        loop = asyncio.get_running_loop()
        self._forced = self._forced or force
        if not state.event.is_set():
            state.reason = reason
            if force:
                at = state.end_at(loop, time.monotonic())
            elif deadline is not None:
                at = state.end_at(loop, deadline)
            else:
                graceful = self.graceful_timeout if timeout is None else max(0.0, timeout)
                at = state.end_at(loop, time.monotonic() + graceful)
            self._report.reason = reason
            state.event.set()
            logger.debug("group %r stopping: %s", self.name, reason)
            self._cancel_handle = loop.call_at(at, self._cancel_members)
        elif force and self._abandon_handle is None:
            state.end_at(loop, time.monotonic())
            if self._cancel_handle is not None:
                self._cancel_handle.cancel()
            self._cancel_members()

    def _member_done(self, running: _Running) -> None:
        if self._settled is not None and self._settled.is_set():
            return  # already reported as abandoned
        task = running.task
        if task.cancelled():
            if running.cancelled_by_group:
                why = "cancelled by a forced stop" if self._forced else "cancelled at the deadline"
                self._report.abandoned.append(
                    AbandonedWork("member", running.name, stack=running.stack, detail=why)
                )
            outcome = "was cancelled"
        elif (exc := task.exception()) is not None:
            exc.add_note(f"in member {running.name!r} of group {self.name!r}")
            self._report.errors[running.name] = exc
            outcome = f"failed: {type(exc).__name__}: {exc}"
        else:
            outcome = "returned"
        if not self.stopping:
            self.stop(f"member {running.name!r} {outcome}")
        self._check_settled()

    def _cancel_members(self) -> None:
        alive = [m for m in self._members if not m.task.done()]
        if not alive:
            return
        for running in alive:
            running.cancelled_by_group = True
            # Taken first: once cancelled, the member unwinds and where it was stuck is gone.
            running.stack = running.current_stack()
            running.task.cancel(f"group {self.name!r}: graceful deadline passed")
        loop = asyncio.get_running_loop()
        self._abandon_handle = loop.call_later(self.cancel_timeout, self._abandon_members)

    def _abandon_members(self) -> None:
        for running in self._members:
            if not running.task.done():
                # Done callbacks will not run for these in time: report them now.
                stack = running.current_stack()
                self._report.abandoned.append(
                    AbandonedWork(
                        "member", running.name, stack=stack, detail="ignored cancellation"
                    )
                )
                logger.error(
                    "member %r of group %r ignored cancellation; abandoning it:\n%s",
                    running.name,
                    self.name,
                    stack,
                )
        assert self._settled is not None
        self._settled.set()

    def _check_settled(self) -> None:
        if self.stopping and all(m.task.done() for m in self._members):
            if self._cancel_handle is not None:
                self._cancel_handle.cancel()
            if self._abandon_handle is not None:
                self._abandon_handle.cancel()
            assert self._settled is not None
            self._settled.set()

    # -- waiting ------------------------------------------------------------------

    async def wait(self) -> GroupReport:
        """Wait until every member has ended or been abandoned.

        Returns the report when every member ended cleanly; otherwise raises an
        ``ExceptionGroup`` of the members' errors and of a
        :class:`~tether.errors.ShutdownAbandoned` for work cut short.
        """
        self._shared()
        assert self._settled is not None
        if not self._members:
            self.stop("no members")
            self._settled.set()
        try:
            await self._settled.wait()
        except asyncio.CancelledError:
            # Whoever waits on us is going away: take the members with us.
            self.stop("the group's waiter was cancelled", force=True)
            raise
        return self.result()

    def result(self) -> GroupReport:
        """The report of a settled group; raises as ``wait`` does."""
        report = self._report
        problems: list[Exception] = []
        for exc in report.errors.values():
            if isinstance(exc, Exception):
                problems.append(exc)
            else:  # KeyboardInterrupt, SystemExit raised by a member: let it through.
                raise exc
        if report.abandoned:
            problems.append(ShutdownAbandoned(list(report.abandoned)))
        if problems:
            failed = ", ".join(report.errors) or "none"
            msg = f"group {self.name!r} ended with problems (failed members: {failed})"
            raise ExceptionGroup(msg, problems)
        return report

    async def __aenter__(self) -> Group:
        self._shared()
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is not None:
            self.stop(f"the block raised {type(exc).__name__}", force=True)
            await self._wait_quietly()
            return
        await self.wait()

    async def _wait_quietly(self) -> None:
        assert self._settled is not None
        if self._members:
            await self._settled.wait()
