"""Answers with what the app sees of the debug token in its environment."""

import os
from typing import Any


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = os.environ.get("TETHER_DEBUG_TOKEN", "(unset)").encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
