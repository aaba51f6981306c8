"""Answers with the collector's state: frozen objects, startup's garbage, the thresholds.

Its lifespan startup leaves a reference cycle behind (garbage only the
collector can free): frozen with the rest, it would never be freed. The
answer is ``FROZEN COLLECTED AT_IMPORT NOW``: the first threshold while this
module was imported (0: automatic collection held off) and now.
"""

import gc
from typing import Any

collected = False
AT_IMPORT = gc.get_threshold()[0]


class Cycle:
    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        global collected
        collected = True


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                Cycle()  # unreachable at once, freed only by a collection
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = f"{gc.get_freeze_count()} {collected} {AT_IMPORT} {gc.get_threshold()[0]}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
