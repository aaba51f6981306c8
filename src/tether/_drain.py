"""The drain signal: whether the app's server has begun to drain, where code can see it.

Long-lived work inside an app (an event stream, a ticker, a library's
watcher) should end when the service stops taking requests, not at the
deadline. uvicorn's answer is a flag on its ``Server``, ``should_exit``, and
libraries written for uvicorn find that server as the object SIGTERM's
handler is a method of (sse-starlette does). tether has no such server, so it
offers a :class:`DrainSignal` in that shape: the runtime binds its signal
handler to it and the app's :class:`~tether.serving.HttpServer` sets it when
its listeners close. Apps ask :func:`drain_signal` for it.

Invariant: a signal once set stays set; :func:`drain_signal` returns the
signal of the app server running in this process, and one that is never set
when none is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

__all__ = ["DrainSignal", "app_shutdown_reserve", "current_drain_signal", "drain_signal"]


class DrainSignal:
    """Whether a drain has begun, in the shape of uvicorn's ``Server`` flags.

    ``should_exit`` turns true when the server stops accepting (phase 3) and
    ``force_exit`` when the stop is forced; ``await signal.wait()`` returns
    then. Libraries written for uvicorn look for ``should_exit`` on the
    object SIGTERM's handler is a method of (sse-starlette ends its open
    streams when it turns true); under ``tether run`` that object is this one.
    Apps reach it with :func:`drain_signal`.
    """

    def __init__(self) -> None:
        self.should_exit = False
        self.force_exit = False
        self._event = asyncio.Event()

    def __repr__(self) -> str:
        return f"<DrainSignal should_exit={self.should_exit} force_exit={self.force_exit}>"

    def set(self, *, force: bool = False) -> None:
        """Say the drain has begun (``force``: the stop skips to cancelling)."""
        self.should_exit = True
        self.force_exit = self.force_exit or force
        self._event.set()

    def is_set(self) -> bool:
        """True once the drain has begun."""
        return self.should_exit

    async def wait(self) -> None:
        """Return once the drain has begun."""
        await self._event.wait()


_current: DrainSignal | None = None


def drain_signal() -> DrainSignal:
    """The drain signal of the app server running in this process.

    Outside a server (a script, a test) it is a signal that is never set.
    """
    global _current
    if _current is None:
        _current = DrainSignal()
    return _current


@contextlib.contextmanager
def current_drain_signal(signal: DrainSignal) -> Iterator[None]:
    """Make ``signal`` the one :func:`drain_signal` returns, for the block."""
    global _current
    previous, _current = _current, signal
    try:
        yield
    finally:
        _current = previous


def app_shutdown_reserve(budget: float) -> float:
    """Seconds of a shutdown ``budget`` kept for the app's own shutdown (phase 6).

    A tenth of the budget, at least a second, at most half of it: 3 s of the
    default 30 s, 1 s of 5 s.
    """
    return min(budget / 2, max(1.0, budget / 10))
