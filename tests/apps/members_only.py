"""A service with no HTTP part: one member, and background work it leaves that never ends.

The member starts ``tether.spawn(forever())`` and waits for the stop; with no
HTTP server to run phase 5, the runtime drains that work itself, by the stop
plan's deadline (test_shutdown_plan.py).
"""

from __future__ import annotations

import asyncio

import tether


async def forever() -> None:
    """Background work that only a cancellation ends."""
    await asyncio.Event().wait()


async def consumer(stop: tether.StopToken) -> None:
    tether.spawn(forever(), name="forever")
    await stop


app = tether.App(members={"consumer": consumer})
