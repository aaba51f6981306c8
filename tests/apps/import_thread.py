"""An app whose import starts a thread for the life of the process, as Litestar's logging does."""

import logging
import logging.handlers
import queue
from typing import Any

_queue: "queue.Queue[logging.LogRecord]" = queue.Queue()
listener = logging.handlers.QueueListener(_queue, logging.NullHandler())
listener.start()


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
