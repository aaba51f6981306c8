"""Signals become calls on the event loop; previous handlers come back afterwards.

We install handlers with ``signal.signal`` rather than
``loop.add_signal_handler`` for two reasons: the previous Python-level
handlers can be restored exactly when the runtime returns, and the handler
runs in the main thread even while the event loop is stuck in blocking code,
so the ``immediate`` hook (for example arming a last-resort timer) still
fires. The callback proper always runs on the loop, via
``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator, Mapping
from types import FrameType
from typing import Any

__all__ = ["handle_signals"]

Handler = Callable[[int], None]


@contextlib.contextmanager
def handle_signals(
    loop: asyncio.AbstractEventLoop,
    handlers: Mapping[int, Handler],
    *,
    immediate: Handler | None = None,
) -> Iterator[None]:
    """Route each signal in ``handlers`` to its callback on ``loop`` while the block runs.

    ``immediate``, when given, is called synchronously in the signal handler
    itself, before the loop sees the signal; it must be short and thread-safe.
    """

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if immediate is not None:
            immediate(signum)
        with contextlib.suppress(RuntimeError):  # the loop has just closed
            loop.call_soon_threadsafe(handlers[signum], signum)

    previous: dict[int, Any] = {}
    try:
        for signum in handlers:
            previous[signum] = signal.signal(signum, on_signal)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
