"""Answers every request with the names of the modules its process has imported (JSON)."""

from __future__ import annotations

import json
import sys
from typing import Any


async def app(scope: Any, receive: Any, send: Any) -> None:
    """`/...` answers ``sorted(sys.modules)``."""
    if scope["type"] != "http":
        return
    body = json.dumps(sorted(sys.modules)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
