"""An ASGI app on pre-bound sockets, with uvicorn as the engine and tether's lifecycle.

uvicorn parses HTTP and runs the app; tether owns everything around it:
signals, readiness, and the shutdown phases of DESIGN.md. We use uvicorn's
protocol classes, its config (for the same defaults as ``uvicorn`` itself) and
its lifespan driver, but not ``uvicorn.Server``: its run loop polls every
100 ms, it installs its own signal handlers and it calls ``sys.exit`` when
startup fails.

The invariant this module keeps: once :meth:`HttpServer.run` has been told to
stop, no request that reached the process is dropped while the budget lasts.
Listeners close first; in-flight requests finish; a keep-alive connection is
told ``Connection: close`` on its next response; an idle keep-alive connection
is given ``idle_grace`` to send one more request (closing it at once races a
client that is sending right now); then background work drains, then the
app's lifespan shutdown runs. Whatever is still running when the group
cancels us is reported by name.

Nothing here polls: waits are on events that the connection and task sets
fire when they become empty.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, Literal, cast

from uvicorn.config import Config
from uvicorn.lifespan.on import LifespanOn
from uvicorn.server import ServerState

from tether._stacks import task_stack
from tether.errors import AbandonedWork, StartupError
from tether.group import StopToken

if TYPE_CHECKING:
    from tether.metrics import ProcessMetrics

__all__ = ["DrainHooks", "HttpServer", "ServeOptions"]

logger = logging.getLogger("tether.serving")

_now = time.perf_counter  # per request: one global lookup, not two

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
    access_log: bool = False
    #: uvicorn's keep-alive timeout for idle connections while serving.
    keep_alive: int = 5
    backlog: int = 2048
    #: Name for logs and reports.
    name: str = "http"
    #: When cancelled at the deadline: seconds to wait for phase 5's report of what it abandoned.
    report_grace: float = 1.0


@dataclass
class DrainHooks:
    """What the runtime plugs into the shutdown phases."""

    #: Phase 5: drain background work within the given seconds; returns what was abandoned.
    background: Callable[[float], Awaitable[list[AbandonedWork]]] | None = None
    #: Set to the request's scope while each request (http or websocket) runs,
    #: so that tasks the handler starts can be recognised (tether's adoption).
    request_var: ContextVar[object] | None = None
    #: Where abandoned requests and the lifespan are reported.
    abandoned: list[AbandonedWork] = field(default_factory=list)
    #: Where every response, drain phase and loop-lag sample is counted; None: not counted.
    metrics: ProcessMetrics | None = None


class _Connections(set[Any]):
    """uvicorn's set of open connections, telling us when it turns busy and empty.

    It changes once per connection, so a Python-level hook costs nothing that
    matters. (The request-task set changes twice per request; it stays a plain
    set and the drain waits on the tasks themselves.)
    """

    def __init__(self, on_busy: Callable[[], None], on_empty: Callable[[], None]) -> None:
        super().__init__()
        self.empty = asyncio.Event()
        self.empty.set()
        self._on_busy = on_busy
        self._on_empty = on_empty

    def add(self, item: Any) -> None:
        if not self:
            self.empty.clear()
            self._on_busy()
        super().add(item)

    def discard(self, item: Any) -> None:
        super().discard(item)
        if not self and not self.empty.is_set():
            self.empty.set()
            self._on_empty()

    def remove(self, item: Any) -> None:  # uvicorn's websocket protocols use remove
        if item not in self:
            raise KeyError(item)
        self.discard(item)


class _State(ServerState):
    """uvicorn's shared server state, with a watched connection set and a dated header.

    uvicorn refreshes the ``date`` header from a 100 ms tick that runs even
    when idle. Ours is refreshed once a second by a timer that runs only while
    a connection is open: no per-request cost, and no wake-ups when idle.
    """

    def __init__(
        self,
        extra_headers: list[tuple[bytes, bytes]],
        lag: Callable[[float], None] | None = None,
    ) -> None:
        super().__init__()
        self.watched_connections = _Connections(self._start_clock, self._stop_clock)
        self.connections = self.watched_connections
        self._extra = extra_headers
        self._clock: asyncio.TimerHandle | None = None
        # The clock is also the event-loop lag probe: it only runs while there is traffic.
        self._lag = lag
        self._due = 0.0  # loop time the clock's next tick is due
        self._refresh_date()

    def _refresh_date(self) -> None:
        now = time.time()
        self.default_headers = [(b"date", formatdate(now, usegmt=True).encode()), *self._extra]
        if self._clock is not None:
            loop = asyncio.get_running_loop()
            if self._lag is not None:
                self._lag(loop.time() - self._due)
            # Fire just after the next second starts, so the header is never a second behind.
            delay = 1.0 - now % 1.0
            self._due = loop.time() + delay
            self._clock = loop.call_later(delay, self._refresh_date)

    def _start_clock(self) -> None:
        loop = asyncio.get_running_loop()
        self._due = loop.time()
        self._clock = loop.call_later(0, self._refresh_date)

    def _stop_clock(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None


class _Lifespan(LifespanOn):
    """uvicorn's lifespan driver, keeping a handle on the task that runs the app's lifespan."""

    task: asyncio.Task[Any] | None = None

    async def main(self) -> None:
        self.task = asyncio.current_task()
        await super().main()


class _DrainMiddleware:
    """Marks each request's context, counts it, and asks for ``Connection: close`` when draining."""

    def __init__(self, app: ASGIApp, hooks: DrainHooks) -> None:
        self.app = app
        self.hooks = hooks
        self.metrics = hooks.metrics
        self.draining = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            return await self.app(scope, receive, send)
        if self.draining:
            send = _closing(send)
        # This runs for every request: a ContextVar set/reset, nothing heavier (the
        # scope is turned into a label only if a report ever needs one).
        var = self.hooks.request_var
        token = var.set(scope) if var is not None else None
        metrics = self.metrics
        try:
            if metrics is None:
                return await self.app(scope, receive, send)
            if kind != "http":
                metrics.websockets += 1
                try:
                    return await self.app(scope, receive, send)
                finally:
                    metrics.websockets -= 1
            # Counted here, in the same frame: two clock reads, a plain function in
            # front of send (no extra coroutine per message), one call to record.
            status = 0
            sent = 0

            def recording_send(message: Message) -> Awaitable[None]:
                nonlocal status, sent
                if message["type"] == "http.response.body":
                    sent += len(message.get("body", b""))
                elif message["type"] == "http.response.start":
                    status = message["status"]
                return send(message)

            started = scope["tether.started"] = _now()
            try:
                await self.app(scope, receive, recording_send)
            except asyncio.CancelledError:
                raise  # cut at the deadline: counted as such, not as an answer
            except BaseException:
                # Before a response started, the server answers 500 for the app.
                metrics.request(scope["method"], status or 500, _now() - started, sent)
                raise
            metrics.request(scope["method"], status or 500, _now() - started, sent)
        finally:
            if token is not None:
                var.reset(token)  # type: ignore[union-attr]


def _closing(send: Send) -> Send:
    async def send_closing(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            headers.append((b"connection", b"close"))
            message = {**message, "headers": headers}
        await send(message)

    return send_closing


class HttpServer:
    """Serves one ASGI app on the given listening sockets until its stop token fires.

    Use it as a :class:`~tether.group.Group` member: ``group.start(server.run)``
    returns once lifespan startup has completed and every socket is accepting.
    """

    def __init__(
        self,
        app: ASGIApp,
        sockets: list[socket.socket],
        options: ServeOptions | None = None,
        hooks: DrainHooks | None = None,
    ) -> None:
        self.options = options or ServeOptions()
        self.hooks = hooks or DrainHooks()
        self.sockets = sockets
        self._middleware = _DrainMiddleware(app, self.hooks)
        self.config = Config(
            app=self._middleware,
            lifespan=self.options.lifespan,
            log_config=None,
            access_log=self.options.access_log,
            timeout_keep_alive=self.options.keep_alive,
            backlog=self.options.backlog,
            interface="asgi3",
        )
        self.config.load()
        metrics = self.hooks.metrics
        self.state = _State(
            self.config.encoded_headers, metrics.loop_lag if metrics is not None else None
        )
        self.phase = "created"
        self._servers: list[asyncio.Server] = []
        self._lifespan: _Lifespan | None = None
        self._background: asyncio.Future[list[AbandonedWork]] | None = None

    async def run(self, stop: StopToken) -> None:
        """Start, serve until ``stop``, then drain in phases (DESIGN.md, steps 3 to 6)."""
        await self._startup()
        try:
            stop.ready([s.getsockname() for s in self.sockets])
            self.phase = "serving"
            await stop.wait()
            await self._shutdown(stop)
        except asyncio.CancelledError:
            self._report_abandoned()
            await self._collect_background_report()
            raise
        finally:
            self._close_everything()

    # -- startup ------------------------------------------------------------------

    async def _startup(self) -> None:
        config = self.config
        self.phase = "starting"
        if config.lifespan != "off":
            self._lifespan = _Lifespan(config)
            await self._lifespan.startup()
            if self._lifespan.should_exit:
                msg = (
                    "the app's lifespan startup failed (see the error above); "
                    "fix the startup code, or run with lifespan off if the app has none"
                )
                raise StartupError(msg)
        app_state = self._lifespan.state if self._lifespan is not None else {}
        loop = asyncio.get_running_loop()

        def protocol() -> asyncio.Protocol:
            factory = cast(Any, config.http_protocol_class)
            return cast(
                asyncio.Protocol,
                factory(config=config, server_state=self.state, app_state=app_state, _loop=loop),
            )

        for sock in self.sockets:
            if sock.family == socket.AF_UNIX:
                server = await loop.create_unix_server(protocol, sock=sock, backlog=config.backlog)
            else:
                server = await loop.create_server(protocol, sock=sock, backlog=config.backlog)
            self._servers.append(server)

    # -- shutdown -----------------------------------------------------------------

    async def _shutdown(self, stop: StopToken) -> None:
        state = self.state
        metrics = self.hooks.metrics
        if metrics is not None:
            metrics.drains += 1
        began = time.perf_counter()
        # Phase 3: stop accepting. Our copies of the listeners close; a master
        # keeps its own, so queued connections wait for the next generation.
        self.phase = "draining"
        for server in self._servers:
            server.close()
        # Phase 4: drain connections. Busy ones close after their response.
        self._middleware.draining = True
        for conn in list(state.connections):
            cycle = getattr(conn, "cycle", None)
            if cycle is not None and not cycle.response_complete:
                cycle.keep_alive = False
        if state.connections:
            logger.info("draining %d connection(s)", len(state.connections))
            grace = min(self.options.idle_grace, stop.remaining() or 0.0)
            # Idle connections may still carry one more request; give them the grace.
            try:
                async with asyncio.timeout(grace):
                    await state.watched_connections.empty.wait()
            except TimeoutError:
                pass
            for conn in list(state.connections):
                conn.shutdown()  # idle: closed now; busy: closed after the response
            await state.watched_connections.empty.wait()
        while state.tasks:  # handlers still running after their connection closed
            await asyncio.wait(list(state.tasks))
        for server in self._servers:
            await server.wait_closed()
        began = self._phase_done("connections", began)
        # Phase 5: background work started by requests and by tether.spawn.
        self.phase = "draining background work"
        if self.hooks.background is not None:
            # Shielded: if the group cancels us at the deadline, phase 5 still
            # finishes its own cancel-and-report, and we collect that report.
            self._background = asyncio.ensure_future(self.hooks.background(stop.remaining() or 0.0))
            left = await asyncio.shield(self._background)
            self._background = None
            self.hooks.abandoned.extend(left)
            began = self._phase_done("background", began)
        # Phase 6: the app's own shutdown.
        self.phase = "app shutdown"
        if self._lifespan is not None:
            await self._lifespan.shutdown()
            self._phase_done("app shutdown", began)
        self.phase = "stopped"

    def _phase_done(self, phase: str, began: float) -> float:
        now = time.perf_counter()
        if self.hooks.metrics is not None:
            self.hooks.metrics.drain_phase(phase, now - began)
        return now

    def _report_abandoned(self) -> None:
        """Called when the group cancels us at the deadline: name what was cut short."""
        for task in list(self.state.tasks):
            if not task.done():
                if self.hooks.metrics is not None:
                    self.hooks.metrics.requests_cut += 1
                self.hooks.abandoned.append(
                    AbandonedWork(
                        "request",
                        _request_name(task),
                        stack=task_stack(task),
                        detail=f"in phase {self.phase!r}",
                    )
                )
        lifespan = self._lifespan
        if self.phase == "app shutdown" and lifespan is not None and lifespan.task is not None:
            self.hooks.abandoned.append(
                AbandonedWork(
                    "lifespan",
                    "lifespan shutdown",
                    stack=task_stack(lifespan.task),
                    detail="the app's shutdown did not finish",
                )
            )

    async def _collect_background_report(self) -> None:
        background = self._background
        if background is None:
            return
        done, _ = await asyncio.wait({background}, timeout=self.options.report_grace)
        if done and not background.cancelled() and background.exception() is None:
            self.hooks.abandoned.extend(background.result())
        else:
            background.cancel()

    def _close_everything(self) -> None:
        for server in self._servers:
            server.close()
        for conn in list(self.state.connections):
            conn.transport.close()
        for task in list(self.state.tasks):
            task.cancel()
        lifespan = self._lifespan
        if lifespan is not None and lifespan.task is not None and not lifespan.task.done():
            lifespan.task.cancel()
        for sock in self.sockets:
            sock.close()

    @property
    def connections(self) -> int:
        """Open client connections."""
        return len(self.state.connections)

    @property
    def requests_in_flight(self) -> int:
        """Requests whose handler is still running."""
        return len(self.state.tasks)

    def in_flight(self) -> list[dict[str, Any]]:
        """Each request whose handler runs: method, path, seconds since it reached the app."""
        now = time.perf_counter()
        out = []
        for task in list(self.state.tasks):
            scope = _task_scope(task)
            if scope is None:
                continue
            started = scope.get("tether.started")
            out.append(
                {
                    "method": scope.get("method", "WEBSOCKET"),
                    "path": scope.get("path", ""),
                    "age": None if started is None else round(now - started, 3),
                }
            )
        return sorted(out, key=lambda r: -(r["age"] or 0.0))


def _task_scope(task: asyncio.Task[Any]) -> dict[str, Any] | None:
    """The ASGI scope of a uvicorn request task, from the cycle it runs."""
    coro: Any = task.get_coro()
    frame = getattr(coro, "cr_frame", None)
    cycle = frame.f_locals.get("self") if frame is not None else None
    scope = getattr(cycle, "scope", None)
    return scope if isinstance(scope, dict) and "path" in scope else None


def _request_name(task: asyncio.Task[Any]) -> str:
    """``METHOD /path`` for a uvicorn request task."""
    scope = _task_scope(task)
    if scope is not None:
        return f"{scope.get('method', 'WS')} {scope['path']}"
    return task.get_name()
