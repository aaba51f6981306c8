"""A serving process's own limits: ``--limit-max-requests``, ``--max-requests``, memory.

``--limit-max-requests`` ends the process after its limit (a master replaces
it as a crash-free exit); ``--max-requests`` and ``--max-worker-memory``
*recycle* it: a fresh process takes over before this one drains, so no
request fails (gunicorn's recycling, done as a reload of one process).

- A master's worker stops taking connections and requests at once (each
  open connection gets at most one more, told ``Connection: close``; new
  ones queue in the master's sockets for its siblings and its successor) and
  asks its master for a successor (``RECYCLE=1``); the master drains it once
  the successor is READY (:mod:`tether.master.recycling`), or sends
  :data:`~tether.worker.RESUME_SIGNAL` if none can start, and it serves on.
- One process (``--workers 0``) hands its sockets over as a reload does.

Invariant: a successor is asked for at most once per process; the limits
are drawn once (jitter included) when the HTTP engine is configured, and
memory is read only while serving (a tick with connections open, and each
watchdog heartbeat), never polled from a loop of its own. The engine counts
responses with :class:`RequestLimit` (one integer decrement a request).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Callable

from tether.config import RunConfig
from tether.engine import ASGIApp, DrainHooks, Engine, Receive, Scope, Send
from tether.metrics import process_rss
from tether.worker import recycle_report

__all__ = ["MIB", "Recycler", "RequestLimit"]

logger = logging.getLogger("tether.runtime")

#: Bytes in a MiB (--max-worker-memory).
MIB = 1024 * 1024


class Recycler:
    """The limits of one serving process, and what it does when it reaches one."""

    def __init__(
        self,
        config: RunConfig,
        *,
        is_worker: bool,
        http: Callable[[], Engine | None],
        notify: Callable[..., None],
        stop: Callable[[str], None],
        reload: Callable[[str], None],
        stopping: Callable[[], bool],
    ) -> None:
        self._config = config
        self._is_worker = is_worker
        self._http = http
        self._notify = notify
        self._stop = stop
        self._reload = reload
        self._stopping = stopping
        #: A successor was asked for (once per process).
        self.asked = False
        self._resuming: asyncio.Task[None] | None = None

    def wire(self, hooks: DrainHooks) -> int | None:
        """Tell the engine's hooks where the limits lead; the request limit, jitter drawn."""
        config = self._config
        limit = config.limit_max_requests
        if limit is not None:
            limit += random.randint(0, config.limit_max_requests_jitter)
            hooks.request_limit = functools.partial(
                self._stop, f"served {limit} requests (--limit-max-requests)"
            )
        elif config.max_requests is not None:
            limit = config.max_requests + random.randint(0, config.max_requests_jitter)
            hooks.request_limit = functools.partial(
                self.recycle, f"served {limit} requests (--max-requests)"
            )
        if config.max_worker_memory is not None:
            hooks.tick = self.check_memory
        return limit

    def recycle(self, why: str) -> None:
        """--max-requests or --max-worker-memory reached: a fresh process takes over."""
        if self.asked:
            return
        self.asked = True
        if self._is_worker:
            logger.info("%s: taking no new requests; asking the master for a successor", why)
            http = self._http()
            if http is not None:
                http.stop_accepting()
            self._notify(*recycle_report(why))
        else:
            self._reload(why)

    def resume(self) -> None:
        """RESUME_SIGNAL: no successor could take over; serve on (not once stopping)."""
        http = self._http()
        if http is None or http.accepting or self._stopping():
            return
        if self._resuming is not None and not self._resuming.done():
            return
        logger.warning("no successor could be started: taking requests again")
        self._resuming = asyncio.get_running_loop().create_task(
            http.resume_accepting(), name="tether-resume-accepting"
        )

    def check_memory(self) -> None:
        """--max-worker-memory: recycle once resident memory passes the limit."""
        limit = self._config.max_worker_memory
        if limit is None or self.asked:
            return
        rss = process_rss()
        if rss > limit * MIB:
            self.recycle(
                f"resident memory {rss / MIB:.0f} MiB passed --max-worker-memory {limit} MiB"
            )


class RequestLimit:
    """Counts finished HTTP requests; at the limit, asks once for a graceful stop.

    The engine wraps the app with it when ``ServeOptions.limit_max_requests``
    is set and ``DrainHooks.request_limit`` is what :meth:`Recycler.wire` plugged in.
    """

    def __init__(self, app: ASGIApp, limit: int, reached: Callable[[], None]) -> None:
        self.app = app
        self.left = limit
        self.reached = reached

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            if scope["type"] == "http":
                self.left -= 1
                if self.left == 0:
                    self.reached()
