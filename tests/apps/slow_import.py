"""An app whose import takes a while and says when it has begun (a marker file)."""

import os
import time
from pathlib import Path
from typing import Any

Path(os.environ["SLOW_IMPORT_MARKER"]).write_text(str(os.getpid()))
time.sleep(float(os.environ.get("SLOW_IMPORT_SECONDS", "1.5")))


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
