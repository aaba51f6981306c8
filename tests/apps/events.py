"""The note's Tracker scenario: a handler fires off an event and returns at once.

Each request starts background work (0.5 s of simulated network latency, then
one line appended to $EVENTS_FILE). `/plain` uses a bare asyncio.create_task,
as most code does; `/spawn` uses tether.spawn.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import tether

DELAY = float(os.environ.get("EVENT_DELAY", "0.5"))
_lifespan_loop: list[asyncio.Task[None]] = []


async def record(request_id: str) -> None:
    await asyncio.sleep(DELAY)
    with open(os.environ["EVENTS_FILE"], "a") as f:
        f.write(request_id + "\n")


async def heartbeat() -> None:
    """A long-lived loop started during lifespan startup: never adopted."""
    while True:
        await asyncio.sleep(3600)


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await receive()
        _lifespan_loop.append(asyncio.create_task(heartbeat(), name="heartbeat"))
        await send({"type": "lifespan.startup.complete"})
        await receive()
        _lifespan_loop[0].cancel()
        await send({"type": "lifespan.shutdown.complete"})
        return
    request_id = scope["query_string"].decode() or "anonymous"
    if scope["path"] == "/spawn":
        tether.spawn(record(request_id), name=f"event {request_id}")
    else:
        asyncio.create_task(record(request_id))  # noqa: RUF006 - fire and forget, on purpose
    await send({"type": "http.response.start", "status": 202, "headers": []})
    await send({"type": "http.response.body", "body": b"accepted\n"})
