"""An app that answers with what it sees of each request, as JSON (for the option tests)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any
from urllib.parse import parse_qs


async def app(scope: Any, receive: Any, send: Any) -> None:
    """`/...` answers the scope as JSON; `/slow?seconds=N` first waits; `?log=X` logs X.

    A websocket echoes each text message.
    """
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message.get("text") or ""})
    query = parse_qs(scope["query_string"].decode())
    if "raise" in query:
        raise RuntimeError("the handler failed before responding")
    if "log" in query:
        logging.getLogger("echo").warning("the app says %s", query["log"][0])
    if scope["path"].endswith("/slow"):
        await asyncio.sleep(float(query.get("seconds", ["1"])[0]))
    body = json.dumps(
        {
            "client": scope.get("client"),
            "server": scope.get("server"),
            "scheme": scope["scheme"],
            "root_path": scope.get("root_path", ""),
            "path": scope["path"],
            "pid": os.getpid(),
            "env": os.environ.get(query.get("env", ["ECHO_SETTING"])[0]),
        }
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Asgi2App:
    """The same app in ASGI 2's shape: built with the scope, then called with receive and send."""

    def __init__(self, scope: Any) -> None:
        self.scope = scope

    async def __call__(self, receive: Any, send: Any) -> None:
        await app(self.scope, receive, send)


def create_app() -> Any:
    """A factory, as `--factory` names one."""
    return app


async def no_lifespan(scope: Any, receive: Any, send: Any) -> None:
    """An app that fails on the lifespan protocol (tolerated under --lifespan auto)."""
    if scope["type"] == "lifespan":
        raise RuntimeError("this app does not speak lifespan")
    await app(scope, receive, send)
