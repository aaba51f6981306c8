"""OpenTelemetry: real workers export to a real OTLP/HTTP receiver, through a reload.

The receiver (tests/otlp.py) decodes what the SDK's OTLP exporters send with
``opentelemetry-proto``'s messages, as a Collector would. The service is a
real ``tether run --workers 2`` master, reloaded with SIGHUP's control-socket
twin while a client sends requests with W3C ``traceparent`` headers.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import secrets
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from masterproc import MasterProc
from otlp import Received, Receiver, Span
from tether._otel import ServerSpans, enabled

from proc import APPS

SERVER = 2  # OTLP's SPAN_KIND_SERVER
AGENT = "otel-test/1.0"

Sent = tuple[str, str, str]  # (trace id, parent span id, path) of a request answered 200


def _request(conn: http.client.HTTPConnection, path: str) -> Sent | None:
    """One GET with a fresh traceparent; what was sent if it was answered 200."""
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    headers = {"traceparent": f"00-{trace_id}-{parent}-01", "user-agent": AGENT}
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        response.read()
    except (OSError, http.client.HTTPException):
        conn.close()  # not answered: not a completed request, and the next one reconnects
        return None
    return (trace_id, parent, path) if response.status == 200 else None


def _client(port: int, stop: threading.Event, started: threading.Event, limit: int) -> list[Sent]:
    """Requests on one keep-alive connection until 20 after ``stop`` (or ``limit`` of them)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    sent: list[Sent] = []
    after_stop = 20
    try:
        for n in range(limit):
            if stop.is_set():
                after_stop -= 1
                if after_stop < 0:
                    break
            answered = _request(conn, f"/items/{n}")
            if answered is not None:
                sent.append(answered)
            if len(sent) == 20:
                started.set()
    finally:
        started.set()
        conn.close()
    return sent


def _one(port: int, path: str) -> tuple[Sent | None, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        sent = _request(conn, path)
        conn.request("GET", "/provider")
        provider = conn.getresponse().read().decode()
    finally:
        conn.close()
    return sent, provider


def _servers(received: Received, trace_id: str) -> list[Span]:
    return [s for s in received.spans if s.trace_id == trace_id and s.kind == SERVER]


def test_spans_of_every_completed_request_reach_the_receiver_through_a_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2 workers, a reload under load: one server span per answered request, none lost."""
    (tmp_path / "hello.py").write_text((APPS / "traced.py").read_text())
    with Receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "300")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "tether-otel-test")

        async def scenario() -> tuple[list[Sent], Sent | None, str, str, int]:
            async with MasterProc(tmp_path, "--access-log", "--log-format", "json") as master:
                await master.wait_for("READY")
                stop, started = threading.Event(), threading.Event()
                load = asyncio.ensure_future(
                    asyncio.to_thread(_client, master.port, stop, started, 20_000)
                )
                await asyncio.to_thread(started.wait, 30)
                reply = await master.ctl("reload")  # returns once the old generation exited
                stop.set()
                sent = await load
                spawned, provider = await asyncio.to_thread(_one, master.port, "/spawn")
                await master.worker_pids()
                assert await master.stop() == 0
                assert reply["ok"], reply
                return sent, spawned, provider, master.log(), master.port

        sent, spawned, provider, log, port = asyncio.run(scenario())
        assert spawned is not None
        assert provider == "TracerProvider"  # the app's import found tether's provider

        wanted = {trace_id for trace_id, _, _ in [*sent, spawned]}

        def arrived(r: Received) -> bool:
            have = {s.trace_id for s in r.spans if s.kind == SERVER}
            names = {s.name for s in r.spans}
            return wanted <= have and {"tether.spawn send_event", "tether.reload"} <= names

        try:
            received = receiver.wait_for(arrived, timeout=30)
        except AssertionError as exc:
            r = receiver.received
            missing = wanted - {s.trace_id for s in r.spans if s.kind == SERVER}
            raise AssertionError(
                f"{exc}; no server span for {len(missing)} of {len(wanted)} requests; "
                f"span names {sorted({s.name for s in r.spans})}\n{log[-3000:]}"
            ) from None
        assert received.errors == []

    generations = set()
    for trace_id, parent, path in sent:
        servers = _servers(received, trace_id)
        assert len(servers) == 1, (path, servers)
        span = servers[0]
        assert span.name == "GET /items/{item_id}"
        assert span.parent_span_id == parent
        assert span.attributes == {
            "http.request.method": "GET",
            "url.path": path,
            "url.scheme": "http",
            "network.protocol.version": "1.1",
            "server.address": "127.0.0.1",
            "server.port": port,
            "client.address": "127.0.0.1",
            "client.port": span.attributes["client.port"],
            "user_agent.original": AGENT,
            "http.route": "/items/{item_id}",
            "http.response.status_code": 200,
        }
        assert span.resource["service.name"] == "tether-otel-test"
        generations.add(span.resource["tether.generation"])
    assert generations == {1, 2}, "the load ran across the reload"
    # The app's own spans are children of tether's server span.
    by_id = {s.span_id: s for s in received.spans}
    lookups = [s for s in received.spans if s.name == "app.lookup" and s.trace_id in wanted]
    assert len(lookups) == len(sent)
    assert all(by_id[s.parent_span_id].kind == SERVER for s in lookups)

    # A task spawned (and one adopted) in a request: its own trace, linked to the request's.
    (request_span,) = _servers(received, spawned[0])
    for name in ("tether.spawn send_event", "tether.adopted audit"):
        (task,) = [s for s in received.spans if s.name == name]
        assert task.links == ((request_span.trace_id, request_span.span_id),)
        assert task.trace_id != request_span.trace_id
        assert task.attributes["tether.task.origin"] == "GET /spawn"
    (event,) = [s for s in received.spans if s.name == "app.send_event"]
    assert by_id[event.parent_span_id].name == "tether.spawn send_event"

    # The JSON access log carries the ids of each request's server span.
    access = [json.loads(line) for line in log.splitlines() if '"tether.access"' in line]
    assert len(access) >= len(sent) + 2
    spans = {(s.trace_id, s.span_id) for s in received.spans if s.kind == SERVER}
    assert all((a["trace_id"], a["span_id"]) in spans for a in access), access[:3]

    # Each worker's drain is a span: the reload drained generation 1, the stop generation 2.
    drains = [s for s in received.spans if s.name == "tether.drain"]
    assert sorted(s.resource["tether.generation"] for s in drains) == [1, 1, 2, 2]
    for drain in drains:
        events = [name for name, _ in drain.events]
        assert "phase connections done" in events, events
        assert drain.attributes["tether.reason"] == "SIGTERM received"
    # The master's reload is a span too, the master's log lines during it its events.
    (reload,) = [s for s in received.spans if s.name == "tether.reload"]
    assert reload.resource["tether.role"] == "master"
    assert reload.attributes["tether.reload.ok"] is True
    assert reload.attributes["tether.generation"] == 2
    messages = [attributes.get("log.message", "") for _, attributes in reload.events]
    assert any("generation 1 exited; reload done" in m for m in messages), messages
    # tether's own metrics, through the meter.
    assert {"tether_http_requests", "tether_http_requests_in_flight"} <= received.metric_names()


@pytest.mark.parametrize(
    ("env", "traces", "metrics"),
    [
        ({}, False, False),
        ({"OTEL_SERVICE_NAME": "x"}, False, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True, False),
        ({"OTEL_TRACES_EXPORTER": "console"}, True, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h", "OTEL_METRICS_EXPORTER": "none"}, True, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h", "OTEL_SDK_DISABLED": "true"}, False, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h", "OTEL_SDK_DISABLED": "TRUE"}, False, False),
    ],
)
def test_when_each_signal_is_on(env: dict[str, str], traces: bool, metrics: bool) -> None:
    """The documented rule: somewhere to send to, not disabled, not ``none``."""
    assert (enabled("traces", env), enabled("metrics", env)) == (traces, metrics)


OFF_PATH = """\
import asyncio, json, os, sys
from tether.config import RunConfig
from tether.runtime import Service
service = Service(RunConfig(app="x:app"))
service._start_telemetry()
loaded = sorted(m for m in sys.modules if m.startswith(("opentelemetry", "tether._otel")))
print(json.dumps([service.hooks.wrap is None, service.tracker.observer is None, loaded]))
"""


def test_with_no_otel_variable_nothing_is_imported_or_wrapped() -> None:
    """Off: no OpenTelemetry module, no ASGI layer, no task observer: nothing per request."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", OFF_PATH], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [True, True, []]


def _traced(app: Any) -> tuple[ServerSpans, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return ServerSpans(app, provider.get_tracer("test")), exporter


async def _call(app: Any, method: str, headers: list[tuple[bytes, bytes]]) -> list[Any]:
    scope = {
        "type": "http",
        "method": method,
        "path": "/x",
        "scheme": "https",
        "http_version": "2",
        "headers": headers,
        "server": ("10.0.0.1", 8443),
        "client": ("::1", 5000),
    }
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def _raises(scope: Any, receive: Any, send: Any) -> None:
    raise LookupError("no such thing")


async def _answers_503(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 503, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_an_app_that_raises_before_answering_is_a_500_error_span() -> None:
    """The span says what the client got (500), with the exception's type as error.type."""
    app, exporter = _traced(_raises)
    with pytest.raises(LookupError):
        asyncio.run(_call(app, "BREW", [(b"host", b"[::1]:8080")]))
    (span,) = exporter.get_finished_spans()
    assert span.name == "HTTP"
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {}) == {
        "http.request.method": "_OTHER",
        "http.request.method_original": "BREW",
        "url.path": "/x",
        "url.scheme": "https",
        "network.protocol.version": "2",
        "server.address": "::1",
        "server.port": 8080,
        "client.address": "::1",
        "client.port": 5000,
        "http.response.status_code": 500,
        "error.type": "LookupError",
    }


def test_a_5xx_answer_is_an_error_and_no_host_header_falls_back_to_the_socket() -> None:
    """A 503 sets the error status; without Host, server.* come from the socket's address."""
    app, exporter = _traced(_answers_503)
    sent = asyncio.run(_call(app, "POST", []))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    (span,) = exporter.get_finished_spans()
    assert span.name == "POST"
    assert span.status.status_code is StatusCode.ERROR
    attributes = dict(span.attributes or {})
    assert (attributes["server.address"], attributes["server.port"]) == ("10.0.0.1", 8443)
    assert (attributes["http.response.status_code"], attributes["error.type"]) == (503, "503")
    assert span.parent is None  # no traceparent: a new trace
