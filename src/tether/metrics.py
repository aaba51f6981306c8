"""Request, event-loop and lifecycle metrics, and the master's sum of its workers.

Two halves, one set of names: every metric's name, type, help and labels are its row
in :mod:`tether._metricdefs` (``docs/observability.md`` lists the same rows):

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

from tether import _metricdefs as M
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
    "recording_send",
    "write_final",
]

#: Seconds; the bounds of each histogram are its row's in tether._metricdefs.
LATENCY_BUCKETS = M.HTTP_REQUEST_DURATION.buckets
LAG_BUCKETS = M.EVENT_LOOP_LAG.buckets
PHASE_BUCKETS = M.DRAIN_PHASE.buckets

_FIRST_BOUND = LATENCY_BUCKETS[0]
#: A request record: its bucket counts (the last is +Inf), then these two.
_SECONDS = len(LATENCY_BUCKETS) + 1
_BYTES = _SECONDS + 1

#: Methods kept as label values; anything else is counted as ``OTHER`` (labels stay bounded).
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))


def recording_send(response: list[Any], message: Any) -> Awaitable[None]:
    """One request's ``send``, bound to ``response``: [status, body bytes, the server's send].

    The HTTP server gives the app ``MethodType(recording_send, [0, 0, send])``
    and reads the status (0: the response never started) and the body bytes
    from the list when the app returns. Why this shape: it is the cheapest
    per-request wrapper measured (``benchmarks/bench_metrics.py``): a bound
    method over a list is two allocations, no cells and no ``__init__`` frame,
    and the server's own coroutine is returned, not awaited in one more. Until
    the response starts only its start is looked for; after that, only the
    bodies' lengths are added.
    """
    if response[0]:
        response[1] += len(message.get("body", b""))
    elif message["type"] == "http.response.start":
        response[0] = message["status"]
    send: Callable[[Any], Awaitable[None]] = response[2]
    return send(message)


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
        # method -> status -> [bucket counts..., +Inf count, seconds, body bytes]: two plain
        # subscripts per request, no key to build; summed by method or status at scrape time.
        self._records: dict[str, dict[int, list[Any]]] = {}
        self.websockets = 0
        self.lag = Histogram(LAG_BUCKETS)
        self.drains = 0
        self.phases: dict[str, Histogram] = {}
        self.requests_cut = 0

    def request(self, method: str, status: int, seconds: float, sent: int) -> None:
        """Count one finished HTTP request (per-request path: keep it cheap)."""
        try:
            record = self._records[method][status]
        except KeyError:
            record = self._record(method, status)
        # Most answers take less than the first bound: one comparison instead of a bisect.
        # Indices are non-negative constants, which the interpreter's list fast path takes.
        record[0 if seconds <= _FIRST_BOUND else bisect_left(LATENCY_BUCKETS, seconds)] += 1
        record[_SECONDS] += seconds
        record[_BYTES] += sent

    def _record(self, method: str, status: int) -> list[Any]:
        if method not in _METHODS:
            # Unknown methods share one record and are not keys: they cannot grow the series.
            method = "OTHER"
        by_status = self._records.setdefault(method, {})
        record = by_status.get(status)
        if record is None:
            record = by_status[status] = [0] * _SECONDS + [0.0, 0]
        return record

    def _each(self) -> Iterator[tuple[str, int, list[Any]]]:
        for method, by_status in self._records.items():
            for status, record in by_status.items():
                yield method, status, record

    @property
    def requests(self) -> dict[tuple[str, int], int]:
        """Requests answered, by method and status."""
        return {(method, status): sum(record[:_SECONDS]) for method, status, record in self._each()}

    @property
    def durations(self) -> dict[str, Histogram]:
        """Request durations by method."""
        out: dict[str, Histogram] = {}
        for method, _, record in self._each():
            hist = out.get(method)
            if hist is None:
                hist = out[method] = Histogram(LATENCY_BUCKETS)
            for i, count in enumerate(record[:_SECONDS]):
                hist.counts[i] += count
            hist.sum += record[_SECONDS]
        return out

    @property
    def response_bytes(self) -> int:
        """Response body bytes sent."""
        return sum(int(record[_BYTES]) for _, _, record in self._each())

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
        yield M.HTTP_REQUESTS.series(
            ((method, str(status)), float(count))
            for (method, status), count in sorted(self.requests.items())
        )
        yield M.HTTP_REQUEST_DURATION.histograms(
            ((method,), hist.buckets(), hist.sum) for method, hist in sorted(self.durations.items())
        )
        yield M.HTTP_RESPONSES_BYTES.family(self.response_bytes)
        yield M.WEBSOCKET_CONNECTIONS.family(self.websockets)
        yield M.EVENT_LOOP_LAG.histograms([((self.worker,), self.lag.buckets(), self.lag.sum)])
        yield M.DRAINS.family(self.drains)
        yield M.DRAIN_PHASE.histograms(
            ((phase,), hist.buckets(), hist.sum) for phase, hist in sorted(self.phases.items())
        )
        yield M.DRAIN_REQUESTS_CUT.family(self.requests_cut)


def process_families(worker: str) -> Iterator[Metric]:
    """This process's resident memory and CPU time, labelled with ``worker``."""
    yield M.PROCESS_RESIDENT_MEMORY.series([((worker,), float(process_rss()))])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    yield M.PROCESS_CPU.series([((worker,), usage.ru_utime + usage.ru_stime)])


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
    """One worker's exposition, split by how its rows in tether._metricdefs combine."""

    #: family name -> sample key -> value (families summed over the workers)
    shared: dict[str, dict[_Key, float]]
    #: families with one series per process (a ``worker`` label), as parsed
    per_process: list[Metric]


def _parse(text: str) -> _Parsed:
    from prometheus_client.parser import text_string_to_metric_families

    shared: dict[str, dict[_Key, float]] = {}
    per_process: list[Metric] = []
    for family in text_string_to_metric_families(text):
        definition = M.METRICS.get(family.name)
        if definition is None:
            # Not a metric this master defines (a worker of a newer tether, after an
            # upgrade in place): the master answers for the metrics it knows.
            continue
        if definition.per_process:
            per_process.append(family)
            continue
        values = shared.setdefault(family.name, {})
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            key = (s.name, tuple(sorted(s.labels.items())))
            values[key] = values.get(key, 0.0) + s.value
    return _Parsed(shared, per_process)


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
            if M.METRICS[name].kind == "gauge":
                continue  # a dead process has no connections in flight
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
        from prometheus_client.metrics_core import Metric

        seen: set[str] = set()
        per_process: dict[str, Metric] = {}
        for family in own:
            seen.add(family.name)
            definition = M.METRICS.get(family.name)
            if definition is not None and definition.per_process:
                per_process[family.name] = family  # the workers' series join the master's
            else:
                yield family
        live_ids = [i for i in live if i not in self._retired]
        answers = [self._last[i] for i in live_ids if i in self._last]
        names = set(self._kept).union(*(parsed.shared for parsed in answers))
        for name in sorted(names - seen):
            definition = M.METRICS[name]
            total: dict[_Key, float] = dict(self._kept.get(name, {}))
            for parsed in answers:
                for key, value in parsed.shared.get(name, {}).items():
                    total[key] = total.get(key, 0.0) + value
            family = Metric(name, definition.help, definition.kind)
            for (sample, labels), value in sorted(total.items(), key=_sample_order):
                family.add_sample(sample, dict(labels), value)
            yield family
        for parsed in answers:
            for family in parsed.per_process:
                if family.name in seen and family.name not in per_process:
                    continue
                merged = per_process.get(family.name)
                if merged is None:
                    definition = M.METRICS[family.name]
                    merged = per_process[family.name] = Metric(
                        family.name, definition.help, definition.kind
                    )
                merged.samples.extend(s for s in family.samples if not s.name.endswith("_created"))
        yield from per_process.values()
        yield M.WORKER_SCRAPE_OK.series(
            ((worker_id,), float(self._ok[worker_id]))
            for worker_id in live_ids
            if worker_id in self._ok
        )


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
        yield M.RELOADS.series(((k,), float(n)) for k, n in sorted(self.reloads.items()))
        yield M.WORKER_RESTARTS.series(((k,), float(n)) for k, n in sorted(self.restarts.items()))
