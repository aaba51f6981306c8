"""A Litestar app: startup and shutdown hooks, a JSON route, a slow route."""

from __future__ import annotations

import asyncio
import os

from _marks import mark
from litestar import Litestar, get

VERSION = "v1"


@get("/", sync_to_thread=False)
def index() -> str:
    return f"{VERSION} {os.getpid()}"


@get("/slow")
async def slow(s: float = 1.0) -> str:
    mark("slow-begin")
    await asyncio.sleep(s)
    return f"slept {s}"


@get("/items/{item_id:int}", sync_to_thread=False)
def item(item_id: int) -> dict[str, object]:
    return {"id": item_id, "version": VERSION}


app = Litestar(
    route_handlers=[index, slow, item],
    on_startup=[lambda: mark("startup")],
    on_shutdown=[lambda: mark("shutdown")],
)
