"""Sets a prometheus_client live gauge in multiprocess mode: one file per worker pid."""

import os
from typing import Any

from prometheus_client import Gauge

IN_FLIGHT = Gauge("app_in_flight", "requests being served", multiprocess_mode="livesum")


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    IN_FLIGHT.set(1)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
