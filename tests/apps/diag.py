"""Apps for the diagnostics scenarios: stuck members, blocked loops, hostile paths, memory hogs."""

from __future__ import annotations

import asyncio

from plain import app

import tether

stuck = tether.App(http=app)


async def wait_for_the_queue(queue: asyncio.Queue[int]) -> int:
    """Where the stuck member sits: a queue nobody ever puts on."""
    return await queue.get()


@stuck.member
async def deaf_consumer(stop: tether.StopToken) -> None:
    """A member that never looks at its stop token: it is cancelled at the deadline."""
    await wait_for_the_queue(asyncio.Queue())
