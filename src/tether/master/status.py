"""What the master shows and answers: one status view behind the control socket and the
debug listener.

The debug listener is the same :class:`~tether.debug.DebugApp` a worker
serves, over a :class:`~tether.debug.DebugSource` filled in here: ``/readyz``
is the pool's readiness; ``/metrics`` is the master's own figures plus its
workers' summed by a :class:`~tether.metrics.Aggregator` (scraped from their
private debug sockets when the master is scraped, kept across their exits);
``/debug/`` is the console (:mod:`tether.console`) over the master and what
each worker says of itself; ``/debug/workers`` is the same JSON as ``tether
ctl status``, ``/debug/tasks`` every worker's dump fetched from its private
debug socket, ``/debug/threads`` the master's own threads.

The control socket's commands are translated into requests the master
queues (reload, upgrade, scale, stop); long ones stream progress lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from tether import _metricdefs as M
from tether._appmetrics import AppFamilies
from tether._control import Reply
from tether._waits import first
from tether.master.pool import Pool
from tether.master.workers import Worker
from tether.metrics import (
    Aggregator,
    Families,
    Lifecycle,
    WorkerTarget,
    process_families,
    process_rss,
)

# The debug server's modules and prometheus_client are imported when the debug listener
# starts or is scraped: the master starts its workers before either.
if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from tether.debug import DebugSource

__all__ = ["StatusView", "fetch_unix", "format_dumps"]

log = logging.getLogger("tether.master")

_DUMP_TIMEOUT = 5.0


class StatusView:
    """The master as others see it: status, progress, control commands, debug pages."""

    def __init__(
        self,
        pool: Pool,
        *,
        stop: Callable[[], None],
        aggregator: Aggregator,
        lifecycle: Lifecycle,
        app_metrics: Callable[[], Iterable[Metric]] = list,
    ) -> None:
        self.pool = pool
        self._stop = stop
        self._pid = os.getpid()
        self._started = time.monotonic()
        self._subscribers: set[asyncio.Queue[str]] = set()
        #: The workers' metrics, summed; the pool tells it when one exits.
        self.aggregator = aggregator
        #: Reloads by outcome, restarts by cause; the pool tells it.
        self.lifecycle = lifecycle
        self._own = _Collector(self)
        #: ``/metrics``: ours and the workers', then the app's (its multiprocess directory).
        self._families = AppFamilies(self._tether_families, app_metrics)

    @property
    def uptime(self) -> float:
        return time.monotonic() - self._started

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        pool = self.pool
        return {
            "master": {
                "pid": self._pid,
                "state": "stopping" if pool.stopping else pool.status_line(),
                "ready": pool.is_ready(),
                "workers": pool.size,
                "uptime": round(now - self._started, 3),
                "reloads": pool.reloads,
                "reloads_failed": pool.reloads_failed,
                "reloading": pool.reloading,
                "reload_queued": pool.reload_queued,
                "restarts": pool.restarts,
                "recycles": pool.recycles,
            },
            "generations": [
                g.snapshot(now) for _, g in sorted(pool.generations.items()) if g.workers()
            ],
            "last_reload": pool.last_reload,
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
                fut = self.pool.request("reload" if cmd == "reload" else "upgrade")
                while not fut.done():
                    got = await first(queue.get(), fut)  # the outcome is the pool's: left alone
                    if got[0] == 0:
                        await reply({"progress": got[1]})
                while not queue.empty():
                    await reply({"progress": queue.get_nowait()})
                return dict(fut.result())
            finally:
                self._subscribers.discard(queue)
        if cmd == "stop":
            self._stop()
            return {"ok": True, "message": f"master {self._pid} is stopping"}
        if cmd == "scale":
            n = req.get("n")
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                return {"ok": False, "error": f"scale needs a whole number >= 1, got {n!r}"}
            self.pool.scale(n)
            return {"ok": True, "message": f"scaling to {n} worker(s)"}
        if cmd == "tasks":
            return {"ok": True, "dumps": await self.collect_dumps("/debug/tasks")}
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    async def collect_dumps(self, target: str) -> list[dict[str, Any]]:
        """Ask every live worker's private debug socket for ``target``."""
        workers = [w for w in self.pool.live_workers() if w.debug_path]

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

    # -- metrics and the console ----------------------------------------------------

    def targets(self) -> list[WorkerTarget]:
        """The live workers, with the private debug socket the master asks them on."""
        return [
            WorkerTarget(str(w.id), w.pid, w.generation, w.debug_path, w.state, w.restarts)
            for w in self.pool.live_workers()
            if w.debug_path
        ]

    async def scrape(self) -> None:
        """Read every live worker's ``/metrics`` (in parallel, bounded): before ``/metrics``."""
        await self.aggregator.scrape(self.targets())

    def families(self) -> Iterator[Metric]:
        """``/metrics``: the master's own families, its workers' summed, then the app's."""
        return self._families()

    def _tether_families(self) -> Iterator[Metric]:
        own = itertools.chain(
            self._own.collect(), self.lifecycle.families(), process_families("master")
        )
        return self.aggregator.families(own, [t.id for t in self.targets()])

    async def console_data(self) -> dict[str, Any]:
        """The console's data: the master, then what each worker says about itself."""
        from tether.console import master_console

        master = self.status()["master"]
        pool = self.pool
        me = {
            "role": "master",
            "id": "master",
            "pid": self._pid,
            "generation": pool.active.number if pool.active is not None else 0,
            "state": master["state"],
            "age": master["uptime"],
            "restarts": master["restarts"],
            "rss": process_rss(),
        }
        return await master_console(
            me,
            self.targets(),
            fetch_unix,
            title=f"tether: {pool.config.app}",
            reloads=self.lifecycle.history,
        )

    # -- debug listener ------------------------------------------------------------

    def debug_source(self) -> DebugSource:
        """What the master's DebugApp shows."""
        from tether._charts import stats_page
        from tether.console import console_page, master_stats
        from tether.debug import DebugSource, format_thread_dump, thread_dump

        async def tasks(query: dict[str, list[str]]) -> tuple[int, str, bytes]:
            as_json = query.get("format") == ["json"]
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
                return 200, "application/json", _json(dumps)
            return 200, "text/plain; charset=utf-8", format_dumps(dumps).encode()

        async def threads(query: dict[str, list[str]]) -> tuple[int, str, bytes]:
            dump = thread_dump()
            if query.get("format") == ["json"]:
                return 200, "application/json", _json(dump)
            text = f"tether master {self._pid}: {len(dump)} thread(s)\n" + format_thread_dump(dump)
            return 200, "text/plain; charset=utf-8", text.encode()

        return DebugSource(
            is_ready=self.pool.is_ready,
            status=lambda: str(self.status()["master"]["state"]),
            extra={"workers": self.status},
            pages={
                "": console_page(self.console_data),
                "tasks": tasks,
                "threads": threads,
                "stats": stats_page(
                    lambda: master_stats(self.targets(), fetch_unix),
                    lambda: self.lifecycle.history,
                ),
            },
            collectors=[Families(self.families)],
            scrape=self.scrape,
        )


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


def _json(data: object) -> bytes:
    return json.dumps(data, indent=2, default=str).encode() + b"\n"


async def fetch_unix(path: str, target: str, limit: float = 5.0) -> tuple[int, bytes]:
    """GET ``target`` from the HTTP server on the unix socket ``path`` within ``limit`` seconds."""
    async with asyncio.timeout(limit):
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            request = f"GET {target} HTTP/1.1\r\nHost: worker\r\nConnection: close\r\n\r\n"
            writer.write(request.encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {}
            for line in lines[1:]:
                key, sep, value = line.partition(":")
                if sep:
                    headers[key.strip().lower()] = value.strip().lower()
            if headers.get("transfer-encoding") == "chunked":
                body = await _read_chunked(reader)
            elif "content-length" in headers:
                body = await reader.readexactly(int(headers["content-length"]))
            else:
                body = await reader.read()
            return status, body
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readline()


class _Collector:
    """The master's own metrics, read from the pool at scrape time."""

    def __init__(self, view: StatusView) -> None:
        self.view = view

    def collect(self) -> Iterable[Metric]:
        pool = self.view.pool
        yield M.READY.family(float(pool.is_ready()))
        live = pool.live_workers()
        yield M.MASTER_WORKERS.series(
            ((state,), float(sum(1 for w in live if w.state == state)))
            for state in ("starting", "ready", "stopping")
        )
        yield M.MASTER_WORKERS_WANTED.family(float(pool.size))
        yield M.MASTER_GENERATION.family(
            float(pool.active.number if pool.active is not None else 0)
        )
        yield M.MASTER_RELOADING.family(float(pool.reloading))
        yield M.MASTER_RELOADS.family(float(pool.reloads))
        yield M.MASTER_RELOADS_FAILED.family(float(pool.reloads_failed))
        yield M.MASTER_WORKER_RESTARTS.family(float(pool.restarts))
        yield M.MASTER_UPTIME.family(self.view.uptime)
