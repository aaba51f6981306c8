"""Answers with what its process holds: pid, process group, and every open fd's target."""

from __future__ import annotations

import json
import os
from typing import Any


def _fds() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
            with open(f"/proc/self/fdinfo/{name}") as f:
                flags = int(next(x for x in f if x.startswith("flags:")).split()[1], 8)
        except OSError:
            continue  # the listing's own fd
        found[name] = {"target": target, "mode": flags & os.O_ACCMODE}
    return found


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = json.dumps({"pid": os.getpid(), "pgid": os.getpgid(0), "fds": _fds()}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
