"""What a server span per request costs: tether's tracing against OpenTelemetry's ASGI middleware.

The same FastAPI GET (a 20-field pydantic model, ``apps/fastapi_model.py``),
driven in one process through uvicorn's HTTP protocol with in-memory
transports, 64 connections each with one request in flight (the method of
``bench_overhead.py``, whose measuring loop this reuses):

- ``tether, tracing off``: a tether worker's serving stack with no
  ``OTEL_*`` variable: no OpenTelemetry module is loaded, nothing is added;
- ``tether, tracing on``: the same with tether's server spans and task spans
  (what ``tether._otel`` installs when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set);
- ``uvicorn + otel-asgi``: uvicorn serving the app wrapped in
  ``opentelemetry-instrumentation-asgi``'s ``OpenTelemetryMiddleware``, as its
  documentation shows (it also makes a span for every ``send`` and ``receive``);
- ``uvicorn + otel-asgi, no send/receive spans``: the same with
  ``exclude_spans=["send", "receive"]``, its leanest configuration;
- ``uvicorn``: no tracing, for reference.

Both traced sides use the same SDK set-up: a ``TracerProvider`` with a
``BatchSpanProcessor`` exporting to an exporter that drops what it is given
(so the figure is the instrumentation's, not a network's), and no meter
provider. FastAPI's own telemetry (recent versions) is turned off on every
side, so that only the server layer differs. CPU time counts every thread,
the batch processor's included.

    python benchmarks/bench_otel.py [--rounds 5] [--requests 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, Literal

import bench_overhead

WORKLOAD = "FastAPI GET"
VARIANTS = (
    "tether, tracing off",
    "tether, tracing on",
    "uvicorn + otel-asgi",
    "uvicorn + otel-asgi, no send/receive spans",
    "uvicorn",
)


def _provider() -> Any:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class Dropping(SpanExporter):
        """Takes every batch and drops it: the same sink for both sides."""

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropping()))
    return provider


def protocols(variant: str, app: Any) -> tuple[Any, Any]:
    """(protocol factory, what must stay referenced) for one variant."""
    telemetry = getattr(app, "_native_telemetry", None)
    if telemetry is not None:  # FastAPI's own spans: off on every side (see the docstring)
        telemetry.config.update(tracing=False, metrics=False, logs=False)
    if variant == "uvicorn":
        return bench_overhead.protocols("uvicorn", app)
    provider = _provider()
    if variant.startswith("uvicorn + otel-asgi"):
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        exclude: list[Literal["receive", "send"]] | None = (
            ["send", "receive"] if "no send/receive" in variant else None
        )
        wrapped = OpenTelemetryMiddleware(app, tracer_provider=provider, exclude_spans=exclude)
        return bench_overhead.protocols("uvicorn", wrapped)[0], provider
    from tether._otel import Telemetry
    from tether.metrics import ProcessMetrics
    from tether.serving import DrainHooks, HttpServer, ServeOptions
    from tether.tracker import REQUESTS, Tracker, install_adoption

    hooks = DrainHooks(requests=REQUESTS, metrics=ProcessMetrics())
    tracker = Tracker()
    if variant == "tether, tracing on":
        traced = Telemetry(provider, None, {})
        hooks.wrap = traced.server_spans
        tracker.observer = traced.task_spans()
    server = HttpServer(app, [], ServeOptions(lifespan="off"), hooks)
    keep = (server, install_adoption(tracker), provider)
    gc.collect()
    gc.freeze()  # tether's default, as in bench_overhead's "tether"
    return server.protocol_factory({}, asyncio.get_running_loop()), keep


def one(variant: str, n: int, repeat: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--one", variant, str(n), str(repeat)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        import uvloop

        variant, n, repeat = args.one
        result = uvloop.run(
            bench_overhead.measure(variant, WORKLOAD, int(n), int(repeat), protocols)
        )
        print(json.dumps(result))
        return
    results: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for i in range(args.rounds):
        for variant in VARIANTS if i % 2 == 0 else reversed(VARIANTS):
            us = one(variant, args.requests, args.repeat)["us"]
            results[variant].append(us)
            print(f"{variant:45s} {us:7.2f} µs/request", flush=True)
    medians = {v: statistics.median(us) for v, us in results.items()}
    peer = medians["uvicorn + otel-asgi"]
    lean = medians["uvicorn + otel-asgi, no send/receive spans"]
    lines = [
        f"| {WORKLOAD} | CPU µs per request, median (min-max) | vs otel-asgi | vs its leanest |",
        "|---|---|---|---|",
    ]
    for variant, us in results.items():
        lines.append(
            f"| {variant} | {medians[variant]:.2f} ({min(us):.2f}-{max(us):.2f}) "
            f"| {medians[variant] / peer:.3f}x | {medians[variant] / lean:.3f}x |"
        )
    on, off = medians["tether, tracing on"], medians["tether, tracing off"]
    lines.append(f"\ntracing on costs {on - off:.2f} µs per request over tracing off")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
