"""Answers with its pid and what a gunicorn config's hooks left in its process."""

import json
import os
import sys
from typing import Any


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    boot = sys.modules.get("tracing_boot")
    body = {
        "pid": os.getpid(),
        "raw_env": os.environ.get("FROM_RAW_ENV"),
        "dumps_calls": getattr(boot, "CALLS", None),
    }
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": payload})
