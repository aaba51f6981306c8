"""The seam between tether's lifecycle and the HTTP engine that parses requests.

tether's runtime (readiness, signals, recycling, metrics, the debug views) and
the master's debug listener need a handful of facts from whatever serves the
app: when it is ready, whether it accepts, how many connections and requests
it holds, which requests run and for how long. :class:`Engine` is that
handful; :class:`EngineFactory` builds one from the app, its pre-bound
sockets, the options and the runtime's drain hooks (:class:`ServeOptions`,
:class:`DrainHooks`: defined here, so an engine needs nothing of another's).

The invariant: outside the engine's implementation (``tether.serving`` and the
protocol adapters it owns, ``tether._http1``, ``tether._guard`` and
``tether._transport``), no module imports the engine's library or reaches into
its objects; they hold an :class:`Engine` and ask it. Serving with another library is then one new
module implementing :class:`Engine` (which names its package to
``tether._stacks.count_as_own``), and ``tether._engines.http_engine`` returning
it (``tests/test_engine.py`` keeps that honest). This module imports no engine,
so an implementation imports it without loading another's.

What an engine promises (DESIGN.md's phases 3 to 6, which ``run`` carries out):

- ``run(stop)`` runs the app's lifespan startup, accepts on every socket, then
  calls ``stop.ready(addresses)``; it returns once ``stop`` has fired and the
  drain is done: listeners closed, in-flight requests finished (cut, and
  reported in ``hooks.abandoned``, when ``stop.deadline`` leaves no more time),
  ``hooks.background`` drained, the lifespan shutdown run. It closes the
  sockets it was given when it returns.
- ``stop_accepting()`` / ``resume_accepting()``: the first half of a drain
  without waiting (a process about to be replaced), and its undoing.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from tether._drain import DrainSignal
from tether.config import HttpOptions
from tether.errors import AbandonedWork

if TYPE_CHECKING:
    from tether.group import StopToken
    from tether.metrics import ProcessMetrics

__all__ = [
    "ASGIApp",
    "DrainHooks",
    "Engine",
    "EngineFactory",
    "ServeOptions",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class ServeOptions:
    """How the HTTP member behaves; defaults match uvicorn's where uvicorn has one."""

    #: Seconds an idle keep-alive connection may still send a request once draining begins.
    idle_grace: float = 0.5
    #: "auto" runs the ASGI lifespan protocol if the app supports it; "on" requires it; "off".
    lifespan: Literal["auto", "on", "off"] = "auto"
    #: tether's access log (logger ``tether.access``), one record after each response.
    access_log: bool = False
    #: Its line, in gunicorn's atoms; None for the default.
    access_logformat: str | None = None
    #: After this many responses, ``DrainHooks.request_limit`` is called once.
    limit_max_requests: int | None = None
    #: The HTTP engine's options (keep-alive, TLS, proxy headers, websockets...).
    http: HttpOptions = field(default_factory=HttpOptions)
    #: Name for logs and reports.
    name: str = "http"
    #: When cancelled at the deadline: seconds to wait for phase 5's report of what it abandoned.
    report_grace: float = 1.0
    #: Seconds a connection has to send a whole request head, from its accept or from the
    #: first byte of a later head (None: no limit, as in uvicorn); see ``tether._guard``.
    head_timeout: float | None = 10.0
    #: Open connections at most (None: no cap). At it, a new connection takes the place of
    #: the one idle the longest, or is closed at once when every one has a request in
    #: progress: a port that strangers can reach cannot exhaust the process's fds, and
    #: idle or half-sent connections cannot lock out a probe.
    max_connections: int | None = None
    #: With ``max_connections``: a request head larger than this is answered 431.
    max_head: int = 64 * 1024


@dataclass
class DrainHooks:
    """What the runtime plugs into the shutdown phases."""

    #: Phase 5: drain background work by the given deadline, a ``time.monotonic()`` value
    #: (the plan's clock: ``stop.monotonic_deadline`` less the app's shutdown reserve);
    #: returns what was abandoned.
    background: Callable[[float], Awaitable[list[AbandonedWork]]] | None = None
    #: The set the engine keeps the tasks running requests in (http and websocket), so
    #: that tasks a handler starts can be recognised by their creator at no cost
    #: per request (tether's adoption: ``tether.tracker.REQUESTS``).
    requests: set[asyncio.Future[Any]] | None = None
    #: Where abandoned requests and the lifespan are reported.
    abandoned: list[AbandonedWork] = field(default_factory=list)
    #: Set when the drain begins; :func:`drain_signal` returns it while the server runs.
    drain: DrainSignal = field(default_factory=DrainSignal)
    #: Called once when ``ServeOptions.limit_max_requests`` responses have been sent.
    request_limit: Callable[[], None] | None = None
    #: Where every response, drain phase and loop-lag sample is counted; None: not counted.
    metrics: ProcessMetrics | None = None
    #: Wraps the app (inside tether's own layer, around the access log) once, when the
    #: server is built: OpenTelemetry's server spans. None: nothing, and no cost per request.
    wrap: Callable[[ASGIApp], ASGIApp] | None = None
    #: Told the seconds each shutdown phase took (OpenTelemetry's drain events).
    phase_done: Callable[[str, float], None] | None = None
    #: Called about once a second while connections are open (with the date clock), for
    #: cheap checks that only traffic makes necessary (``--max-worker-memory``).
    tick: Callable[[], None] | None = None
    #: Called with True when the first connection opens, False once none has been open
    #: for up to a second (tether._traffic: what runs only while there is traffic, the
    #: blocked-loop watch).
    traffic: Callable[[bool], None] | None = None


class Engine(Protocol):
    """One app served on its sockets, as tether's lifecycle sees it."""

    #: The listening sockets it serves (their addresses are what READY names).
    sockets: list[socket.socket]
    #: False before it listens and after ``stop_accepting()`` (until ``resume_accepting()``).
    accepting: bool

    async def run(self, stop: StopToken) -> None:
        """Start, report ready through ``stop``, serve until it fires, then drain."""
        ...

    def stop_accepting(self) -> None:
        """Take no new connections; each open one serves at most one more request."""
        ...

    async def resume_accepting(self) -> None:
        """Take connections again after ``stop_accepting()``; nothing once draining."""
        ...

    @property
    def connections(self) -> int:
        """Open client connections."""
        ...

    @property
    def requests_in_flight(self) -> int:
        """Requests whose handler is still running (responded or not)."""
        ...

    def in_flight(self) -> list[dict[str, Any]]:
        """Requests not yet responded to, oldest first: ``method``, ``path``, ``age`` (s)."""
        ...

    def after_response(self) -> list[dict[str, Any]]:
        """Handlers still running after their response, as background work.

        Each: ``name``, ``started_by``, ``adopted`` (False), ``age`` (s).
        """
        ...


class EngineFactory(Protocol):
    """Builds an :class:`Engine`; nothing is listened on or started until ``run``."""

    def __call__(
        self,
        app: ASGIApp,
        sockets: list[socket.socket],
        options: ServeOptions | None = None,
        hooks: DrainHooks | None = None,
    ) -> Engine: ...
