"""The seam between tether's lifecycle and the HTTP engine that parses requests.

tether's runtime (readiness, signals, recycling, metrics, the debug views) and
the master's debug listener need a handful of facts from whatever serves the
app: when it is ready, whether it accepts, how many connections and requests
it holds, which requests run and for how long. :class:`Engine` is that
handful; :class:`EngineFactory` builds one from the app, its pre-bound
sockets, the options and the runtime's drain hooks.

The invariant: outside the engine's implementation (``tether.serving`` and the
protocol adapters it owns, ``tether._http1`` and ``tether._guard``), no module
imports the engine's library or reaches into its objects; they hold an
:class:`Engine` and ask it. Serving with another library is then one new
module implementing :class:`Engine` (which names its package to
``tether._stacks.count_as_own``), and :func:`http_engine` naming it
(``tests/test_engine.py`` keeps that honest).

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

import socket
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tether.group import StopToken
    from tether.serving import ASGIApp, DrainHooks, ServeOptions

__all__ = ["Engine", "EngineFactory", "http_engine"]


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


def http_engine() -> EngineFactory:
    """The engine tether serves with: uvicorn's protocols under tether's drain."""
    from tether.serving import HttpServer

    return HttpServer
