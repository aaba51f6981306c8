"""The first of two waits: ``first(a, b)``, and nothing left running after it.

"Until the worker is READY or exits", "until the work ends or the stop comes":
the same race, with the same ways to get it wrong (a task started for the
race and never cancelled; one cancelled and never awaited; an error of the
side that lost the race dropped). It is written once, here.

Resource handling: a coroutine passed to :func:`first` runs in a task that
:func:`first` owns; when it loses, it is cancelled **and awaited** before
:func:`first` returns or raises, also when :func:`first` itself is cancelled
(a deadline passing, say). A future or task passed in belongs to the caller
and is never cancelled (a child's exit future, a pending request's outcome
are shared).

Error handling: the side that finished first gives its result or raises its
exception (a future cancelled by someone else raises ``CancelledError``, as
awaiting it would). When both finish in the same turn of the loop, ``a``
counts as first. An exception other than cancellation from the other side,
if :func:`first` owns it (it failed in the same turn, or while unwinding), is
raised too (unless the winner raised), rather than lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Literal, TypeVar

__all__ = ["first"]

A = TypeVar("A")
B = TypeVar("B")


async def first(a: Awaitable[A], b: Awaitable[B]) -> tuple[Literal[0], A] | tuple[Literal[1], B]:
    """Wait for ``a`` or ``b``: ``(0, a's result)`` or ``(1, b's result)``, whichever ends first.

    The loser, if :func:`first` started it from a coroutine, is cancelled and
    awaited. A deadline is the caller's: under ``asyncio.timeout(...)``,
    :func:`first` cancels and awaits both of its own before the timeout is raised.
    """
    futures: list[asyncio.Future[Any]] = []
    owned: list[asyncio.Future[Any]] = []
    try:
        for side in (a, b):
            if asyncio.isfuture(side):
                futures.append(side)
            else:
                task = asyncio.ensure_future(side)
                futures.append(task)
                owned.append(task)
        done, _ = await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    finally:
        losers = [f for f in owned if not f.done()]
        for f in losers:
            f.cancel()
        if losers:
            await _unwound(losers)
        # Read the outcome of each of ours, so that none is logged as "never retrieved".
        errors = {f: f.exception() for f in owned if not f.cancelled()}
    winner = futures[0] if futures[0] in done else futures[1]
    result = winner.result()  # raises the winner's exception
    for f, exc in errors.items():
        if f is not winner and exc is not None:
            raise exc
    return (0, result) if winner is futures[0] else (1, result)


async def _unwound(losers: list[asyncio.Future[Any]]) -> None:
    """Wait for ``losers`` (just cancelled) to end, even if the caller is cancelled meanwhile."""
    cancelled = False
    while True:
        try:
            await asyncio.wait(losers)  # never cancels what it waits for
        except asyncio.CancelledError:
            cancelled = True  # ours comes after theirs: nothing we started outlives us
        else:
            break
    if cancelled:
        raise asyncio.CancelledError
