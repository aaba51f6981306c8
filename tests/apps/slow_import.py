"""An app whose import lasts until a test lets it go, and says when it has begun (a marker file).

The import writes its pid to ``SLOW_IMPORT_MARKER`` (whole, by a rename) and goes on
importing until that file is removed, so whatever a test does before removing it
reaches a process that is still importing, however slow the machine. It gives up
waiting after ``SLOW_IMPORT_SECONDS``.
"""

import os
import time
from pathlib import Path
from typing import Any

marker = Path(os.environ["SLOW_IMPORT_MARKER"])
partial = marker.with_name(marker.name + ".partial")
partial.write_text(str(os.getpid()))
partial.replace(marker)
deadline = time.monotonic() + float(os.environ.get("SLOW_IMPORT_SECONDS", "60"))
while marker.exists() and time.monotonic() < deadline:
    time.sleep(0.01)


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
