"""A blocked event loop, logged while it is still blocked, with the stack that blocks it.

A handler that runs three seconds of CPU (or a blocking call) in the event
loop stalls every request of the process, and nothing in the loop can say so
until it runs again. The watchdog kills a loop blocked for a whole
``--watchdog-timeout``; this is the early word: a loop running later than
``--blocked-loop-threshold`` gets one WARNING line, written from a thread
while the block goes on, with the loop thread's stack (the function that
blocks it); and one line when the loop runs again.

The line also says, from ``/proc/self/task/TID/schedstat``, how long the
loop thread ran on a CPU and how long it waited for one in that time: a
process starved of CPU on a busy machine runs late too, and that is not its
code's fault.

How: while connections are open, the loop runs a timer every quarter of the
threshold that notes when it is next due. A watcher thread sleeps until that
time plus the threshold; if the timer has not run by then, the loop is
blocked, and the thread reads the loop thread's frame
(``sys._current_frames``). With no connection open for a second (not at each
moment between two connections: tether._traffic), the timer stops and the
thread sleeps without a timeout: an idle service wakes up for nothing, as
with the date-header clock, and what a block costs nobody is left to the
watchdog.

Invariant: one line per blocked episode, however long; a block shorter than
the threshold is never reported (the loop is judged late only from the time
its timer was due, so the block was at least that long).

Resource handling: the thread starts with the first connection after
:meth:`LoopWatch.enable` (the runtime calls it once serving) and is stopped
and joined by :meth:`LoopWatch.close`, at the end of the run.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback

__all__ = ["LoopWatch"]

logger = logging.getLogger("tether.runtime")

#: Frames of the blocked stack shown, innermost last (what blocks is at the bottom).
_STACK_LIMIT = 30


class LoopWatch:
    """Watches the running event loop for blocks longer than ``threshold`` seconds."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._period = threshold / 4
        self._cond = threading.Condition()
        self._armed = False
        self._closed = False
        self._enabled = False
        self._busy = False
        #: time.monotonic() at which the loop's timer is next due (written by the loop).
        self._due = 0.0
        #: The ``_due`` of the episode the thread reported; the loop's next tick clears it.
        self._reported: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        #: The loop thread's CPU time and run-queue wait (Linux), sampled by the watcher.
        self._schedstat = ""
        self._sample: tuple[float, int, int] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None

    # -- the loop's side ------------------------------------------------------------

    def traffic(self, busy: bool) -> None:
        """The first connection opened (True), or none has been open for a while (False)."""
        self._busy = busy
        if not self._enabled:
            return
        if busy:
            self._arm()
        else:
            self._disarm()

    def enable(self) -> None:
        """Begin watching (the service is serving); at once if a connection is open."""
        self._enabled = True
        if self._busy:
            self._arm()

    def _arm(self) -> None:
        if self._closed or self._handle is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._schedstat = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        self._tick()
        with self._cond:
            self._armed = True
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="tether-loop-watch", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        with self._cond:
            self._armed = False

    def _tick(self) -> None:
        now = time.monotonic()
        with self._cond:  # uncontended but for a report: a few hundred ns
            reported, self._reported = self._reported, None
            self._due = now + self._period
        if reported is not None:
            logger.warning("event loop unblocked after at least %.2fs", now - reported)
        assert self._loop is not None
        self._handle = self._loop.call_later(self._period, self._tick)

    def close(self) -> None:
        """Stop the timer and the thread (joined: nothing is left running)."""
        self._disarm()
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(5)

    # -- the watcher thread -----------------------------------------------------------

    def _watch(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                if not self._armed:
                    self._cond.wait()
                    continue
                due = self._due
                left = due + self.threshold - time.monotonic()
                if left > 0:
                    self._sample = self._scheduled()  # the baseline of a coming report
                if left > 0 or self._reported == due:
                    # On time so far, or this episode is already reported: look again later.
                    self._cond.wait(left if left > 0 else self.threshold)
                    continue
                self._reported = due
            self._report(time.monotonic() - due)  # outside the lock: logging may block

    def _scheduled(self) -> tuple[float, int, int] | None:
        """(now, ns the loop thread ran, ns it waited for a CPU); None off Linux."""
        try:
            with open(self._schedstat, "rb") as f:
                ran, waited = f.read().split()[:2]
        except (OSError, ValueError):
            return None
        return time.monotonic(), int(ran), int(waited)

    def _cpu_story(self) -> str:
        """What the scheduler says of the loop thread since the watcher last looked."""
        before, after = self._sample, self._scheduled()
        if before is None or after is None:
            return ""
        wall = after[0] - before[0]
        ran, waited = (after[1] - before[1]) / 1e9, (after[2] - before[2]) / 1e9
        # Both facts: code that blocks runs (or sleeps); a process starved of CPU waits.
        return (
            f"in the last {wall:.2f}s the loop thread ran {ran:.2f}s on a CPU "
            f"and waited {waited:.2f}s for one"
        )

    def _report(self, late: float) -> None:
        frame = sys._current_frames().get(self._loop_thread)
        stack = "".join(traceback.format_stack(frame, _STACK_LIMIT)) if frame else ""
        story = self._cpu_story()
        logger.warning(
            "event loop blocked for %.2fs so far (--blocked-loop-threshold %gs%s); "
            "it is running:\n%s",
            late,
            self.threshold,
            f"; {story}" if story else "",
            stack.rstrip("\n") or "  (no stack: the loop thread is gone)",
        )
