"""Request, event-loop and lifecycle metrics, and the master's sum of its workers.

Two halves, one set of names (``docs/observability.md`` lists them all):

- :class:`ProcessMetrics` lives in each serving process. The HTTP server
  records every response into it (method, status, duration, bytes) with a
  few dict and list operations: no locks, no label objects, no formatting.
  Formatting happens only when someone scrapes ``/metrics`` (or the process
  writes its final counts): only then is ``prometheus_client`` imported, so a
  process that is never scraped does not pay for it at start or in memory.
- :class:`Aggregator` lives in the master. When the master is scraped it
  scrapes every worker's private debug socket in parallel, bounded by a short
  timeout, and answers with the sum. A worker that does not answer in time is
  marked (``tether_worker_scrape_ok{worker} 0``) and counted with what it last
  said; the answer never waits for it.

Invariant: **counters and histograms never go backwards** while the master
lives. When a worker exits (crash, reload, recycling, scale-down) the master
keeps its final counts: a worker that exits in order writes them to a file the
master named for it (``TETHER_METRICS_FINAL``) after its drain, so even the
drain's own counts are kept; a worker that is killed keeps what the master last
read from it. This is what Prometheus' multi-process mode does with a shared
directory of memory-mapped files, done with one file per exited worker that
the master reads once and deletes.

Families whose samples carry a ``worker`` label (RSS, CPU, event-loop lag) are
per process: they are passed through for live workers and end with them.
Gauges without one (requests in flight, connections) are summed over the live
workers.

Error handling: nothing here raises into a request or a scrape. A worker's
answer that cannot be parsed counts as no answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tether.worker import final_path  # the process contract's file name, re-exported

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = [
    "LATENCY_BUCKETS",
    "Aggregator",
    "Families",
    "Lifecycle",
    "Histogram",
    "ProcessMetrics",
    "WorkerTarget",
    "exposition",
    "final_path",
    "process_families",
    "process_rss",
    "write_final",
]

#: Seconds; web latencies from a cache hit to a slow report.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Seconds a timer callback ran late.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Seconds one shutdown phase took.
PHASE_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

#: Methods kept as label values; anything else is counted as ``OTHER`` (labels stay bounded).
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))


class Histogram:
    """Bucket counts and a sum; ``observe`` is one bisect and two additions."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # Prometheus buckets are "less than or equal": bisect_left finds the first bound >= value.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative buckets as ``HistogramMetricFamily`` takes them."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(total)))
        return out


class ProcessMetrics:
    """One serving process's request, loop and drain metrics.

    The HTTP server calls :meth:`request` once per response; the event-loop
    timers that already run (the date clock while connections are open, the
    watchdog heartbeat) call :meth:`loop_lag`; the drain calls :meth:`drain_phase`.
    """

    def __init__(self, worker: str = "0") -> None:
        self.worker = worker
        # (method, status) -> [bucket counts..., +Inf count, seconds, body bytes]: one dict
        # lookup per request; counts and per-method histograms are summed at scrape time.
        self._records: dict[tuple[str, int], list[Any]] = {}
        self.websockets = 0
        self.lag = Histogram(LAG_BUCKETS)
        self.drains = 0
        self.phases: dict[str, Histogram] = {}
        self.requests_cut = 0

    def request(self, method: str, status: int, seconds: float, sent: int) -> None:
        """Count one finished HTTP request (per-request path: keep it cheap)."""
        record = self._records.get((method, status)) or self._record(method, status)
        record[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        record[-2] += seconds
        record[-1] += sent

    def _record(self, method: str, status: int) -> list[Any]:
        if method not in _METHODS:
            method = "OTHER"  # unknown methods share a record, so they cannot grow the series
        record = self._records.get((method, status))
        if record is None:
            record = [0] * (len(LATENCY_BUCKETS) + 1) + [0.0, 0]
            self._records[(method, status)] = record
        return record

    @property
    def requests(self) -> dict[tuple[str, int], int]:
        """Requests answered, by method and status."""
        return {key: sum(record[:-2]) for key, record in self._records.items()}

    @property
    def durations(self) -> dict[str, Histogram]:
        """Request durations by method."""
        out: dict[str, Histogram] = {}
        for (method, _), record in self._records.items():
            hist = out.get(method)
            if hist is None:
                hist = out[method] = Histogram(LATENCY_BUCKETS)
            for i, count in enumerate(record[:-2]):
                hist.counts[i] += count
            hist.sum += record[-2]
        return out

    @property
    def response_bytes(self) -> int:
        """Response body bytes sent."""
        return sum(int(record[-1]) for record in self._records.values())

    def loop_lag(self, seconds: float) -> None:
        """A periodic callback ran ``seconds`` later than it was scheduled."""
        self.lag.observe(max(0.0, seconds))

    def drain_phase(self, phase: str, seconds: float) -> None:
        """A shutdown phase took ``seconds``."""
        hist = self.phases.get(phase)
        if hist is None:
            hist = self.phases[phase] = Histogram(PHASE_BUCKETS)
        hist.observe(seconds)

    def families(self) -> Iterator[Metric]:
        """The counters and histograms this process recorded."""
        from prometheus_client.metrics_core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        requests = CounterMetricFamily(
            "tether_http_requests", "HTTP requests answered", labels=["method", "status"]
        )
        for (method, status), count in sorted(self.requests.items()):
            requests.add_metric([method, str(status)], float(count))
        yield requests
        durations = HistogramMetricFamily(
            "tether_http_request_duration_seconds",
            "time from the request reaching the app to its response's end",
            labels=["method"],
        )
        for method, hist in sorted(self.durations.items()):
            durations.add_metric([method], hist.buckets(), hist.sum)
        yield durations
        yield CounterMetricFamily(
            "tether_http_responses_bytes", "response body bytes sent", value=self.response_bytes
        )
        yield GaugeMetricFamily(
            "tether_websocket_connections", "open websocket connections", value=self.websockets
        )
        lag = HistogramMetricFamily(
            "tether_event_loop_lag_seconds",
            "how late a periodic callback ran (sampled while serving traffic, and at each "
            "watchdog heartbeat)",
            labels=["worker"],
        )
        lag.add_metric([self.worker], self.lag.buckets(), self.lag.sum)
        yield lag
        yield CounterMetricFamily("tether_drains", "graceful drains begun", value=self.drains)
        phases = HistogramMetricFamily(
            "tether_drain_phase_seconds", "time each shutdown phase took", labels=["phase"]
        )
        for phase, hist in sorted(self.phases.items()):
            phases.add_metric([phase], hist.buckets(), hist.sum)
        yield phases
        yield CounterMetricFamily(
            "tether_drain_requests_cut",
            "requests still running at the shutdown deadline, cancelled",
            value=self.requests_cut,
        )


def process_families(worker: str) -> Iterator[Metric]:
    """This process's resident memory and CPU time, labelled with ``worker``."""
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily

    rss = GaugeMetricFamily(
        "tether_process_resident_memory_bytes", "resident memory", labels=["worker"]
    )
    rss.add_metric([worker], float(process_rss()))
    yield rss
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = CounterMetricFamily(
        "tether_process_cpu_seconds", "CPU time used (user + system)", labels=["worker"]
    )
    cpu.add_metric([worker], usage.ru_utime + usage.ru_stime)
    yield cpu


def process_rss(pid: int | None = None) -> int:
    """Resident memory of a process (this one by default) in bytes; 0 if it cannot be read."""
    try:
        with open(f"/proc/{pid or 'self'}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Families:
    """A Prometheus collector over a function that yields metric families.

    What a :class:`~tether.debug.DebugSource` takes in ``collectors``: the
    families are produced fresh at every scrape.
    """

    def __init__(self, families: Callable[[], Iterable[Metric]]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families()


def exposition(families: Callable[[], Iterable[Metric]]) -> bytes:
    """Prometheus text format (0.0.4) for the families ``families()`` yields."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families(families))
    return bytes(generate_latest(registry))


def write_final(path: str, families: Callable[[], Iterable[Metric]]) -> None:
    """Write the final counts atomically (the master reads them once the process is gone)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with contextlib.suppress(OSError):
        with open(tmp, "wb") as f:
            f.write(exposition(families))
        os.replace(tmp, path)


# -- the master's side ----------------------------------------------------------------------

#: GET ``target`` from the unix socket ``path`` within ``timeout``: status and body.
Fetch = Callable[[str, str, float], Awaitable[tuple[int, bytes]]]

_Key = tuple[str, tuple[tuple[str, str], ...]]  # sample name, sorted labels


@dataclass(frozen=True)
class WorkerTarget:
    """One live worker, as the master knows it."""

    id: str
    pid: int
    generation: int
    debug_path: str
    #: The master's view of it (for the console): starting, ready, stopping.
    state: str = ""
    #: How many workers its slot had before it.
    restarts: int = 0


@dataclass
class _Parsed:
    """One worker's exposition, split by how the master combines it."""

    #: family name -> (type, help)
    meta: dict[str, tuple[str, str]]
    #: family name -> sample key -> value (families without a worker label)
    shared: dict[str, dict[_Key, float]]
    #: families with a worker label, as parsed
    per_process: list[Metric]


def _parse(text: str) -> _Parsed:
    from prometheus_client.parser import text_string_to_metric_families

    meta: dict[str, tuple[str, str]] = {}
    shared: dict[str, dict[_Key, float]] = {}
    per_process: list[Metric] = []
    for family in text_string_to_metric_families(text):
        if any("worker" in s.labels for s in family.samples):
            per_process.append(family)
            continue
        meta[family.name] = (family.type, family.documentation)
        values = shared.setdefault(family.name, {})
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            key = (s.name, tuple(sorted(s.labels.items())))
            values[key] = values.get(key, 0.0) + s.value
    return _Parsed(meta, shared, per_process)


class Aggregator:
    """The master's ``/metrics``: its own families plus the sum of its workers'.

    ``fetch`` reads a worker's private debug socket; ``timeout`` bounds each
    scrape. Call :meth:`retire` when a worker has exited, before or after its
    last scrape: its final counts move into the kept totals.
    """

    def __init__(self, fetch: Fetch, *, timeout: float = 0.5) -> None:
        self.fetch = fetch
        self.timeout = timeout
        self._last: dict[str, _Parsed] = {}
        self._ok: dict[str, bool] = {}
        self._retired: set[str] = set()
        self._kept: dict[str, dict[_Key, float]] = {}
        self._kept_meta: dict[str, tuple[str, str]] = {}

    def retire(self, worker_id: str, debug_path: str | None) -> None:
        """A worker exited: keep its final counts (its file, else what it last said)."""
        if worker_id in self._retired:
            return
        self._retired.add(worker_id)
        self._ok.pop(worker_id, None)
        final: _Parsed | None = None
        if debug_path is not None:
            path = final_path(debug_path)
            try:
                with open(path, encoding="utf-8") as f:
                    final = _parse(f.read())
                os.unlink(path)
            except (OSError, ValueError):
                final = None
        last = self._last.pop(worker_id, None)
        chosen = final if final is not None else last
        if chosen is None:
            return
        for name, values in chosen.shared.items():
            kind, help_text = chosen.meta[name]
            if kind not in ("counter", "histogram"):
                continue  # a dead process has no connections in flight
            self._kept_meta.setdefault(name, (kind, help_text))
            kept = self._kept.setdefault(name, {})
            for key, value in values.items():
                kept[key] = kept.get(key, 0.0) + value

    async def scrape(self, workers: list[WorkerTarget]) -> None:
        """Read every worker in parallel; a worker that is slow or broken keeps its last answer."""

        async def one(w: WorkerTarget) -> tuple[WorkerTarget, _Parsed | None]:
            try:
                status, body = await self.fetch(w.debug_path, "/metrics", self.timeout)
                if status != 200:
                    return w, None
                return w, _parse(body.decode("utf-8"))
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
                return w, None

        results = await asyncio.gather(*(one(w) for w in workers))
        for w, parsed in results:
            if w.id in self._retired:
                continue  # it exited while we asked: its final counts are already kept
            self._ok[w.id] = parsed is not None
            if parsed is not None:
                self._last[w.id] = parsed

    def families(self, own: Iterable[Metric], live: Iterable[str]) -> Iterator[Metric]:
        """The master's own families, then the workers' summed (``live``: ids alive now)."""
        from prometheus_client.metrics_core import GaugeMetricFamily, Metric

        seen: set[str] = set()
        per_process: dict[str, Metric] = {}
        for family in own:
            seen.add(family.name)
            if any("worker" in s.labels for s in family.samples):
                per_process[family.name] = family  # the workers' series join the master's
            else:
                yield family
        live_ids = [i for i in live if i not in self._retired]
        answers = [self._last[i] for i in live_ids if i in self._last]
        meta = dict(self._kept_meta)
        for parsed in answers:
            for name, kind_help in parsed.meta.items():
                meta.setdefault(name, kind_help)
        for name, (kind, help_text) in sorted(meta.items()):
            if name in seen:
                continue
            total: dict[_Key, float] = dict(self._kept.get(name, {}))
            for parsed in answers:
                for key, value in parsed.shared.get(name, {}).items():
                    total[key] = total.get(key, 0.0) + value
            family = Metric(name, help_text, kind)
            for (sample, labels), value in sorted(total.items(), key=_sample_order):
                family.add_sample(sample, dict(labels), value)
            yield family
        for parsed in answers:
            for family in parsed.per_process:
                if family.name in seen and family.name not in per_process:
                    continue
                merged = per_process.get(family.name)
                if merged is None:
                    merged = per_process[family.name] = Metric(
                        family.name, family.documentation, family.type
                    )
                merged.samples.extend(s for s in family.samples if not s.name.endswith("_created"))
        yield from per_process.values()
        ok = GaugeMetricFamily(
            "tether_worker_scrape_ok",
            "1 if the worker answered the master's last scrape in time, 0 if its figures are "
            "from an earlier one",
            labels=["worker"],
        )
        for worker_id in live_ids:
            if worker_id in self._ok:
                ok.add_metric([worker_id], float(self._ok[worker_id]))
        yield ok


def _sample_order(item: tuple[_Key, float]) -> tuple[Any, ...]:
    (name, labels), _ = item
    # Buckets in numeric order of ``le``, so the text reads like a single process's.
    other = tuple((k, v) for k, v in labels if k != "le")
    le = next((float(v) for k, v in labels if k == "le"), 0.0)
    return (name, other, le)


class Lifecycle:
    """The master's lifecycle counters: reloads by outcome, worker restarts by cause."""

    CAUSES = ("crash", "watchdog", "recycling")

    def __init__(self) -> None:
        self.reloads: dict[str, int] = {"ok": 0, "failed": 0}
        self.restarts: dict[str, int] = dict.fromkeys(self.CAUSES, 0)
        #: The last reloads' outcomes, newest last (for the console).
        self.history: list[dict[str, Any]] = []

    def reloaded(self, outcome: dict[str, Any]) -> None:
        self.reloads["ok" if outcome.get("ok") else "failed"] += 1
        self.history = [*self.history[-9:], outcome]

    def restarted(self, cause: str) -> None:
        self.restarts[cause] = self.restarts.get(cause, 0) + 1

    def families(self) -> Iterator[Metric]:
        from prometheus_client.metrics_core import CounterMetricFamily

        reloads = CounterMetricFamily(
            "tether_reloads", "reloads finished, by outcome", labels=["outcome"]
        )
        for outcome, count in sorted(self.reloads.items()):
            reloads.add_metric([outcome], float(count))
        yield reloads
        restarts = CounterMetricFamily(
            "tether_worker_restarts", "workers replaced, by cause", labels=["cause"]
        )
        for cause, count in sorted(self.restarts.items()):
            restarts.add_metric([cause], float(count))
        yield restarts
