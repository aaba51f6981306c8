"""Small apps the end-to-end tests run with `tether run`, as a user would."""

from __future__ import annotations

import asyncio
import sys
from typing import Any
from urllib.parse import parse_qs

import tether


async def _lifespan(receive: Any, send: Any, *, fail: bool = False, hang: bool = False) -> None:
    message = await receive()
    assert message["type"] == "lifespan.startup"
    if fail:
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
        return
    await send({"type": "lifespan.startup.complete"})
    await receive()
    if hang:
        await asyncio.Event().wait()  # an app whose shutdown never finishes
    await send({"type": "lifespan.shutdown.complete"})


async def _respond(send: Any, body: bytes, status: int = 200) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def app(scope: Any, receive: Any, send: Any) -> None:
    """`/` says hello; `/slow?seconds=N` takes N seconds."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    query = parse_qs(scope["query_string"].decode())
    if scope["path"] == "/slow":
        await asyncio.sleep(float(query.get("seconds", ["1"])[0]))
    await _respond(send, b"hello\n")


async def failing_startup(scope: Any, receive: Any, send: Any) -> None:
    """An app whose lifespan startup fails."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send, fail=True)
    await _respond(send, b"never\n")


async def hanging_shutdown(scope: Any, receive: Any, send: Any) -> None:
    """An app whose lifespan shutdown never finishes."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send, hang=True)
    await _respond(send, b"hello\n")


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """A WSGI app, hosted through a2wsgi."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello from wsgi\n"]


not_an_app = 42

service = tether.App(http=app)
consumed: list[str] = []


@service.member
async def consumer(stop: tether.StopToken) -> None:
    """A queue consumer that runs beside the HTTP app and stops with it."""
    await stop
    print("consumer stopped:", stop.reason, flush=True)


def create_app() -> Any:
    """A factory, as `tether run plain:create_app` would call it."""
    return app


async def blocking(scope: Any, receive: Any, send: Any) -> None:
    """`/block` blocks the event loop for good, as a careless sync call would."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    if scope["path"] == "/block":
        import time

        print("blocking the event loop", file=sys.stderr, flush=True)  # for a test to wait on
        time.sleep(3600)
    await _respond(send, b"hello\n")


crashing = tether.App(http=app)


@crashing.member
async def flaky_consumer(stop: tether.StopToken) -> None:
    """A member that fails while the service runs."""
    await asyncio.sleep(0.2)
    raise ConnectionError("broker went away")


leaky = tether.App(http=app)


@leaky.member
async def starts_and_forgets(stop: tether.StopToken) -> None:
    """A member that starts a task blocked forever on a queue and a thread that never ends."""
    import threading

    async def consume(queue: asyncio.Queue[int]) -> None:
        await queue.get()  # nobody will ever put

    _forgotten.append(asyncio.get_running_loop().create_task(consume(asyncio.Queue())))
    never = threading.Event()
    threading.Thread(target=never.wait, name="forgotten-thread", daemon=True).start()
    await stop


_forgotten: list[asyncio.Task[None]] = []


async def slow_startup(scope: Any, receive: Any, send: Any) -> None:
    """An app whose lifespan startup takes a minute."""
    if scope["type"] == "lifespan":
        await receive()
        print("lifespan startup begins", file=sys.stderr, flush=True)  # for a test to wait on
        await asyncio.sleep(60)
        await send({"type": "lifespan.startup.complete"})
        return
    await _respond(send, b"hello\n")


worker_only = tether.App()


@worker_only.member
async def scheduler(stop: tether.StopToken) -> None:
    """A service with no HTTP at all: it spawns background work, then stops when told."""

    async def job() -> None:
        await asyncio.sleep(0.5)
        print("background job finished", flush=True)

    tether.spawn(job(), name="nightly job")
    await stop


async def echo_ws(scope: Any, receive: Any, send: Any) -> None:
    """A websocket echo endpoint at any path."""
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    if scope["type"] != "websocket":
        return await _respond(send, b"websockets only\n", status=400)
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message.get("text") or ""})
