"""What the master answers: the control socket's commands and the debug listener's pages.

Both are views of the same state (``status()``) plus requests the master
queues (reload, upgrade, scale, stop); this module only translates.

The debug listener offers what a single process offers (``/healthz``,
``/readyz``, ``/metrics``, ``/debug/tasks``, ``/debug/threads``), plus
``/debug/workers``; ``/debug/tasks`` is every worker's dump, ``/debug/threads``
describes the master itself, ``/metrics`` is the master's own figures plus its
workers' summed by :class:`tether.metrics.Aggregator`, and ``/debug/`` is the
console of :mod:`tether.console` over the master and what each worker says.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from tether._control import Reply
from tether._masterhttp import Route, fetch_unix, json_body
from tether.console import master_console, render
from tether.debug import format_thread_dump, thread_dump
from tether.metrics import (
    Aggregator,
    Lifecycle,
    WorkerTarget,
    exposition,
    process_families,
    process_rss,
)

if TYPE_CHECKING:
    from tether._generations import Generation, Worker
    from tether.config import RunConfig

__all__ = ["MasterAPI"]

log = logging.getLogger("tether.master")

_DUMP_TIMEOUT = 5.0


class MasterAPI:
    """Mixed into :class:`tether.master.Master`: control commands, debug pages, progress."""

    config: RunConfig
    generations: dict[int, Generation]
    active: Generation | None
    size: int
    stopping: bool
    last_reload: dict[str, Any] | None
    reloads: int
    reloads_failed: int
    reloading: bool
    restarts: int
    _reload_waiters: list[asyncio.Future[dict[str, Any]]]
    _started: float
    _pid: int

    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[str]] = set()
        #: /metrics: the workers' sums, kept across their exits.
        self.aggregator = Aggregator(fetch_unix)
        self.lifecycle = Lifecycle()
        self._watchdog_killed: set[int] = set()

    # -- provided by Master --------------------------------------------------------

    def request_reload(self) -> asyncio.Future[dict[str, Any]]:
        raise NotImplementedError

    def request_upgrade(self) -> asyncio.Future[dict[str, Any]]:
        raise NotImplementedError

    def request_stop(self, mode: Any = "graceful") -> None:
        raise NotImplementedError

    def scale(self, n: int) -> None:
        raise NotImplementedError

    def status_line(self) -> str:
        raise NotImplementedError

    # -- state ---------------------------------------------------------------------

    def live_workers(self) -> list[Worker]:
        return [w for g in self.generations.values() for w in g.workers()]

    def is_ready(self) -> bool:
        return not self.stopping and self.active is not None and self.active.ready_count() > 0

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "master": {
                "pid": self._pid,
                "state": "stopping" if self.stopping else self.status_line(),
                "ready": self.is_ready(),
                "workers": self.size,
                "uptime": round(now - self._started, 3),
                "reloads": self.reloads,
                "reloads_failed": self.reloads_failed,
                "reloading": self.reloading,
                "reload_queued": bool(self._reload_waiters),
                "restarts": self.restarts,
            },
            "generations": [
                g.snapshot(now) for _, g in sorted(self.generations.items()) if g.workers()
            ],
            "last_reload": self.last_reload,
        }

    def progress(self, message: str) -> None:
        """Log a step of a long operation and show it to every ``ctl`` waiting on one."""
        log.info("master %d: %s", self._pid, message)
        for queue in self._subscribers:
            queue.put_nowait(message)

    # -- control socket ------------------------------------------------------------

    async def handle_control(self, req: dict[str, Any], reply: Reply) -> dict[str, Any]:
        cmd = req.get("cmd")
        if cmd == "status":
            return {"ok": True, "status": self.status()}
        if cmd in ("reload", "upgrade"):
            queue: asyncio.Queue[str] = asyncio.Queue()
            self._subscribers.add(queue)
            try:
                fut = self.request_reload() if cmd == "reload" else self.request_upgrade()
                while not fut.done():
                    getter = asyncio.ensure_future(queue.get())
                    waiting: set[asyncio.Future[Any]] = {getter, fut}
                    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                    if getter.done():
                        await reply({"progress": getter.result()})
                    else:
                        getter.cancel()
                while not queue.empty():
                    await reply({"progress": queue.get_nowait()})
                return dict(fut.result())
            finally:
                self._subscribers.discard(queue)
        if cmd == "stop":
            self.request_stop("graceful")
            return {"ok": True, "message": f"master {self._pid} is stopping"}
        if cmd == "scale":
            n = req.get("n")
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                return {"ok": False, "error": f"scale needs a whole number >= 1, got {n!r}"}
            self.scale(n)
            return {"ok": True, "message": f"scaling to {n} worker(s)"}
        if cmd == "tasks":
            return {"ok": True, "dumps": await self.collect_dumps("/debug/tasks")}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    async def collect_dumps(self, target: str) -> list[dict[str, Any]]:
        """Ask every live worker's private debug socket for ``target``."""
        workers = [w for w in self.live_workers() if w.debug_path]

        async def one(w: Worker) -> dict[str, Any]:
            entry: dict[str, Any] = {"worker": w.id, "pid": w.pid, "generation": w.generation}
            assert w.debug_path is not None
            try:
                status, body = await fetch_unix(w.debug_path, target, _DUMP_TIMEOUT)
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
                entry["error"] = f"no answer from its debug socket: {exc or type(exc).__name__}"
                return entry
            entry["status"] = status
            entry["text"] = body.decode("utf-8", "replace")
            return entry

        return list(await asyncio.gather(*(one(w) for w in workers)))

    # -- debug listener ------------------------------------------------------------

    def _targets(self) -> list[WorkerTarget]:
        return [
            WorkerTarget(str(w.id), w.pid, w.generation, w.debug_path, w.state, w.restarts)
            for w in self.live_workers()
            if w.debug_path
        ]

    async def console_data(self) -> dict[str, Any]:
        """The console's data: the master, then what each worker says about itself."""
        master = self.status()["master"]
        me = {
            "role": "master",
            "id": "master",
            "pid": self._pid,
            "generation": self.active.number if self.active is not None else 0,
            "state": master["state"],
            "age": master["uptime"],
            "restarts": master["restarts"],
            "rss": process_rss(),
        }
        title = f"tether: {self.config.app}"
        return await master_console(
            me, self._targets(), fetch_unix, title=title, reloads=self.lifecycle.history
        )

    def debug_routes(self) -> dict[str, Route]:
        async def healthz(_q: dict[str, list[str]]) -> tuple[int, str, bytes]:
            return 200, "text/plain", b"ok\n"

        async def readyz(_q: dict[str, list[str]]) -> tuple[int, str, bytes]:
            if self.is_ready():
                return 200, "text/plain", b"ready\n"
            return 503, "text/plain", f"not ready: {self.status()['master']['state']}\n".encode()

        async def workers(_q: dict[str, list[str]]) -> tuple[int, str, bytes]:
            return 200, "application/json", json_body(self.status())

        async def tasks(q: dict[str, list[str]]) -> tuple[int, str, bytes]:
            as_json = (q.get("format") or [""])[0] == "json"
            dumps = await self.collect_dumps(
                "/debug/tasks?format=json" if as_json else "/debug/tasks"
            )
            if as_json:
                for entry in dumps:
                    text = entry.pop("text", None)
                    if text is not None:
                        try:
                            entry["tasks"] = json.loads(text)
                        except ValueError:
                            entry["text"] = text
                return 200, "application/json", json_body(dumps)
            return 200, "text/plain", format_dumps(dumps).encode()

        collector = _Collector(self)

        async def metrics(_q: dict[str, list[str]]) -> tuple[int, str, bytes]:
            live = self._targets()
            await self.aggregator.scrape(live)

            def own() -> Iterable[Metric]:
                yield from collector.collect()
                yield from self.lifecycle.families()
                yield from process_families("master")

            body = exposition(lambda: self.aggregator.families(own(), [w.id for w in live]))
            return 200, "text/plain; version=0.0.4", body

        async def threads(q: dict[str, list[str]]) -> tuple[int, str, bytes]:
            dump = thread_dump()
            if (q.get("format") or [""])[0] == "json":
                return 200, "application/json", json_body(dump)
            text = f"tether master {self._pid}: {len(dump)} thread(s)\n" + format_thread_dump(dump)
            return 200, "text/plain", text.encode()

        async def root(_q: dict[str, list[str]]) -> tuple[int, str, bytes]:
            # Open like /healthz, so it shows no data: the console is under /debug/ (token rules).
            body = f"tether master {self._pid}\n\n/healthz\n/readyz\n/metrics\n/debug/\n"
            return 200, "text/plain", body.encode()

        async def index(q: dict[str, list[str]]) -> tuple[int, str, bytes]:
            data = await self.console_data()
            if (q.get("format") or [""])[0] == "json":
                return 200, "application/json", json_body(data)
            token = (q.get("token") or [""])[0] or None
            refresh = (q.get("refresh") or [""])[0]
            page = render(data, token=token, refresh=int(refresh) if refresh.isdigit() else 0)
            return 200, "text/html; charset=utf-8", page.encode()

        return {
            "/healthz": healthz,
            "/readyz": readyz,
            "/metrics": metrics,
            "/debug/workers": workers,
            "/debug/tasks": tasks,
            "/debug/threads": threads,
            "/debug": index,
            "/": root,
        }


def format_dumps(dumps: list[dict[str, Any]]) -> str:
    """Every worker's dump under a header naming the worker."""
    parts = []
    for entry in dumps:
        header = (
            f"=== worker {entry['worker']} (pid {entry['pid']}, generation {entry['generation']})"
        )
        parts.append(header)
        parts.append(entry.get("text") or entry.get("error", ""))
    return "\n".join(parts) + "\n" if parts else "no workers\n"


class _Collector:
    """The master's metrics, read from its state at scrape time."""

    def __init__(self, master: MasterAPI) -> None:
        self.master = master

    def collect(self) -> Iterable[Metric]:
        m = self.master
        yield GaugeMetricFamily(
            "tether_ready",
            "1 while a generation serves and the master is not stopping",
            value=float(m.is_ready()),
        )
        states = GaugeMetricFamily(
            "tether_master_workers", "worker processes alive, by state", labels=["state"]
        )
        live = m.live_workers()
        for state in ("starting", "ready", "stopping"):
            states.add_metric([state], float(sum(1 for w in live if w.state == state)))
        yield states
        yield GaugeMetricFamily(
            "tether_master_workers_wanted",
            "workers per generation (--workers, TTIN/TTOU)",
            value=float(m.size),
        )
        yield GaugeMetricFamily(
            "tether_master_generation",
            "number of the generation that serves (0: none yet)",
            value=float(m.active.number if m.active is not None else 0),
        )
        yield GaugeMetricFamily(
            "tether_master_reloading", "1 while a reload runs", value=float(m.reloading)
        )
        yield CounterMetricFamily(
            "tether_master_reloads",
            "reloads started (HUP, tether ctl reload)",
            value=float(m.reloads),
        )
        yield CounterMetricFamily(
            "tether_master_reloads_failed",
            "reloads whose new generation failed to start",
            value=float(m.reloads_failed),
        )
        yield CounterMetricFamily(
            "tether_master_worker_restarts",
            "workers replaced after they died unexpectedly (crash, watchdog)",
            value=float(m.restarts),
        )
        yield GaugeMetricFamily(
            "tether_master_uptime_seconds",
            "seconds since this master started",
            value=time.monotonic() - m._started,
        )
