"""The stop of one process: its plan made once, the drain delay, and the last-resort timer.

A stop begins once, however it is asked for: a stop signal, a request (a
reload's drain, ``--limit-max-requests``), the parent master's death, or a
member's exit inside the group. From that moment one
:class:`~tether.config.ShutdownPlan` holds every deadline of it, and each
step reads its bound from the plan at the point of use; nothing below is
handed seconds left:

- the drain delay (``/readyz`` answers 503 while everything serves) ends at
  ``plan.drain_delay_end``; then the group stops with ``plan.deadline``;
- a worker whose master wrote a deadline for this stop (``TETHER_STOP_PLAN``)
  keeps the master's plan, whose drain delay has already run;
- the last-resort timer (``hard_stop``, which the CLI provides: an event loop
  blocked in C cannot be cancelled) fires at ``plan.hard_stop``.

Invariant: the plan is made at most once per process; the first stop to
begin decides it, and every later request, signal or member exit reads the
same one. The hard-stop timer is armed only by a stop (never by USR1, HUP or
USR2) and is gone (cancelled and joined) after :meth:`ProcessStop.disarm`.

Resource handling: one timer thread at most (``tether-hard-stop``), and one
loop timer for the drain delay, cancelled by a forced stop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from tether import signals
from tether.config import RunConfig, ShutdownBudget, ShutdownPlan
from tether.group import Group
from tether.worker import read_stop_plan

__all__ = ["ProcessStop"]

logger = logging.getLogger("tether.runtime")


class ProcessStop:
    """One process's stop; ``on_begin(reason)`` is told once, when it begins."""

    def __init__(
        self,
        config: RunConfig,
        group: Group,
        *,
        hard_stop: Callable[[], None] | None = None,
        stop_plan_path: str | None = None,
        on_begin: Callable[[str], None] = lambda _reason: None,
        on_force: Callable[[], None] = lambda: None,
        on_drain_delay: Callable[[], None] = lambda: None,
    ) -> None:
        self._config = config
        self._group = group
        self._hard_stop = hard_stop
        self._hard_timer: threading.Timer | None = None
        #: Where a master leaves its final stop's deadline for this worker (tether.worker).
        self._stop_plan_path = stop_plan_path
        self._on_begin = on_begin
        self._on_force = on_force
        self._on_drain_delay = on_drain_delay
        self._plan: ShutdownPlan | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        #: A stop has begun (requested, or a member's exit).
        self.requested = False

    def plan(self, *, drain_delay: bool = True) -> ShutdownPlan:
        """This stop's plan, made once, when it begins (the first stop signal, or a request).

        A worker whose master wrote a deadline for this stop keeps the master's
        (its drain delay has used part of the budget); anything else begins now.
        """
        if self._plan is None:
            given = read_stop_plan(self._stop_plan_path)
            if given is not None:
                self._plan = ShutdownPlan.until(self._config, given)
            else:
                self._plan = ShutdownPlan.begin(self._config, drain_delay=drain_delay)
        return self._plan

    def under_way(self) -> ShutdownPlan:
        """The plan of the stop under way, for every bound after it began.

        A stop that began in the group (a member's exit) has no plan of its
        own: its plan ends at the group's deadline (read once, here, on the
        plan's clock).
        """
        if self._plan is None:
            deadline = self._group.monotonic_deadline
            now = time.monotonic()
            self._plan = ShutdownPlan.until(self._config, now if deadline is None else deadline)
        return self._plan

    def last_window(self) -> float:
        """Seconds a last export may take once the group is done: to the plan's cancel end.

        At least the group's cancel grace; that alone when no stop has begun.
        """
        grace = ShutdownBudget.of(self._config).group_abandon
        if not self._group.stopping:
            return grace
        plan = self.under_way()
        return max(grace, plan.left(plan.cancel_end))

    def request(
        self,
        reason: str,
        *,
        force: bool = False,
        plan: ShutdownPlan | None = None,
        drain_delay: bool = True,
    ) -> None:
        """Begin a graceful stop (drain delay, then the group); ``force`` cancels at once.

        ``plan``: the deadlines of a stop someone else decided (the master is
        gone: a short one of our own); used only if no stop has begun yet.
        """
        if force:
            logger.warning("%s: cancelling everything now", reason)
            if self._drain_timer is not None:
                self._drain_timer.cancel()  # the drain delay is over too
            self._on_force()
            self.begin(reason)
            self._group.stop(reason, force=True)
            return
        if self.requested:
            return
        if plan is not None and self._plan is None:
            self._plan = plan
        plan = self.plan(drain_delay=drain_delay)
        self.begin(reason)
        delay = plan.left(plan.drain_delay_end)
        logger.info(
            "%s: stopping gracefully within %.1fs (drain delay %.1fs)",
            reason,
            plan.left(plan.deadline),
            delay,
        )
        if delay > 0:
            self._on_drain_delay()
            self._drain_timer = asyncio.get_running_loop().call_later(
                delay, lambda: self._group.stop(reason, deadline=plan.deadline)
            )
        else:
            self._group.stop(reason, deadline=plan.deadline)

    def begin(self, reason: str) -> None:
        """The stop begins (once): the last-resort timer is armed, ``on_begin`` told."""
        if self.requested:
            return
        self.requested = True
        self.arm_hard_stop(self.plan().hard_stop)
        self._on_begin(reason)

    async def begin_with_the_group(self) -> None:
        """A member's exit stops the group without a signal: that is a stop too."""
        reason = await self._group.wait_stopping()
        self.arm_hard_stop(self.under_way().hard_stop)
        self.begin(reason)  # a no-op if it was requested

    def on_signal_now(self, signum: int) -> None:
        """In the signal handler itself, even while the loop is stuck: a stop arms the timer."""
        if signum in signals.STOPPING:
            self.arm_hard_stop(self.plan().hard_stop)

    def arm_hard_stop(self, at: float) -> None:
        """Start the last-resort timer once, for ``at`` (``time.monotonic()``): a stop has begun.

        Thread-safe enough for its callers (the signal handler, the parent
        watcher, the loop): the worst race starts the timer twice, and both
        copies are cancelled at the end.
        """
        if self._hard_stop is None or self._hard_timer is not None:
            return
        self._hard_timer = threading.Timer(max(0.0, at - time.monotonic()), self._hard_stop)
        self._hard_timer.name = "tether-hard-stop"
        self._hard_timer.daemon = True
        self._hard_timer.start()

    def disarm(self) -> None:
        """The process is ending by itself: the last-resort timer is cancelled and gone."""
        timer, self._hard_timer = self._hard_timer, None
        if timer is not None:
            timer.cancel()
            timer.join()  # returns at once; the thread must be gone before the leak check
