"""A small real OTLP/HTTP receiver for the tests: what an OpenTelemetry Collector would get.

It listens on 127.0.0.1 and accepts ``POST /v1/traces``, ``/v1/metrics`` and
``/v1/logs`` in the protobuf encoding the SDK's OTLP/HTTP exporters send,
decodes each body with ``opentelemetry-proto``'s messages and keeps what it
decoded. Anything else is answered 404, a body that does not decode 400 (and
counted in ``errors``), so a test sees a malformed export instead of losing it.

Tests wait on it with :meth:`Receiver.wait_for`, which wakes on every export
(a condition variable), never a sleep.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

_MESSAGES: dict[str, tuple[Any, Any]] = {
    "/v1/traces": (ExportTraceServiceRequest, ExportTraceServiceResponse),
    "/v1/metrics": (ExportMetricsServiceRequest, ExportMetricsServiceResponse),
    "/v1/logs": (ExportLogsServiceRequest, ExportLogsServiceResponse),
}


def value(v: AnyValue) -> Any:
    """An OTLP attribute value as Python."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    return getattr(v, kind)


def attrs(kvs: Any) -> dict[str, Any]:
    """OTLP key-values as a dict."""
    return {kv.key: value(kv.value) for kv in kvs if isinstance(kv, KeyValue)}


@dataclass(frozen=True)
class Span:
    """One received span, flattened: ids in hex, attributes as a dict, with its resource's."""

    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    links: tuple[tuple[str, str], ...]
    events: tuple[tuple[str, dict[str, Any]], ...]
    status_code: int
    start: int
    end: int


@dataclass
class Received:
    """Everything decoded so far."""

    spans: list[Span] = field(default_factory=list)
    metrics: list[ExportMetricsServiceRequest] = field(default_factory=list)
    logs: list[ExportLogsServiceRequest] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def metric_names(self) -> set[str]:
        """Names of every metric received."""
        return {
            m.name
            for req in self.metrics
            for rm in req.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
        }


def _spans(req: ExportTraceServiceRequest) -> Iterator[Span]:
    for rs in req.resource_spans:
        resource = attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                yield Span(
                    name=s.name,
                    kind=s.kind,
                    trace_id=s.trace_id.hex(),
                    span_id=s.span_id.hex(),
                    parent_span_id=s.parent_span_id.hex(),
                    attributes=attrs(s.attributes),
                    resource=resource,
                    links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in s.links),
                    events=tuple((e.name, attrs(e.attributes)) for e in s.events),
                    status_code=s.status.code,
                    start=s.start_time_unix_nano,
                    end=s.end_time_unix_nano,
                )


class Receiver:
    """An OTLP/HTTP receiver on 127.0.0.1, in a thread, for the length of a ``with``."""

    def __init__(self) -> None:
        self.received = Received()
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                messages = _MESSAGES.get(self.path)
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                if messages is None:
                    self.send_error(404)
                    return
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                request_type, response_type = messages
                request = request_type()
                try:
                    request.ParseFromString(body)
                except Exception as exc:
                    with receiver._changed:
                        receiver.received.errors.append(f"{self.path}: {exc}")
                        receiver._changed.notify_all()
                    self.send_error(400)
                    return
                receiver._keep(self.path, request)
                out = response_type().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test reads what was received, not an access log

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = False
        self._server.block_on_close = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="otlp-receiver"
        )

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``: what ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set to."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def _keep(self, path: str, request: Any) -> None:
        with self._changed:
            if path == "/v1/traces":
                self.received.spans.extend(_spans(request))
            elif path == "/v1/metrics":
                self.received.metrics.append(request)
            else:
                self.received.logs.append(request)
            self._changed.notify_all()

    def wait_for(self, done: Callable[[Received], bool], timeout: float = 60.0) -> Received:
        """Wait until ``done(received)`` holds after an export; AssertionError at ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done(self.received):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"the receiver did not get what was expected within {timeout}s: "
                        f"{len(self.received.spans)} span(s), {len(self.received.metrics)} "
                        f"metrics export(s), errors {self.received.errors}"
                    )
                self._changed.wait(left)
            return self.received

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
