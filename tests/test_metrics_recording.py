"""What the HTTP server's front records per request: status, method, duration bucket, bytes.

The front (``HttpServer.config.app``, what uvicorn calls per request) is called
directly with a ProcessMetrics, as the engine would call it, so each case's
record is read exactly; tests/test_metrics.py checks the same counts through
real processes and ``/metrics``. Every case runs without the access log and
with it on (then one ``send`` wrapper records for both, and its line must say
the same status and bytes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, cast

import pytest

from tether.metrics import LATENCY_BUCKETS, ProcessMetrics, recording_send
from tether.serving import ASGIApp, DrainHooks, HttpServer, ServeOptions
from tether.tracker import REQUESTS

App = Callable[[Any, Any, Any], Awaitable[None]]


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(params=[False, True], ids=["no-access-log", "access-log"])
def access_log(request: pytest.FixtureRequest) -> Iterator[_Lines | None]:
    """None, or the access log's records (its logger on at INFO for the test)."""
    if not request.param:
        yield None
        return
    logger = logging.getLogger("tether.access")
    lines = _Lines()
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(lines)
    try:
        yield lines
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
        logger.propagate = propagate


def logged(lines: _Lines | None) -> tuple[int, int] | None:
    """The one access line's status and bytes (None without the access log)."""
    if lines is None:
        return None
    [record] = lines.records
    atoms = cast(Any, record.args)
    return int(atoms["s"]), int(atoms["B"])


def run_front(
    app: App, method: str = "GET", *, access_log: _Lines | None = None
) -> tuple[ProcessMetrics, BaseException | None, list[Any], float]:
    """One request through the front: its metrics, what it raised (or None), the messages the
    server's send got, and the seconds the call took."""
    metrics = ProcessMetrics()
    options = ServeOptions(lifespan="off", access_log=access_log is not None)
    server = HttpServer(app, [], options, DrainHooks(requests=REQUESTS, metrics=metrics))
    front = cast(ASGIApp, server.config.app)
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def call() -> BaseException | None:
        try:
            await front({"type": "http", "method": method, "path": "/"}, _receive, send)
        except BaseException as exc:  # the test reads it
            return exc
        return None

    start = time.perf_counter()
    raised = asyncio.run(call())
    return metrics, raised, sent, time.perf_counter() - start


def recorded(metrics: ProcessMetrics) -> tuple[dict[tuple[str, int], int], int, list[int], float]:
    """Requests by (method, status), body bytes, the bucket counts and sum of every method."""
    hists = metrics.durations
    counts = [sum(h.counts[i] for h in hists.values()) for i in range(len(LATENCY_BUCKETS) + 1)]
    return metrics.requests, metrics.response_bytes, counts, sum(h.sum for h in hists.values())


def bucket_of(seconds: float) -> list[int]:
    """The bucket counts of one request that took ``seconds`` (bounds are inclusive)."""
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    counts[bisect_left(LATENCY_BUCKETS, seconds)] = 1
    return counts


def test_a_streamed_response_is_counted_with_its_status_bytes_and_duration(
    access_log: _Lines | None,
) -> None:
    """A stream of three bodies (the last without a body key) counts its status and 7 bytes."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        await asyncio.sleep(0.02)  # a duration past the first bucket's bound
        await send({"type": "http.response.body", "body": b"defg", "more_body": True})
        await send({"type": "http.response.body"})

    metrics, raised, sent, elapsed = run_front(app, "POST", access_log=access_log)
    assert raised is None
    requests, body_bytes, counts, seconds = recorded(metrics)
    assert requests == {("POST", 201): 1}
    assert body_bytes == 7
    assert 0.02 <= seconds <= elapsed
    assert counts == bucket_of(seconds)
    assert counts[0] == 0
    # The server's send got every message, unchanged and in order.
    assert [m.get("body") for m in sent] == [None, b"abc", b"defg", None]
    assert logged(access_log) in (None, (201, 7))


def test_an_app_that_raises_before_its_response_is_counted_as_a_500(
    access_log: _Lines | None,
) -> None:
    """No response started: the server answers 500 for the app, counted with no bytes."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    metrics, raised, _, _ = run_front(app, access_log=access_log)
    assert isinstance(raised, RuntimeError)
    requests, body_bytes, counts, seconds = recorded(metrics)
    assert requests == {("GET", 500): 1}
    assert body_bytes == 0
    assert counts == bucket_of(seconds)
    assert logged(access_log) in (None, (500, 0))


def test_an_app_that_raises_after_its_response_started_keeps_its_status_and_bytes(
    access_log: _Lines | None,
) -> None:
    """The client saw a 200 and two bytes before the app raised: that is what is counted."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ab", "more_body": True})
        raise RuntimeError("midway")

    metrics, raised, _, _ = run_front(app, "PUT", access_log=access_log)
    assert isinstance(raised, RuntimeError)
    requests, body_bytes, counts, seconds = recorded(metrics)
    assert requests == {("PUT", 200): 1}
    assert body_bytes == 2
    assert counts == bucket_of(seconds)
    assert logged(access_log) in (None, (200, 2))


def test_a_cancelled_request_is_not_counted_as_an_answer(access_log: _Lines | None) -> None:
    """A request whose task is cancelled mid-response (its client went, a deadline) adds nothing."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ab", "more_body": True})
        current = asyncio.current_task()
        assert current is not None
        current.cancel()
        await asyncio.sleep(1)  # cancelled here, at once

    metrics, raised, _, _ = run_front(app, access_log=access_log)
    assert isinstance(raised, asyncio.CancelledError)
    assert recorded(metrics)[:2] == ({}, 0)
    assert sum(recorded(metrics)[2]) == 0
    # The access log still writes the line: the client saw a 200 and two bytes.
    assert logged(access_log) in (None, (200, 2))


def test_recording_send_returns_the_servers_own_awaitable_and_counts_after_the_start() -> None:
    """The wrapper hands back what the server's send returned; bodies count once a start is seen."""
    returned: list[object] = []

    def send(message: Any) -> Any:
        token = object()
        returned.append(token)
        return token

    response: list[Any] = [0, 0, send]
    assert recording_send(response, {"type": "http.response.body", "body": b"early"}) is returned[0]
    assert response[:2] == [0, 0]  # not a start: neither a status nor counted bytes
    recording_send(response, {"type": "http.response.start", "status": 404})
    recording_send(response, {"type": "http.response.body", "body": b"four"})
    recording_send(response, {"type": "http.response.body"})
    assert response[:2] == [404, 4]
