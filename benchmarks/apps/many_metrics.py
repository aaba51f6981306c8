"""An app with 1,000 prometheus_client series, every one touched at import.

500 counter series, 245 livesum gauge series and 15 histograms of 17 series
each (15 buckets, sum, count): each worker's files hold all 1,000, so the
master merges workers x 1,000 values into 1,000 series at every scrape.
``GET /`` answers the pid and the multiprocess directory the app was given.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

HITS = Counter("bench_hits", "hits by route", ["route"])
OPEN = Gauge("bench_open", "open things by route", ["route"], multiprocess_mode="livesum")
LATENCY = Histogram("bench_latency_seconds", "latency by route", ["route"])

for i in range(500):
    HITS.labels(f"r{i}").inc()
for i in range(245):
    OPEN.labels(f"r{i}").set(1)
for i in range(15):
    LATENCY.labels(f"r{i}").observe(0.01 * i)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = f"{os.getpid()} {os.environ.get('PROMETHEUS_MULTIPROC_DIR')}".encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
