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
import types
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
    owner: object = None,
) -> Iterator[None]:
    """Route each signal in ``handlers`` to its callback on ``loop`` while the block runs.

    ``immediate``, when given, is called synchronously in the signal handler
    itself, before the loop sees the signal; it must be short and thread-safe.
    ``owner``, when given, is the object the installed handler is a method of
    (``signal.getsignal(sig).__self__``): libraries written for uvicorn look
    there for its server's ``should_exit``.
    """

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if immediate is not None:
            immediate(signum)
        with contextlib.suppress(RuntimeError):  # the loop has just closed
            loop.call_soon_threadsafe(handlers[signum], signum)

    def bound(_owner: object, signum: int, frame: FrameType | None) -> None:
        on_signal(signum, frame)

    installed: Any = on_signal if owner is None else types.MethodType(bound, owner)
    previous: dict[int, Any] = {}
    try:
        for signum in handlers:
            previous[signum] = signal.signal(signum, installed)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
