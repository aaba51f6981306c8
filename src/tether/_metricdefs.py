"""Every metric tether exposes, defined once: its name, type, help, labels and buckets.

Each row is read by everything that touches the metric: the code that yields
its value builds the family from it (:meth:`MetricDef.family`), the master's
:class:`~tether.metrics.Aggregator` takes from it how the family combines
across workers (summed, or per process when it has a ``worker`` label; kept
when a worker exits if it is a counter or a histogram), the OpenTelemetry
bridge (:mod:`tether._otel`) makes one instrument per row, and the console's
charts (:mod:`tether._charts`) take their bucket bounds from the rows of the
histograms they draw. ``docs/observability.md`` lists the same rows, and
``tests/test_metrics.py`` checks that its tables and this one agree exactly.

Invariant: a family tether exposes is made from its row here, so a name, a
type, a help text or a label set cannot differ between a worker, its master,
the meter and the docs. Adding a metric is one row here, the line that yields
its value where that value is known, and one row in the docs.

Names are spelled as ``prometheus_client`` spells a family: a counter
without its ``_total`` (:attr:`MetricDef.exposed` adds it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["MASTER_METRICS", "METRICS", "PROCESS_METRICS", "MetricDef"]

Kind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class MetricDef:
    """One metric: what ``/metrics``, the master's sum, the meter and the docs agree on."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    #: Upper bounds of a histogram's buckets, in seconds (+Inf is implied).
    buckets: tuple[float, ...] = ()
    #: ``process``: every serving process has it (a master sums or passes it on);
    #: ``master``: only a master has it.
    where: Literal["process", "master"] = "process"

    @property
    def exposed(self) -> str:
        """The name a query uses: a counter's with ``_total``."""
        return self.name + "_total" if self.kind == "counter" else self.name

    @property
    def per_process(self) -> bool:
        """One series per process (labelled ``worker``): passed on by a master, never summed."""
        return "worker" in self.labels

    def family(self, value: float) -> Metric:
        """The family of a counter or gauge without labels: its one value."""
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        make = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        return make(self.name, self.help, value=value)

    def series(self, samples: Iterable[tuple[Sequence[str], float]]) -> Metric:
        """The family of a labelled counter or gauge: one value per label values."""
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

        make = CounterMetricFamily if self.kind == "counter" else GaugeMetricFamily
        family = make(self.name, self.help, labels=self.labels)
        for labels, value in samples:
            family.add_metric(labels, value)
        return family

    def histograms(
        self, samples: Iterable[tuple[Sequence[str], Sequence[tuple[str, float]], float]]
    ) -> Metric:
        """The family of a histogram: per label values, cumulative buckets and a sum."""
        from prometheus_client.metrics_core import HistogramMetricFamily

        family = HistogramMetricFamily(self.name, self.help, labels=self.labels)
        for labels, buckets, total in samples:
            family.add_metric(labels, buckets, total)
        return family


METRICS: dict[str, MetricDef] = {}


def _define(
    name: str,
    kind: Kind,
    help: str,
    labels: tuple[str, ...] = (),
    buckets: tuple[float, ...] = (),
    where: Literal["process", "master"] = "process",
) -> MetricDef:
    if name in METRICS:
        msg = f"{name} is defined twice"
        raise ValueError(msg)
    definition = METRICS[name] = MetricDef(name, kind, help, labels, buckets, where)
    return definition


# -- every serving process (a master sums them, or passes per-process ones on) ----------------

READY = _define("tether_ready", "gauge", "1 while the service accepts traffic (/readyz 200)")
HTTP_REQUESTS = _define(
    "tether_http_requests",
    "counter",
    "HTTP requests answered (500: the app raised before answering)",
    ("method", "status"),
)
HTTP_REQUEST_DURATION = _define(
    "tether_http_request_duration_seconds",
    "histogram",
    "time from the request reaching the app to its response's end",
    ("method",),
    # Web latencies, from a cache hit to a slow report.
    (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
HTTP_REQUESTS_IN_FLIGHT = _define(
    "tether_http_requests_in_flight", "gauge", "requests whose handler is running"
)
HTTP_CONNECTIONS = _define("tether_http_connections", "gauge", "open client connections")
WEBSOCKET_CONNECTIONS = _define(
    "tether_websocket_connections", "gauge", "open websocket connections"
)
HTTP_RESPONSES_BYTES = _define("tether_http_responses_bytes", "counter", "response body bytes sent")
BACKGROUND_SPAWNED = _define(
    "tether_background_spawned", "counter", "background tasks accepted (tether.spawn and adopted)"
)
BACKGROUND_COMPLETED = _define(
    "tether_background_completed", "counter", "background tasks that returned"
)
BACKGROUND_FAILED = _define("tether_background_failed", "counter", "background tasks that raised")
BACKGROUND_ABANDONED = _define(
    "tether_background_abandoned",
    "counter",
    "background tasks still running at the shutdown deadline",
)
BACKGROUND_RUNNING = _define(
    "tether_background_running", "gauge", "background tasks running (tether.spawn and adopted)"
)
EVENT_LOOP_LAG = _define(
    "tether_event_loop_lag_seconds",
    "histogram",
    "how late a periodic callback ran (sampled while serving traffic, and at each "
    "watchdog heartbeat)",
    ("worker",),
    (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
DRAINS = _define("tether_drains", "counter", "graceful drains begun")
DRAIN_PHASE = _define(
    "tether_drain_phase_seconds",
    "histogram",
    "time each shutdown phase took",
    ("phase",),
    (0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
DRAIN_REQUESTS_CUT = _define(
    "tether_drain_requests_cut",
    "counter",
    "requests still running at the shutdown deadline, cancelled",
)
PROCESS_RESIDENT_MEMORY = _define(
    "tether_process_resident_memory_bytes", "gauge", "resident memory", ("worker",)
)
PROCESS_CPU = _define(
    "tether_process_cpu_seconds", "counter", "CPU time used (user + system)", ("worker",)
)
ASYNCIO_TASKS = _define(
    "tether_asyncio_tasks", "gauge", "asyncio tasks in this process", ("worker",)
)
THREADS = _define("tether_threads", "gauge", "threads in this process", ("worker",))

# -- a master only -----------------------------------------------------------------------------

RELOADS = _define(
    "tether_reloads", "counter", "reloads finished, by outcome", ("outcome",), where="master"
)
WORKER_RESTARTS = _define(
    "tether_worker_restarts", "counter", "workers replaced, by cause", ("cause",), where="master"
)
MASTER_GENERATION = _define(
    "tether_master_generation",
    "gauge",
    "number of the generation that serves (0: none yet)",
    where="master",
)
MASTER_WORKERS = _define(
    "tether_master_workers",
    "gauge",
    "worker processes alive, by state",
    ("state",),
    where="master",
)
MASTER_WORKERS_WANTED = _define(
    "tether_master_workers_wanted",
    "gauge",
    "workers per generation (--workers, TTIN/TTOU)",
    where="master",
)
MASTER_RELOADING = _define(
    "tether_master_reloading", "gauge", "1 while a reload runs", where="master"
)
MASTER_RELOADS = _define(
    "tether_master_reloads", "counter", "reloads started (HUP, tether ctl reload)", where="master"
)
MASTER_RELOADS_FAILED = _define(
    "tether_master_reloads_failed",
    "counter",
    "reloads whose new generation failed to start",
    where="master",
)
MASTER_WORKER_RESTARTS = _define(
    "tether_master_worker_restarts",
    "counter",
    "workers replaced after they died unexpectedly (crash, watchdog)",
    where="master",
)
MASTER_UPTIME = _define(
    "tether_master_uptime_seconds", "gauge", "seconds since this master started", where="master"
)
WORKER_SCRAPE_OK = _define(
    "tether_worker_scrape_ok",
    "gauge",
    "1 if the worker answered the master's last scrape in time, 0 if its figures are "
    "from an earlier one",
    ("worker",),
    where="master",
)

#: What every serving process exposes (and the meter publishes), in order.
PROCESS_METRICS = tuple(d for d in METRICS.values() if d.where == "process")
#: What only a master adds.
MASTER_METRICS = tuple(d for d in METRICS.values() if d.where == "master")
