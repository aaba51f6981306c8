"""The demo service of ``make demo``: the note's hello handler, run the tether way.

Try, while it runs (app on :8080, debug server on :8001)::

    curl localhost:8080/                     # the note's handler
    curl 'localhost:8080/slow?seconds=10'    # then Ctrl-C tether: the request still completes
    curl 'localhost:8080/event?name=signup'  # background work, drained at shutdown
    curl 'localhost:8080/jobs?n=5'           # work for the queue consumer member
    curl localhost:8001/debug/tasks          # every task, grouped by stack
    curl localhost:8001/readyz               # 503 while draining

Resource handling: the consumer member owns the job queue; on stop it
finishes the jobs already queued, so no accepted job is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

from tether.app import App
from tether.group import StopToken
from tether.tracker import spawn

__all__ = ["app", "http"]

logger = logging.getLogger("tether.demo")

Scope = MutableMapping[str, Any]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_jobs: asyncio.Queue[int] = asyncio.Queue()


async def _reply(send: Send, body: str, status: int = 200) -> None:
    data = body.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _record_event(name: str) -> None:
    await asyncio.sleep(1.0)  # a slow analytics endpoint
    logger.info("event %r recorded", name)


async def http(scope: Scope, receive: Callable[[], Awaitable[Any]], send: Send) -> None:
    """The HTTP part of the demo."""
    if scope["type"] != "http":
        return
    query = parse_qs(scope["query_string"].decode("latin-1"))
    path = scope["path"]
    if path == "/":
        await _reply(send, "Hello, GopherCon SG\n")
    elif path == "/slow":
        seconds = float(query.get("seconds", ["5"])[0])
        await asyncio.sleep(seconds)
        await _reply(send, f"slept {seconds:g}s\n")
    elif path == "/event":
        name = query.get("name", ["anonymous"])[0]
        spawn(_record_event(name), name=f"event {name}")
        await _reply(send, f"event {name!r} accepted; it is recorded even if you stop me now\n")
    elif path == "/jobs":
        count = int(query.get("n", ["1"])[0])
        for i in range(count):
            _jobs.put_nowait(i)
        await _reply(send, f"{count} job(s) queued; {_jobs.qsize()} waiting\n")
    else:
        await _reply(send, "not found; try /, /slow, /event, /jobs\n", status=404)


app = App(http=http)


@app.member
async def consumer(stop: StopToken) -> None:
    """A queue consumer beside the HTTP server: it stops with the service, after its queue."""
    while not stop.is_set():
        getter = asyncio.ensure_future(_jobs.get())
        stopping = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({getter, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if getter in done:
            await _work(getter.result())
        else:
            getter.cancel()
    while not _jobs.empty():  # finish what was accepted
        await _work(_jobs.get_nowait())
    logger.info("consumer stopped (%s)", stop.reason)


async def _work(job: int) -> None:
    await asyncio.sleep(0.2)
    logger.info("job %d done", job)
