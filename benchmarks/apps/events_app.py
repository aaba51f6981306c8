"""The note's Tracker scenario, the same for every server measured.

Each request starts background work with a bare ``asyncio.create_task`` (0.5 s
of simulated network latency, then one line appended to $EVENTS_FILE) and
returns at once. ``/spawn`` uses ``tether.spawn`` instead (tether only).
"""

import asyncio
import os
from typing import Any

FILE = os.environ["EVENTS_FILE"]


async def record(request_id: str) -> None:
    await asyncio.sleep(0.5)
    with open(FILE, "a") as f:
        f.write(request_id + "\n")


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    request_id = scope["query_string"].decode()
    if scope["path"] == "/spawn":
        import tether

        tether.spawn(record(request_id))
    else:
        asyncio.create_task(record(request_id))  # noqa: RUF006 - fire and forget, as users do
    await send({"type": "http.response.start", "status": 202, "headers": []})
    await send({"type": "http.response.body", "body": b"accepted\n"})
