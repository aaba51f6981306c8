"""Apps for the diagnostics scenarios: stuck members, blocked loops, hostile paths, memory hogs."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from plain import _lifespan, _respond, app

import tether

stuck = tether.App(http=app)


async def wait_for_the_queue(queue: asyncio.Queue[int]) -> int:
    """Where the stuck member sits: a queue nobody ever puts on."""
    return await queue.get()


@stuck.member
async def deaf_consumer(stop: tether.StopToken) -> None:
    """A member that never looks at its stop token: it is cancelled at the deadline."""
    await wait_for_the_queue(asyncio.Queue())


async def hostile(scope: Any, receive: Any, send: Any) -> None:
    """`/fail…` raises naming its path; `/spawn…` starts a task that fails (adopted, so its
    failure is logged with the request that started it); anything else is 200."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    path = scope["path"]
    if path.startswith("/fail"):
        raise RuntimeError(f"cannot serve {path}")
    if path.startswith("/spawn"):

        async def doomed() -> None:
            raise ValueError("background work failed")

        _started.append(asyncio.create_task(doomed(), name="doomed"))
    await _respond(send, b"ok\n")


_started: list[asyncio.Task[None]] = []


async def hog(scope: Any, receive: Any, send: Any) -> None:
    """`/hog?mib=N` fills N MiB of memory (written, so resident) and keeps it."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    if scope["path"] == "/hog":
        mib = int(scope["query_string"].decode().partition("=")[2] or "512")
        _kept.append(b"\x01" * (mib << 20))
    await _respond(send, b"ok\n")


_kept: list[bytes] = []


def crunch_until(flag: str, limit: float = 20.0) -> None:
    """What blocks the loop: CPU-bound work in the handler, until ``flag`` exists (or ``limit``)."""
    deadline = time.monotonic() + limit
    while not os.path.exists(flag) and time.monotonic() < deadline:
        sum(i * i for i in range(10_000))


async def blocking_handler(scope: Any, receive: Any, send: Any) -> None:
    """`/crunch?flag=PATH[&limit=S]` blocks the event loop until PATH exists (at most S s, 20)."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    if scope["path"] == "/crunch":
        query = dict(pair.split("=", 1) for pair in scope["query_string"].decode().split("&"))
        crunch_until(query["flag"], float(query.get("limit", 20.0)))
    await _respond(send, b"ok\n")
