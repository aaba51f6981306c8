"""A Starlette app: lifespan, a background task, a finite stream, a slow route."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from _marks import mark
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

VERSION = "v1"


@asynccontextmanager
async def lifespan(_app: Starlette) -> AsyncIterator[None]:
    mark("startup")
    yield
    mark("shutdown")


async def index(_request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"{VERSION} {os.getpid()}")


async def slow(request: Request) -> PlainTextResponse:
    mark("slow-begin")
    seconds = float(request.query_params.get("s", "1"))
    await asyncio.sleep(seconds)
    return PlainTextResponse(f"slept {seconds}")


async def background(request: Request) -> PlainTextResponse:
    n = request.query_params["n"]
    return PlainTextResponse("queued", background=BackgroundTask(mark, f"background-{n}"))


async def stream(request: Request) -> StreamingResponse:
    count = int(request.query_params.get("count", "3"))

    async def chunks() -> AsyncIterator[bytes]:
        for n in range(count):
            yield f"{VERSION} {n}\n".encode()
            await asyncio.sleep(0.01)

    return StreamingResponse(chunks(), media_type="text/plain")


app = Starlette(
    routes=[
        Route("/", index),
        Route("/slow", slow),
        Route("/background", background),
        Route("/stream", stream),
    ],
    lifespan=lifespan,
)
