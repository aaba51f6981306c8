"""An app for the HTTP/1 wire tests: numbered answers, and bodies without a length."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs

from tether.serving import drain_signal


async def app(scope: Any, receive: Any, send: Any) -> None:
    """`/answer?n=N` answers "N"; `/stream` streams a body without a length.

    `&after=drain` first waits until the server drains; `&seconds=S` then takes S seconds;
    `&times=K` answers "N" K times over (a large body).
    `/stream?te=1` names chunked coding itself, as some apps do.
    """
    if scope["type"] != "http":
        return  # no lifespan
    query = parse_qs(scope["query_string"].decode())
    if scope["path"] == "/answer":
        if "after" in query:
            await drain_signal().wait()
        await asyncio.sleep(float(query.get("seconds", ["0"])[0]))
        body = query["n"][0].encode() * int(query.get("times", ["1"])[0])
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    headers = [(b"content-type", b"text/plain")]
    if "te" in query:
        headers.append((b"transfer-encoding", b"chunked"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for chunk in (b"one\n", b"two\n"):
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await asyncio.sleep(0)  # each chunk in its own loop step, as a real stream's
    await send({"type": "http.response.body", "body": b""})
