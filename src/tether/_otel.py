"""OpenTelemetry: a server span per request, a span per background task, drain events, metrics.

Why it is here and not left to ``opentelemetry-instrument``: the providers
must be made in the process that serves, after it started (a provider made
before a fork exports from a thread the child does not have), and flushed at
the end of the drain, inside the shutdown budget, or the spans of the last
requests a reload's old generation answered are lost. tether knows both
moments; an auto-instrumentation wrapper knows neither.

When it is on (:func:`enabled`, also in ``docs/observability.md``): the SDK is
importable, ``OTEL_SDK_DISABLED`` is not ``true``, and the environment names
somewhere to send to: ``OTEL_EXPORTER_OTLP_ENDPOINT``, or a signal's own
``OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT``, or
``OTEL_{TRACES,METRICS}_EXPORTER`` (``otlp``, ``console``; ``none`` turns
that signal off). Everything else (service name, resource attributes,
sampler, propagators, batch delays, export timeout) is the SDK's own
``OTEL_*`` reading.

Invariant: **off costs nothing per request**. Nothing here is imported unless
it is on; the server span is an ASGI layer that :class:`Telemetry` adds when
the HTTP server is built, not a check made per request.

Resource handling: :meth:`Telemetry.shutdown` flushes and stops every
provider (their export threads end), bounded by the seconds it is given.

Error handling: the SDK's own failures (an unreachable receiver) are logged by
the SDK and never reach a request; a span that cannot be exported is lost, a
request is not.

Why this module is long: the whole OpenTelemetry integration sits behind one lazy
import, so that off costs nothing per request. It could become a package (spans,
metrics) behind the same import; it has not been split yet.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from tether._metricdefs import PROCESS_METRICS

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer
    from prometheus_client.metrics_core import Metric

__all__ = ["Telemetry", "enabled", "trace_ids"]

logger = logging.getLogger("tether.otel")

Scope = MutableMapping[str, Any]
ASGIApp = Callable[..., Any]

_SIGNALS = ("traces", "metrics")
#: The methods semantic conventions name; any other is reported as ``_OTHER``.
_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")
)


def enabled(signal: str, environ: Mapping[str, str] = os.environ) -> bool:
    """True if the environment asks for ``signal`` ("traces" or "metrics") (not the SDK check)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get(f"OTEL_{signal.upper()}_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(
        exporter
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    )


def _sdk_missing() -> bool:
    try:
        import opentelemetry.sdk  # noqa: F401
    except ImportError:
        return True
    return False


def trace_ids() -> tuple[str, str] | None:
    """The current span's (trace id, span id) in hex, else the open drain span's, else None.

    The JSON log formatter calls it for every record once telemetry is on:
    an access record carries its request's span, a drain's records the drain's.
    """
    from opentelemetry.trace import get_current_span

    ctx = get_current_span().get_span_context()
    if not ctx.is_valid:
        drain = _lifecycle_span
        if drain is None:
            return None
        ctx = drain.get_span_context()
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


# The span of the drain in progress in this process (one at most): tether's log records and
# the drain's phases become its events.
_lifecycle_span: Span | None = None


class Telemetry:
    """This process's tracer and meter, made after it started; None of it exists when off."""

    def __init__(
        self,
        tracer_provider: TracerProvider | None,
        meter_provider: MeterProvider | None,
        attributes: dict[str, Any],
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.attributes = attributes
        self.tracer: Tracer | None = (
            tracer_provider.get_tracer("tether") if tracer_provider is not None else None
        )
        self._events: _EventBridge | None = None
        self._snapshot: _Snapshot | None = None

    @classmethod
    def start(
        cls, attributes: dict[str, Any], environ: Mapping[str, str] = os.environ
    ) -> Telemetry | None:
        """Make and install the providers the environment asks for; None if it asks for none.

        ``attributes`` are added to the resource (the SDK reads the rest:
        ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``).
        """
        wanted = [s for s in _SIGNALS if enabled(s, environ)]
        if not wanted:
            return None
        if _sdk_missing():
            logger.warning(
                "OTEL_* variables ask for %s, but the OpenTelemetry SDK is not installed: "
                "pip install 'tether[otel]', or unset them",
                " and ".join(wanted),
            )
            return None
        from opentelemetry.sdk.resources import Resource

        resource = Resource.create(attributes)
        tracer_provider = _tracer_provider(resource, environ) if "traces" in wanted else None
        meter_provider = _meter_provider(resource, environ) if "metrics" in wanted else None
        telemetry = cls(tracer_provider, meter_provider, attributes)
        if tracer_provider is not None:
            from opentelemetry import trace

            trace.set_tracer_provider(tracer_provider)
            from tether.logs import set_trace_ids

            set_trace_ids(trace_ids)
        if meter_provider is not None:
            from opentelemetry import metrics

            metrics.set_meter_provider(meter_provider)
        return telemetry

    # -- requests and tasks ---------------------------------------------------------

    def server_spans(self, app: ASGIApp) -> ASGIApp:
        """``app`` with a server span around each HTTP request (the app itself when off)."""
        if self.tracer is None:
            return app
        return ServerSpans(app, self.tracer)

    def task_spans(self) -> TaskSpans | None:
        """What the tracker calls for each task it starts or adopts (None: traces are off)."""
        return None if self.tracer is None else TaskSpans(self.tracer)

    # -- tether's own metrics ---------------------------------------------------------

    def observe(self, families: Callable[[], Iterable[Metric]]) -> None:
        """Publish tether's counters and gauges (and histograms' count and sum) on the meter."""
        if self.meter_provider is None:
            return
        meter = self.meter_provider.get_meter("tether")
        self._snapshot = snapshot = _Snapshot(families, asyncio.get_running_loop())
        # One instrument per row of tether._metricdefs that a serving process has.
        for metric in PROCESS_METRICS:
            if metric.kind == "counter":
                meter.create_observable_counter(
                    metric.name, [snapshot.reader(metric.exposed)], description=metric.help
                )
            elif metric.kind == "gauge":
                meter.create_observable_gauge(
                    metric.name, [snapshot.reader(metric.name)], description=metric.help
                )
            else:
                for part in ("_count", "_sum"):
                    meter.create_observable_counter(
                        metric.name + part,
                        [snapshot.reader(metric.name + part)],
                        description=f"{metric.help} ({part[1:]})",
                    )

    # -- lifecycle --------------------------------------------------------------------

    def drain_begins(self, reason: str) -> None:
        """A stop began: a ``tether.drain`` span, whose events are tether's log records."""
        self._lifecycle_begins("tether.drain", {"tether.reason": reason})

    def _lifecycle_begins(self, name: str, attributes: dict[str, Any]) -> None:
        global _lifecycle_span
        if self.tracer is None or _lifecycle_span is not None:
            return
        from opentelemetry.context import Context

        _lifecycle_span = self.tracer.start_span(
            name, context=Context(), attributes={**self.attributes, **attributes}
        )
        self._events = _EventBridge()
        logging.getLogger("tether").addHandler(self._events)

    def trace_pool(self, hooks: Any, reloading: Callable[[], bool]) -> None:
        """A master's reloads as ``tether.reload`` spans, each replaced worker as a span.

        ``hooks`` is the pool's :class:`~tether.master.pool.PoolHooks`; each of the
        three it wraps still does what it did. The master's log records during a
        reload (each worker started, ready, drained) are the reload span's events.
        """
        progress, reloaded, restarted = hooks.progress, hooks.reloaded, hooks.restarted

        def on_progress(message: str) -> None:
            if reloading() and _lifecycle_span is None:
                self._lifecycle_begins("tether.reload", {})
            progress(message)

        def on_reloaded(outcome: dict[str, Any]) -> None:
            reloaded(outcome)
            span = _lifecycle_span
            if span is not None:
                from opentelemetry.trace import Status, StatusCode

                span.set_attribute("tether.reload.ok", bool(outcome.get("ok")))
                span.set_attribute("tether.generation", int(outcome.get("generation") or 0))
                if not outcome.get("ok"):
                    span.set_status(Status(StatusCode.ERROR, str(outcome.get("error"))))
            self.drain_ends()

        def on_restarted(cause: str) -> None:
            restarted(cause)
            if self.tracer is not None:
                from opentelemetry.context import Context

                self.tracer.start_span(
                    "tether.worker.replaced",
                    context=Context(),
                    attributes={**self.attributes, "tether.cause": cause},
                ).end()

        hooks.progress, hooks.reloaded, hooks.restarted = on_progress, on_reloaded, on_restarted

    def phase_done(self, phase: str, seconds: float) -> None:
        """A shutdown phase ended: an event on the drain span."""
        span = _lifecycle_span
        if span is not None:
            span.add_event(
                f"phase {phase} done", {"tether.phase": phase, "tether.seconds": seconds}
            )

    def abandoned(self, items: Iterable[Any]) -> None:
        """Work abandoned at the deadline: one event each, and the drain span is an error."""
        span = _lifecycle_span
        if span is None:
            return
        from opentelemetry.trace import Status, StatusCode

        count = 0
        for item in items:
            count += 1
            span.add_event(
                "abandoned",
                {"tether.kind": item.kind, "tether.name": item.name, "tether.detail": item.detail},
            )
        if count:
            span.set_status(Status(StatusCode.ERROR, f"{count} item(s) abandoned at the deadline"))

    def drain_ends(self) -> None:
        """The drain (or a master's reload) is over: its span ends, to be exported."""
        global _lifecycle_span
        span, _lifecycle_span = _lifecycle_span, None
        if self._events is not None:
            logging.getLogger("tether").removeHandler(self._events)
            self._events = None
        if span is not None:
            span.end()

    def shutdown(self, seconds: float) -> None:
        """Export what is buffered and stop every provider, within ``seconds``.

        The SDK's own shutdown waits as long as its exporter's timeout; it runs
        in a thread joined for ``seconds`` at most, so a receiver that does not
        answer cannot hold the process past its budget.
        """
        self.drain_ends()
        if self._snapshot is not None:
            self._snapshot.freeze()

        def stop() -> None:
            if self.tracer_provider is not None:
                self.tracer_provider.shutdown()
            if self.meter_provider is not None:
                self.meter_provider.shutdown(timeout_millis=max(1.0, seconds * 1000))

        flush = threading.Thread(target=stop, name="tether-otel-flush", daemon=True)
        flush.start()
        flush.join(seconds)
        if flush.is_alive():
            logger.warning("telemetry not exported within %.1fs; what is left is lost", seconds)


class ServerSpans:
    """ASGI layer: one SERVER span per HTTP request, with HTTP semantic conventions.

    The span is current while the app runs, so the app's own spans are its
    children and tether's access log record carries its ids. The incoming
    context is read with the global propagator (W3C ``traceparent`` by
    default, ``OTEL_PROPAGATORS`` otherwise), from the headers it names only.
    """

    def __init__(self, app: ASGIApp, tracer: Tracer) -> None:
        from opentelemetry import context, propagate, trace
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self.app = app
        self.tracer = tracer
        self.propagator = propagate.get_global_textmap()
        self.fields = frozenset(f.lower().encode("latin-1") for f in self.propagator.fields)
        self.kind = SpanKind.SERVER
        self.error = Status(StatusCode.ERROR)
        self.attach = context.attach
        self.detach = context.detach
        self.in_context = trace.set_span_in_context

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        carrier: dict[str, str] | None = None
        agent = host = None
        fields = self.fields
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"user-agent":
                agent = value
            elif name in fields:
                if carrier is None:
                    carrier = {}
                carrier[name.decode("latin-1")] = value.decode("latin-1")
        parent = self.propagator.extract(carrier) if carrier is not None else None
        method = scope["method"]
        attributes: dict[str, Any] = {
            "http.request.method": method if method in _METHODS else "_OTHER",
            "url.path": scope["path"],
            "url.scheme": scope.get("scheme", "http"),
            "network.protocol.version": scope.get("http_version", "1.1"),
        }
        if method not in _METHODS:
            attributes["http.request.method_original"] = method
        if host is not None:
            address, port = _host(host.decode("latin-1"))
            attributes["server.address"] = address
            if port is not None:
                attributes["server.port"] = port
        elif (server := scope.get("server")) is not None:
            attributes["server.address"] = server[0]
            if server[1] is not None:
                attributes["server.port"] = server[1]
        client = scope.get("client")
        if client:
            attributes["client.address"] = client[0]
            attributes["client.port"] = client[1]
        if agent is not None:
            attributes["user_agent.original"] = agent.decode("latin-1")
        span_name = attributes["http.request.method"]
        if span_name == "_OTHER":
            span_name = "HTTP"
        span = self.tracer.start_span(span_name, parent, self.kind, attributes)
        # FastAPI's own telemetry (recent versions) would start a second server span, in another
        # trace; this key is how FastAPI tells an app mounted in it that the request is
        # observed already.
        scope["fastapi.telemetry"] = None
        token = self.attach(self.in_context(span, parent))
        status = 0

        def traced_send(message: MutableMapping[str, Any]) -> Any:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            return send(message)

        error: str | None = None
        try:
            await self.app(scope, receive, traced_send)
        except BaseException as exc:
            error = type(exc).__qualname__
            raise
        finally:
            if span.is_recording():
                route = _route(scope)
                if route is not None:
                    span.set_attribute("http.route", route)
                    span.update_name(f"{span_name} {route}")
                status = status or 500  # what the server answers for an app that did not
                span.set_attribute("http.response.status_code", status)
                if error is not None or status >= 500:
                    span.set_attribute("error.type", error or str(status))
                    span.set_status(self.error)
            span.end()
            self.detach(token)


def _host(value: str) -> tuple[str, int | None]:
    """A Host header as (address, port): ``example.com:8080``, ``[::1]:8080``, ``example.com``."""
    if value.startswith("["):
        address, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        address, _, port = value.partition(":")
    return address, int(port) if port.isdigit() else None


def _route(scope: Scope) -> str | None:
    """The route template the framework matched (Starlette, FastAPI: ``scope["route"]``)."""
    route = scope.get("route")
    if route is None:
        return None
    path = route if isinstance(route, str) else getattr(route, "path", None)
    return path if isinstance(path, str) else None


class TaskSpans:
    """A span for each background task, linked to the span current where it was started.

    The task's span starts a trace of its own (the work outlives the request
    that started it) with a link to the request's span; it is current inside
    the task, so the spans the task makes are its children. It ends when the
    task does.
    """

    def __init__(self, tracer: Tracer) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import Link, Status, StatusCode

        self.tracer = tracer
        self.root = context.Context()
        self.attach = context.attach
        self.current = trace.get_current_span
        self.in_context = trace.set_span_in_context
        self.link = Link
        self.error = Status(StatusCode.ERROR)

    def __call__(
        self, name: str, origin: str | None, spawned: bool, ctx: contextvars.Context | None
    ) -> tuple[contextvars.Context, Callable[[asyncio.Task[Any]], None]]:
        """Open the span of a task about to be created in ``ctx`` (None: the current one).

        Returns the context to create the task in and the done callback that ends the span.
        """
        parent = (self.current() if ctx is None else ctx.run(self.current)).get_span_context()
        attributes: dict[str, Any] = {"tether.task.name": name, "tether.task.adopted": not spawned}
        if origin is not None:
            attributes["tether.task.origin"] = origin
        span = self.tracer.start_span(
            f"{'tether.spawn' if spawned else 'tether.adopted'} {name}",
            self.root,
            attributes=attributes,
            links=[self.link(parent)] if parent.is_valid else None,
        )
        task_ctx = contextvars.copy_context() if ctx is None else ctx.copy()
        task_ctx.run(self.attach, self.in_context(span))
        error = self.error

        def done(task: asyncio.Task[Any]) -> None:
            if task.cancelled():
                span.set_attribute("tether.task.cancelled", True)
            else:
                # Read without retrieving it: the tracker judges the failure, and an adopted
                # task's creator may still retrieve it.
                exc = task._exception
                if exc is not None:
                    span.set_attribute("error.type", type(exc).__qualname__)
                    span.set_status(error)
            span.end()

        return task_ctx, done


class _EventBridge(logging.Handler):
    """tether's log records during a drain, as events of the drain span."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        span = _lifecycle_span
        if span is None or record.name == "tether.access":
            return
        try:
            message = record.getMessage()
        except Exception:  # a bad record is the logging module's to report, not ours
            return
        span.add_event(
            message.split("\n", 1)[0],
            {"log.logger": record.name, "log.severity": record.levelname, "log.message": message},
        )


class _Snapshot:
    """The families read once per metric collection, on the event loop, shared by every callback.

    The SDK collects from its exporter thread; tether's figures belong to the
    loop (its tasks, its connections), so the callbacks ask the loop for them
    and wait a moment. A loop that does not answer in that moment (blocked)
    gets the last figures exported again; after :meth:`freeze` (the final
    export, while the loop waits for it) the last figures are what is sent.
    """

    #: A collection calls every callback within this; a later one reads afresh.
    FRESH = 0.5
    #: How long the exporter thread waits for the loop.
    WAIT = 1.0

    def __init__(
        self, families: Callable[[], Iterable[Metric]], loop: asyncio.AbstractEventLoop
    ) -> None:
        self._families = families
        self._loop = loop
        self._taken = -1.0
        self._frozen = False
        self._samples: dict[str, list[tuple[float, dict[str, str]]]] = {}

    def reader(self, sample: str) -> Callable[[CallbackOptions], Iterator[Observation]]:
        from opentelemetry.metrics import Observation

        def read(_options: CallbackOptions) -> Iterator[Observation]:
            for value, labels in self._read().get(sample, ()):
                yield Observation(value, labels)

        return read

    def freeze(self) -> None:
        """Take the last figures now, on the loop: the final export sends them."""
        self._take()
        self._frozen = True

    def _take(self) -> None:
        samples: dict[str, list[tuple[float, dict[str, str]]]] = {}
        for family in self._families():
            for s in family.samples:
                samples.setdefault(s.name, []).append((s.value, dict(s.labels)))
        self._samples, self._taken = samples, time.monotonic()

    def _read(self) -> dict[str, list[tuple[float, dict[str, str]]]]:
        if self._frozen or time.monotonic() - self._taken <= self.FRESH:
            return self._samples
        taken = threading.Event()

        def take() -> None:
            try:
                self._take()
            finally:
                taken.set()

        try:
            self._loop.call_soon_threadsafe(take)
        except RuntimeError:  # the loop has closed
            return self._samples
        taken.wait(self.WAIT)
        return self._samples


def _tracer_provider(resource: Any, environ: Mapping[str, str]) -> TracerProvider:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=resource)
    kind = environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    else:
        _check_otlp("traces", kind, environ)
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def _meter_provider(resource: Any, environ: Mapping[str, str]) -> MeterProvider:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        MetricExporter,
        PeriodicExportingMetricReader,
    )

    kind = environ.get("OTEL_METRICS_EXPORTER", "otlp").strip().lower() or "otlp"
    exporter: MetricExporter
    if kind == "console":
        exporter = ConsoleMetricExporter()
    else:
        _check_otlp("metrics", kind, environ)
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        exporter = OTLPMetricExporter()
    return MeterProvider(
        resource=resource, metric_readers=[PeriodicExportingMetricReader(exporter)]
    )


def _check_otlp(signal: str, kind: str, environ: Mapping[str, str]) -> None:
    """tether exports OTLP over HTTP (protobuf); say so once if asked for anything else."""
    protocol = environ.get(
        f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL",
        environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", ""),
    )
    if kind != "otlp" or protocol not in ("", "http/protobuf"):
        logger.warning(
            "OTEL_%s_EXPORTER=%s, protocol %r: tether exports %s as OTLP over HTTP/protobuf "
            "(or to the console); sending OTLP/HTTP",
            signal.upper(),
            kind,
            protocol or "http/protobuf",
            signal,
        )
