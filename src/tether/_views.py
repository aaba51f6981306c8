"""What one process shows about itself: the console's data, its charts' sample, its metrics.

A :class:`ProcessView` reads the service's parts (the metrics, the tracker,
the group, the HTTP server) and never writes them: the views are the
service's lifecycle state seen from outside, so they live beside it rather
than in it. The debug server asks it for ``/debug/`` and ``/debug/stats``
and its collector for ``/metrics``; a worker's final counts and the
telemetry's gauges read the same families.

Invariant: nothing here is imported by a serving process that nobody looks
at — the debug server, the console and ``prometheus_client`` are imported
where a view is made or asked for (``Service`` makes this view on first use).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from tether import _metricdefs as M
from tether._appmetrics import AppFamilies, single_process_families
from tether.metrics import Families, process_families, process_rss

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from tether.config import RunConfig
    from tether.debug import DebugSource
    from tether.engine import Engine
    from tether.group import Group
    from tether.metrics import ProcessMetrics
    from tether.tracker import Tracker

__all__ = ["ProcessView"]


class ProcessView:
    """This process as its debug server, final metrics and telemetry see it.

    ``ready``, ``status`` and ``http`` are read when asked: they change over
    the process's life (the HTTP server exists once started).
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        metrics: ProcessMetrics,
        tracker: Tracker,
        group: Group,
        ready: Callable[[], bool],
        status: Callable[[], str],
        http: Callable[[], Engine | None],
        is_worker: bool,
        generation: int,
        started: float,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.tracker = tracker
        self.group = group
        self.ready = ready
        self.status = status
        self.http = http
        self.is_worker = is_worker
        self.generation = generation
        #: ``time.monotonic()`` when the service was made (the console's age).
        self.started = started

    def debug_source(self) -> DebugSource:
        """What the debug server serves: readiness, the console, its charts, ``/metrics``."""
        from tether._charts import stats_page
        from tether.console import console_page
        from tether.debug import DebugSource

        return DebugSource(
            is_ready=self.ready,
            status=self.status,
            collectors=[Families(AppFamilies(self.families, self.app_families))],
            pages={"": console_page(self.console), "stats": stats_page(self.stats)},
        )

    async def stats(self) -> list[dict[str, Any]]:
        """This process's sample for the console's charts (``/debug/stats``)."""
        from tether._charts import process_sample

        http = self.http()
        in_flight = len(http.in_flight()) if http is not None else 0
        return [
            {
                "role": "worker" if self.is_worker else "process",
                "id": self.metrics.worker,
                "pid": os.getpid(),
                "sample": process_sample(self.metrics, in_flight),
            }
        ]

    def app_families(self) -> list[Metric]:
        """The app's prometheus_client metrics; a worker's reach its master another way."""
        if self.is_worker or not self.config.app_metrics:
            return []
        return single_process_families()

    def families(self) -> Iterator[Metric]:
        """tether's own metrics of this process (``/metrics``, final counts, telemetry)."""
        yield M.READY.family(float(self.ready()))
        http = self.http()
        yield M.HTTP_CONNECTIONS.family(http.connections if http is not None else 0)
        yield M.HTTP_REQUESTS_IN_FLIGHT.family(http.requests_in_flight if http is not None else 0)
        yield from self.metrics.families()
        stats = self.tracker.stats()
        yield M.BACKGROUND_SPAWNED.family(stats.spawned)
        yield M.BACKGROUND_COMPLETED.family(stats.completed)
        yield M.BACKGROUND_FAILED.family(stats.failed)
        yield M.BACKGROUND_ABANDONED.family(stats.abandoned)
        yield M.BACKGROUND_RUNNING.family(stats.running)
        worker = self.metrics.worker
        yield M.ASYNCIO_TASKS.series([((worker,), len(asyncio.all_tasks()))])
        yield M.THREADS.series([((worker,), threading.active_count())])
        yield from process_families(worker)

    async def console(self) -> dict[str, Any]:
        """What ``/debug/`` shows about this process (a master asks each worker for it)."""
        from tether.debug import task_dump

        http = self.http()
        status = self.status()
        process = {
            "role": "worker" if self.is_worker else "process",
            "id": self.metrics.worker,
            "pid": os.getpid(),
            "generation": self.generation,
            "state": status,
            "age": round(time.monotonic() - self.started, 3),
            "rss": process_rss(),
            "members": sorted(self.group.tasks()),
            "requests": http.in_flight() if http is not None else [],
            "background": self.tracker.running()
            + (http.after_response() if http is not None else []),
            "tasks": task_dump(),
        }
        return {
            "title": f"tether: {self.config.app}",
            "summary": f"pid {os.getpid()}, {status}",
            "processes": [process],
            "reloads": [],
        }
