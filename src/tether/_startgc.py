"""The garbage collector during a start: held off until the process serves, then caught up.

A start makes tens of thousands of long-lived container objects (tether, its
HTTP engine, asyncio, the app and their modules) and almost no garbage.
Python's collector scans its youngest generation every 700 new containers
and promotes what survives, so a start runs it dozens of times and rescans
the same survivors each time: about 7 % of the import time (measured: 94 ms
of tether's worker imports with the collector, 87 ms without), all of it on
the way to the first answer, for next to nothing found. So ``tether run``
holds automatic collection off from its first line (:func:`hold`, called by
:mod:`tether._entry`), and a process that serves catches up a second after
it does (:func:`catch_up`: the worker or single process once READY, the
master once its first generation is): one collection of the young
generations frees what the start left, the ``--gc-freeze`` freeze follows
(see ``Service._became_ready``), then the collector's thresholds are back.
The catch-up is not done at READY itself because it scans everything the
start made (about 10 ms), which would put the cost back before the first
answer.

Held by the first threshold (``gc.set_threshold(0, ...)`` turns automatic
collection off), not by ``gc.disable()``: an app that disables the
collector or sets its own thresholds while it is imported keeps what it
chose, since the catch-up changes the thresholds only if they are still the
held ones, and never enables a disabled collector.

Invariant: every process forked from a held one either catches up or has no
long life: the keeper releases at once (:func:`release`), the prestarted and
forked workers catch up at READY, a discarded or failed start exits. A
process that never held (``tether.cli.main`` called from Python) is left
alone: both functions do nothing there.
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

__all__ = ["CATCH_UP_DELAY", "catch_up", "hold", "release"]

#: Seconds after a process serves before it collects what its start left.
CATCH_UP_DELAY = 1.0

#: The thresholds before :func:`hold`, or None when the collector is not held.
_before: tuple[int, int, int] | None = None


def hold() -> None:
    """Stop automatic collection until :func:`release` (nothing if already held)."""
    global _before
    if _before is not None:
        return
    _before = gc.get_threshold()
    gc.set_threshold(0, *_before[1:])


def release(*, collect: bool = False, freeze: bool = False) -> None:
    """Give the collector its thresholds back; first collect and freeze if asked.

    ``collect``: the young generations, where everything the start made still
    is; ``freeze``: then ``gc.freeze()`` what survived. Nothing happens in a
    process that does not hold.
    """
    global _before
    before, _before = _before, None
    if before is None:
        return
    _settle(collect=collect, freeze=freeze)
    if gc.get_threshold()[0] == 0:  # still ours: the app did not set its own
        gc.set_threshold(*before)


def _settle(*, collect: bool, freeze: bool) -> None:
    if collect:
        gc.collect(1)  # the young generations, where everything the start made still is
    if freeze:
        gc.freeze()


def catch_up(
    loop: asyncio.AbstractEventLoop, *, freeze: bool = False
) -> asyncio.TimerHandle | None:
    """The process serves: collect the young generations, then ``gc.freeze()`` if ``freeze``.

    Held: :func:`release` does it :data:`CATCH_UP_DELAY` from now, and this
    returns the timer's handle (cancelling it, at a stop within the second,
    leaves the process held, harmless for a process that is ending). Not
    held: done now (nothing without ``freeze``), None.
    """
    if _before is not None:
        return loop.call_later(CATCH_UP_DELAY, lambda: release(collect=True, freeze=freeze))
    _settle(collect=freeze, freeze=freeze)
    return None
