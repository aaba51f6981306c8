"""What runs only while a connection is open: the set that says so, and a once-a-second clock.

An idle service costs nothing: no timer is due and nothing wakes the event
loop. uvicorn refreshes its ``date`` header from a 100 ms tick that runs even
when idle; here the set of open connections (:class:`Connections`) says when
it turns busy (the first connection opens) and idle (no connection has been
open for up to a second), and a :class:`SecondClock` runs in between: just
after each wall-clock second begins (so a ``date`` header is never a second
behind) it refreshes what is dated, reports how late it fired (the event
loop's lag, sampled only while there is traffic to be delayed) and runs the
cheap checks only traffic makes necessary (``DrainHooks.tick``:
``--max-worker-memory``).

Why idle is not "the last connection closed": under ``Connection: close``
traffic the set empties between two connections hundreds of times a second,
and each time stopping and starting what runs only with traffic (this clock,
the head-deadline sweep, the blocked-loop watch and the thread it wakes) cost
more than running it (measured: the loop watch's thread woke 1,100 times a
second in a worker serving 10,000 closed connections a second). So the set
looks again a second after it empties and says idle only if it still is.

Invariant: ``Connections.empty`` is set exactly while the set is empty; the
two callbacks alternate, busy first; idle comes ``idle_after`` seconds after
the set last emptied at the latest, no sooner than ``idle_after`` after it
first did, and never while a connection is open, except from
:meth:`Connections.close` (the server is done: nothing is busy after it); a
clock has at most one timer due, and none once stopped.

Resource handling: one ``TimerHandle`` per running clock, cancelled by
:meth:`SecondClock.stop`; at most one for the set's idle check, which ends by
itself or by :meth:`Connections.close`, after which none is made; no task,
no thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Connections", "SecondClock"]


class Connections(set[Any]):
    """A server's set of open connections, telling when it turns busy and when idle.

    ``on_busy`` runs when the first connection opens after idle; ``on_idle``
    when the set, looked at ``idle_after`` seconds after it emptied, is still
    empty (see the module docstring). It changes once per connection, so a
    Python-level hook costs nothing that matters. (The request-task set changes
    twice per request; it stays a plain set and the drain waits on the tasks
    themselves.)
    """

    def __init__(
        self, on_busy: Callable[[], None], on_idle: Callable[[], None], idle_after: float = 1.0
    ) -> None:
        super().__init__()
        self.empty = asyncio.Event()
        self.empty.set()
        self._on_busy = on_busy
        self._on_idle = on_idle
        self._idle_after = idle_after
        self._busy = False
        self._closed = False
        self._check: asyncio.TimerHandle | None = None

    def add(self, item: Any) -> None:
        if not self:
            self.empty.clear()
            if not self._busy and not self._closed:
                self._busy = True
                self._on_busy()
        set.add(self, item)

    def discard(self, item: Any) -> None:
        set.discard(self, item)
        if not self and not self.empty.is_set():
            self.empty.set()
            if self._check is None and self._busy:
                loop = asyncio.get_running_loop()
                self._check = loop.call_later(self._idle_after, self._look)

    def remove(self, item: Any) -> None:  # uvicorn's websocket protocols use remove
        if item not in self:
            raise KeyError(item)
        self.discard(item)

    def close(self) -> None:
        """The server is done: idle now, connections still closing or not; no check after."""
        self._closed = True
        self._idle()

    def _look(self) -> None:
        if not self:
            self._idle()
        else:
            self._check = None  # a later emptying schedules the next look

    def _idle(self) -> None:
        if self._check is not None:
            self._check.cancel()
            self._check = None
        if self._busy:
            self._busy = False
            self._on_idle()


class SecondClock:
    """Between ``start()`` and ``stop()``: at once, then just after each wall-clock second begins.

    Each time it calls ``on_second(time.time())``, then ``lag(seconds)`` with
    how late it fired on the loop's clock, then ``tick()``; any of them may
    stop it.
    """

    def __init__(
        self,
        *,
        on_second: Callable[[float], None] | None = None,
        lag: Callable[[float], None] | None = None,
        tick: Callable[[], None] | None = None,
    ) -> None:
        self._on_second = on_second
        self._lag = lag
        self._tick = tick
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0  # loop time the next firing is due

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._handle is not None

    def start(self) -> None:
        """Fire now (in the next loop step), then every second; a no-op while running."""
        if self._handle is not None:
            return
        loop = self._loop = asyncio.get_running_loop()
        self._due = loop.time()
        self._handle = loop.call_later(0, self._fire)

    def stop(self) -> None:
        """No more firings until the next ``start()``."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        now = time.time()
        loop = self._loop
        assert loop is not None
        late = loop.time() - self._due
        # Fire just after the next second starts, so what is dated is never a second behind.
        # Scheduled before the callbacks run, so that one which stops the clock stops it.
        delay = 1.0 - now % 1.0
        self._due = loop.time() + delay
        self._handle = loop.call_later(delay, self._fire)
        if self._on_second is not None:
            self._on_second(now)
        if self._lag is not None:
            self._lag(late)
        if self._tick is not None:
            self._tick()
