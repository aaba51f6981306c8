"""A FastAPI app as its users write one: lifespan, BackgroundTasks, a websocket, SSE."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from _marks import mark
from fastapi import BackgroundTasks, FastAPI, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse, StreamingResponse
from sse_starlette.sse import EventSourceResponse

VERSION = "v1"

if os.environ.get("FW_NO_ADOPTION_FOR"):  # what an app does to opt a library out
    from tether.tracker import no_adoption_for

    no_adoption_for(*os.environ["FW_NO_ADOPTION_FOR"].split(","))


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    mark("startup")
    yield
    mark("shutdown")


app = FastAPI(lifespan=lifespan)


@app.get("/", response_class=PlainTextResponse)
async def index() -> str:
    return f"{VERSION} {os.getpid()}"


@app.get("/slow", response_class=PlainTextResponse)
async def slow(s: float = 1.0) -> str:
    mark("slow-begin")
    await asyncio.sleep(s)
    return f"slept {s}"


def after_response(n: int) -> None:
    mark(f"background-{n}")


@app.get("/background", response_class=PlainTextResponse)
async def background(n: int, tasks: BackgroundTasks) -> str:
    tasks.add_task(after_response, n)
    return "queued"


@app.get("/sse")
async def sse(count: int = 0) -> EventSourceResponse:
    """``count`` events then the end; 0: an endless stream, one event every 0.1 s."""

    async def events() -> AsyncIterator[dict[str, str]]:
        mark("sse-begin")
        n = 0
        while count == 0 or n < count:
            n += 1
            yield {"data": f"{VERSION} {n}"}
            await asyncio.sleep(0.1)

    return EventSourceResponse(events())


@app.get("/stream")
async def stream() -> StreamingResponse:
    """An endless stream that knows nothing of shutdowns: only the drain deadline ends it."""

    async def chunks() -> AsyncIterator[bytes]:
        mark("stream-begin")
        while True:
            yield b"tick\n"
            await asyncio.sleep(0.1)

    return StreamingResponse(chunks(), media_type="text/plain")


@app.websocket("/ws")
async def echo(ws: WebSocket) -> None:
    await ws.accept()
    try:
        while True:
            await ws.send_text(f"{VERSION} {await ws.receive_text()}")
    except WebSocketDisconnect:
        pass
