"""An app with children of its own: orphans it leaves behind, and a child it waits for.

Routes (plain text or JSON):

- ``/pid``: this process's pid;
- ``/orphans?n=10``: a shell backgrounds ``n`` short sleeps and exits, so
  they are orphans when they end; answers their pids;
- ``/state?pids=1,2``: for each pid, its state letter in /proc or ``gone``;
- ``/waited``: starts a child that exits with 7, waits until it is a
  zombie, leaves 10 orphans and waits until every one is reaped (so any
  reaper has run since the child exited), then collects the child's exit
  status itself and answers it;
- ``/exit?code=N``: this process exits at once with code N.

With ``FAMILY_HOLD`` naming a file, a process that starts while that file
exists holds its lifespan startup until the file is removed: a test can keep a
successor "starting" for exactly as long as it needs.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from typing import Any
from urllib.parse import parse_qs

#: How long each orphan lives once its parent shell has exited.
ORPHAN_LIFE = 0.3


def state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):  # reaped before the open, or the read
        return "gone"
    return stat[stat.rfind(b")") + 2 :].split()[0].decode()


def leave_orphans(n: int) -> list[int]:
    script = f"for i in $(seq {n}); do sleep {ORPHAN_LIFE} & echo $!; done"
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    return [int(line) for line in out.stdout.split()]


def wait_until(predicate: Any, within: float) -> bool:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def waited() -> dict[str, Any]:
    child = subprocess.Popen(["sh", "-c", "exit 7"])
    zombie = wait_until(lambda: state(child.pid) == "Z", 10)
    orphans = leave_orphans(10)
    reaped = wait_until(lambda: all(state(p) == "gone" for p in orphans), 10)
    return {"zombie": zombie, "orphans_reaped": reaped, "status": child.wait()}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await receive()
        hold = os.environ.get("FAMILY_HOLD")
        while hold and os.path.exists(hold):
            await asyncio.sleep(0.01)
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    path = scope["path"]
    result: Any
    if path == "/orphans":
        result = await asyncio.to_thread(leave_orphans, int(query.get("n", "10")))
    elif path == "/state":
        result = {p: state(int(p)) for p in query["pids"].split(",")}
    elif path == "/waited":
        result = await asyncio.to_thread(waited)
    elif path == "/exit":
        os._exit(int(query["code"]))
    else:
        result = os.getpid()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps(result).encode()})
