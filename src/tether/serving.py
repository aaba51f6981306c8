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
app's lifespan shutdown runs.

The drain ends early enough to leave the app's shutdown a slice of the budget
(:func:`app_shutdown_reserve`): requests still running at the drain's deadline
(an endless stream) are named, their connections closed and their tasks
cancelled, and lifespan shutdown still runs, so pools are closed and buffers
flushed even when a client never lets go. Whatever is still running when the
group cancels us at the budget's end is reported by name.

When the drain begins, the server's :class:`DrainSignal` is set: code written
for uvicorn finds it where it looks for uvicorn's ``Server.should_exit``, so
libraries that end long-lived streams on shutdown (sse-starlette) do so here.

Nothing here polls: waits are on events that the connection and task sets
fire when they become empty.

Why this module is long: HttpServer and its drain are written against uvicorn's protocol
classes and their internals (connections, cycles, transports, its lifespan driver and
server state); keeping every use of those internals in one module makes an uvicorn
upgrade one file to check. What does not use them lives apart, each in the module of its
concept (docs/layout.md, "Serving HTTP"): tether._drain, _http1, _guard, _transport,
_traffic, _websocket, _accesslog.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
from collections.abc import Callable
from contextlib import nullcontext
from email.utils import formatdate
from types import MethodType
from typing import Any

import tether._uvicornpkg  # noqa: F401 (first: uvicorn's package without its command line)

# isort: split
from uvicorn.config import Config
from uvicorn.lifespan.on import LifespanOn
from uvicorn.server import ServerState

from tether._accesslog import AccessLog
from tether._adoption import request_name, task_owner
from tether._drain import DrainSignal, app_shutdown_reserve, current_drain_signal, drain_signal
from tether._guard import HeadSweep, capped, guarded
from tether._http1 import adapt, requests_waiting
from tether._http1 import closing_send as _closing  # the names _DrainMiddleware calls
from tether._http1 import end_stream as _end_stream
from tether._recycler import RequestLimit
from tether._stacks import count_as_own, task_label, task_stack
from tether._traffic import Connections, SecondClock
from tether._transport import TCP_CORK, coalescing
from tether._websocket import LazyProtocol
from tether.config import HttpOptions
from tether.engine import ASGIApp, DrainHooks, Receive, Scope, Send, ServeOptions
from tether.errors import AbandonedWork, StartupError
from tether.group import StopToken
from tether.metrics import recording_send

__all__ = [
    "ASGIApp",
    "DrainHooks",
    "DrainSignal",
    "HttpServer",
    "ServeOptions",
    "app_shutdown_reserve",
    "drain_signal",
]

logger = logging.getLogger("tether.serving")

count_as_own("uvicorn")  # a request's task reads as the app's, not as uvicorn's

_now = time.perf_counter  # per request: one global lookup, not two
#: uvicorn's level below DEBUG.
_TRACE = 5


class _State(ServerState):
    """uvicorn's shared server state, with a watched connection set and a dated header.

    uvicorn refreshes the ``date`` header from a 100 ms tick that runs even
    when idle. Ours is refreshed by a :class:`~tether._traffic.SecondClock`
    that runs only while a connection is open: no per-request cost, and no
    wake-ups when idle.
    """

    def __init__(
        self,
        extra_headers: list[tuple[bytes, bytes]],
        *,
        date: bool = True,
        lag: Callable[[float], None] | None = None,
        tasks: set[asyncio.Future[Any]] | None = None,
        tick: Callable[[], None] | None = None,
        traffic: Callable[[bool], None] | None = None,
    ) -> None:
        super().__init__()
        if tasks is not None:
            self.tasks = tasks  # type: ignore[assignment]  # uvicorn adds and discards each request's
        self._dated = date
        self._traffic = traffic
        self.watched_connections = Connections(self._busy, self._idle)
        self.connections = self.watched_connections
        self._extra = extra_headers
        # The clock is also the event-loop lag probe: it only runs while there is traffic.
        dated = self._refresh_date if date else None
        needed = date or lag is not None or tick is not None
        self._clock = SecondClock(on_second=dated, lag=lag, tick=tick) if needed else None
        self._refresh_date(time.time())

    def _refresh_date(self, now: float) -> None:
        if self._dated:
            self.default_headers = [(b"date", formatdate(now, usegmt=True).encode()), *self._extra]
        else:
            self.default_headers = list(self._extra)

    def _busy(self) -> None:
        if self._clock is not None:
            self._clock.start()
        if self._traffic is not None:
            self._traffic(True)

    def _idle(self) -> None:
        if self._clock is not None:
            self._clock.stop()
        if self._traffic is not None:
            self._traffic(False)


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
        #: The access log when it is right beneath: one send wrapper records for both.
        self.access = app if isinstance(app, AccessLog) else None
        self.draining = False
        #: Requests still running at the drain deadline were cut (see HttpServer._cut).
        self.cut = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            return await self.app(scope, receive, send)
        server_send = send
        if self.draining:
            send = _closing(send)
        metrics = self.metrics
        app = self.app
        # The access log right beneath, for an HTTP request: when it writes lines and the
        # metrics are recorded, one send wrapper serves both; when it writes none, its
        # pass-through (one more coroutine per request) is skipped, recording or not.
        logged = self.access if kind == "http" else None
        if logged is not None and not logged.on():
            app = logged.app
            logged = None
        try:
            if metrics is None:
                await app(scope, receive, send)
            elif kind != "http":
                metrics.websockets += 1
                try:
                    await app(scope, receive, send)
                finally:
                    metrics.websockets -= 1
            elif logged is not None:
                await logged.recorded(scope, receive, send, metrics)
            else:
                # Counted here, in the same frame: two clock reads, one call to record, and
                # in front of send a bound method over a list (no closure, no cells, no
                # extra coroutine per message; see tether.metrics.recording_send).
                response: list[Any] = [0, 0, send]  # status, body bytes, send
                started = scope["tether.started"] = _now()
                try:
                    await app(scope, receive, MethodType(recording_send, response))
                except asyncio.CancelledError:
                    raise  # cut at the deadline: counted as such, not as an answer
                except BaseException:
                    # Before a response started, the server answers 500 for the app.
                    metrics.request(
                        scope["method"], response[0] or 500, _now() - started, response[1]
                    )
                    raise
                metrics.request(scope["method"], response[0] or 500, _now() - started, response[1])
        except asyncio.CancelledError:
            if not self.cut:
                raise
            # Cut at the drain deadline: already named in the report, its connection is
            # closed; ending quietly keeps the server from logging it as an app error.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return
        if self.draining:
            await _end_stream(server_send)


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
        # A server the runtime plugs into (the app's, not the debug server) is the one
        # whose drain signal drain_signal() returns while it runs.
        self._publish_drain = hooks is not None
        self.sockets = sockets
        options = self.options
        if options.limit_max_requests is not None and self.hooks.request_limit is not None:
            app = RequestLimit(app, options.limit_max_requests, self.hooks.request_limit)
        if options.access_log:
            app = AccessLog(app, options.access_logformat)
        if self.hooks.wrap is not None:
            app = self.hooks.wrap(app)
        self._middleware = _DrainMiddleware(app, self.hooks)
        self.config = Config(
            app=self._middleware,
            lifespan=options.lifespan,
            log_config=None,
            access_log=False,  # tether's own (AccessLog), written after each response
            interface="asgi3",
            **_config_kwargs(options.http),
        )
        self.config.load()
        _trace_only_when_asked()
        metrics = self.hooks.metrics
        self.state = _State(
            self.config.encoded_headers,
            date=options.http.date_header,
            lag=metrics.loop_lag if metrics is not None else None,
            tasks=self.hooks.requests,
            tick=self.hooks.tick,
            traffic=self._traffic,
        )
        #: The head deadline of every connection: one timer, not one per connection.
        self._head_sweep = (
            HeadSweep(self.state.connections, options.head_timeout)
            if options.head_timeout is not None
            else None
        )
        self.phase = "created"
        self._servers: list[asyncio.Server] = []
        self._protocol: Callable[[], asyncio.Protocol] | None = None
        #: False once stop_accepting() was called (until resume_accepting()).
        self.accepting = False
        self._idle_close: asyncio.TimerHandle | None = None
        self._lifespan: _Lifespan | None = None
        self._background: asyncio.Future[list[AbandonedWork]] | None = None

    def _traffic(self, busy: bool) -> None:
        """The first connection opened (True), or none has been open for a while (False)."""
        if self._head_sweep is not None:
            self._head_sweep.traffic(busy)
        if self.hooks.traffic is not None:
            self.hooks.traffic(busy)

    async def run(self, stop: StopToken) -> None:
        """Start, serve until ``stop``, then drain in phases (DESIGN.md, steps 3 to 6)."""
        published = current_drain_signal(self.hooks.drain) if self._publish_drain else nullcontext()
        try:
            with published:
                await self._startup()
                stop.ready([s.getsockname() for s in self.sockets])
                self.phase = "serving"
                await stop.wait()
                await self._shutdown(stop)
        except asyncio.CancelledError:
            self.hooks.drain.set(force=True)
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
        self._protocol = self.protocol_factory(app_state, asyncio.get_running_loop())
        await self._listen()

    async def _listen(self) -> None:
        """Accept on every socket: at startup, and when taking connections again."""
        config = self.config
        loop = asyncio.get_running_loop()
        protocol = self._protocol
        assert protocol is not None
        for sock in self.sockets:
            if sock.family == socket.AF_UNIX:
                server = await loop.create_unix_server(
                    protocol, sock=sock, backlog=config.backlog, ssl=config.ssl
                )
            else:
                server = await loop.create_server(
                    protocol, sock=sock, backlog=config.backlog, ssl=config.ssl
                )
            self._servers.append(server)
        self.accepting = True

    # -- refusing new work while a successor starts --------------------------------

    def stop_accepting(self) -> None:
        """Take no new connections or requests; finish what is in progress, keep running.

        The first half of a drain (phases 3 and 4, without waiting), for a
        process that is about to be replaced (``--max-requests``): its
        listeners close (whoever holds the other copies, a master, keeps them
        open, so new connections queue for the siblings and the successor);
        each open connection serves at most one more request, told
        ``Connection: close``; an idle one is closed after ``idle_grace``.
        :meth:`resume_accepting` undoes it when no successor comes.
        """
        if self.phase != "serving" or not self.accepting:
            return
        self.accepting = False
        # Each server closes the socket it was given: keep copies to listen on again.
        self.sockets = [sock.dup() for sock in self.sockets]
        for server in self._servers:
            server.close()
        self._close_after_response()
        self._idle_close = asyncio.get_running_loop().call_later(
            self.options.idle_grace, self._close_idle
        )

    async def resume_accepting(self) -> None:
        """Take connections and requests again (no successor is coming); not once draining."""
        if self.phase != "serving" or self.accepting:
            return
        if self._idle_close is not None:
            self._idle_close.cancel()
            self._idle_close = None
        self._middleware.draining = False
        await self._listen()

    def _close_after_response(self) -> None:
        """Every response from now on says ``Connection: close``, and its connection closes."""
        self._middleware.draining = True
        for conn in list(self.state.connections):
            cycle = getattr(conn, "cycle", None)
            # Only where the response has not started: the server then says
            # "Connection: close" in it. Once the headers are out, closing after the
            # response would cut the next request the client sends without warning;
            # that request comes during the idle grace and is told to close instead.
            # Requests pipelined behind it are answered first; the last one is told.
            if cycle is not None and not cycle.response_started and not requests_waiting(conn):
                cycle.keep_alive = False

    def _close_idle(self) -> None:
        self._idle_close = None
        for conn in list(self.state.connections):
            conn.shutdown()  # idle: closed now; busy: closed after the response

    def protocol_factory(
        self, app_state: dict[str, Any], loop: asyncio.AbstractEventLoop
    ) -> Callable[[], asyncio.Protocol]:
        """What each accepted connection is served by: uvicorn's protocol, as tether runs it."""
        config = self.config
        state = self.state
        options = self.options
        cap = options.max_connections
        # The last response of a plain TCP connection leaves with its FIN (TLS: the close
        # waits for the TLS shutdown, so nothing may be held back for it).
        fin = (
            TCP_CORK != 0
            and config.ssl is None
            and all(sock.family in (socket.AF_INET, socket.AF_INET6) for sock in self.sockets)
        )
        factory = guarded(
            coalescing(adapt(config.http_protocol_class), fin_with_last=fin),
            head_timeout=options.head_timeout,
            max_head=options.max_head if cap is not None else None,
        )

        def protocol() -> asyncio.Protocol:
            return factory(  # type: ignore[no-any-return]
                config=config, server_state=state, app_state=app_state, _loop=loop
            )

        return protocol if cap is None else capped(protocol, state.connections, cap)

    # -- shutdown -----------------------------------------------------------------

    async def _shutdown(self, stop: StopToken) -> None:
        loop = asyncio.get_running_loop()
        deadline = stop.deadline if stop.deadline is not None else loop.time()
        # The drain (phases 4 and 5) ends early enough to leave the app's shutdown its slice.
        reserve = app_shutdown_reserve(deadline - loop.time()) if self._has_lifespan() else 0.0
        drain_by = deadline - reserve
        # The same moment on the plan's clock, for phase 5 (a deadline, never seconds left).
        background_by = (stop.monotonic_deadline or time.monotonic()) - reserve
        if self.hooks.metrics is not None:
            self.hooks.metrics.drains += 1
        began = time.perf_counter()
        # Phase 3: stop accepting. Our copies of the listeners close; a master
        # keeps its own, so queued connections wait for the next generation.
        self.phase = "draining"
        self.accepting = False
        self.hooks.drain.set()
        for server in self._servers:
            server.close()
        if reserve > 0:
            try:
                async with asyncio.timeout_at(drain_by):
                    await self._drain_connections(stop)
            except TimeoutError:
                await self._cut(min(1.0, reserve / 4))
        else:
            # No app shutdown to make room for: the group cancels us at the deadline.
            await self._drain_connections(stop)
        began = self._phase_done("connections", began)
        # Phase 5: background work started by requests and by tether.spawn.
        self.phase = "draining background work"
        if self.hooks.background is not None:
            # Shielded: if the group cancels us at the deadline, phase 5 still
            # finishes its own cancel-and-report, and we collect that report.
            self._background = asyncio.ensure_future(self.hooks.background(background_by))
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
        if self.hooks.phase_done is not None:
            self.hooks.phase_done(phase, now - began)
        return now

    def _has_lifespan(self) -> bool:
        """True if the app took part in the lifespan protocol, so it has a shutdown to run."""
        lifespan = self._lifespan
        return lifespan is not None and not lifespan.error_occurred

    async def _drain_connections(self, stop: StopToken) -> None:
        """Phase 4: in-flight requests finish, keep-alive connections close, idle ones too."""
        state = self.state
        if self._idle_close is not None:  # the drain gives idle connections their grace
            self._idle_close.cancel()
            self._idle_close = None
        self._close_after_response()
        if state.connections:
            logger.info("draining %d connection(s)", len(state.connections))
            # Idle connections may still carry one more request; give them the grace,
            # within the stop's deadline.
            now = asyncio.get_running_loop().time()
            grace_end = min(now + self.options.idle_grace, stop.deadline or now)
            try:
                async with asyncio.timeout_at(grace_end):
                    await state.watched_connections.empty.wait()
            except TimeoutError:
                pass
            for conn in list(state.connections):
                conn.shutdown()  # idle: closed now; busy: after its last received request
            await state.watched_connections.empty.wait()
        while state.tasks:  # handlers still running after their connection closed
            await asyncio.wait(list(state.tasks))
        for server in self._servers:
            await server.wait_closed()

    async def _cut(self, unwind: float) -> None:
        """The drain's deadline: name the requests still running, then end them.

        Each one's connection is closed first (the client sees the response end
        there, as it would if the process stopped), then its task is cancelled;
        they get ``unwind`` seconds to finish before the app's shutdown goes ahead.
        """
        tasks = [task for task in self.state.tasks if not task.done()]
        for task in tasks:
            self.hooks.abandoned.append(
                AbandonedWork(
                    "request",
                    request_name(task),
                    stack=task_stack(task),
                    detail="still running at the drain deadline; cancelled so that "
                    "the app's shutdown could run",
                )
            )
        logger.warning(
            "drain deadline: cutting %d request(s) still running, so that the app's shutdown "
            "can run",
            len(tasks),
        )
        self._middleware.cut = True
        if self.hooks.metrics is not None:
            self.hooks.metrics.requests_cut += len(tasks)
        for conn in list(self.state.connections):
            cycle = getattr(conn, "cycle", None)
            if cycle is not None:
                # What the server would learn from the closed transport a loop turn
                # later; known now, an ended handler is not taken for an app error.
                cycle.disconnected = True
            conn.transport.close()
        for task in tasks:
            task.cancel("tether: the drain deadline passed")
        if tasks:
            await asyncio.wait(tasks, timeout=unwind)

    def _report_abandoned(self) -> None:
        """Called when the group cancels us at the deadline: name what was cut short."""
        for task in list(self.state.tasks):
            if not task.done():
                if self.hooks.metrics is not None and not self._middleware.cut:
                    self.hooks.metrics.requests_cut += 1  # not counted yet by _cut
                self.hooks.abandoned.append(
                    AbandonedWork(
                        "request",
                        request_name(task),
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
        if self._idle_close is not None:
            self._idle_close.cancel()
        if self._head_sweep is not None:
            self._head_sweep.stop()
        for server in self._servers:
            server.close()
        for conn in list(self.state.connections):
            conn.transport.close()
        self.state.watched_connections.close()
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
        """Each request whose handler runs: method, path, seconds since it reached the app.

        A request whose response has been sent in full while its app call goes on
        (Starlette's ``BackgroundTasks`` run there) is not listed: it is
        background work (:meth:`after_response`).
        """
        return [request for _, request in self._tasks(responded=False)]

    def after_response(self) -> list[dict[str, Any]]:
        """Requests whose response is sent while their app call still runs, as background work.

        Each: ``name`` (what runs, e.g. the background function), ``started_by``
        (the request), ``adopted`` False, ``age`` (seconds since the request).
        """
        return [
            {
                "name": task_label(task)[0],
                "started_by": f"{request['method']} {request['path']} (after its response)",
                "adopted": False,
                "age": request["age"],
            }
            for task, request in self._tasks(responded=True)
        ]

    def _tasks(self, *, responded: bool) -> list[tuple[asyncio.Task[Any], dict[str, Any]]]:
        now = time.perf_counter()
        out = []
        for task in list(self.state.tasks):
            owner = task_owner(task)
            scope = getattr(owner, "scope", None)
            if not isinstance(scope, dict) or "path" not in scope:
                continue
            if bool(getattr(owner, "response_complete", False)) != responded:
                continue
            started = scope.get("tether.started")
            request = {
                "method": scope.get("method", "WEBSOCKET"),
                "path": scope.get("path", ""),
                "age": None if started is None else round(now - started, 3),
            }
            out.append((task, request))
        return sorted(out, key=lambda tr: -(tr[1]["age"] or 0.0))


def _trace_only_when_asked() -> None:
    """Give uvicorn's server logger the level it logs at, as uvicorn's ``--log-level`` does.

    uvicorn's protocols decide whether to write their trace lines ("connection
    made", "connection lost") from that logger's own level, not its effective
    one; left unset (0, below trace) every connection formats and logs two
    records that are then dropped. Left alone when a level was set on it, or
    when trace is on.
    """
    log = logging.getLogger("uvicorn.error")
    if log.level == logging.NOTSET and not log.isEnabledFor(_TRACE):
        log.setLevel(log.getEffectiveLevel())


def _config_kwargs(http: HttpOptions) -> dict[str, Any]:
    """Keyword arguments for uvicorn's ``Config``; tether sends its own server header."""
    kwargs = {f.name: getattr(http, f.name) for f in dataclasses.fields(http)}
    headers = list(kwargs.pop("headers"))
    if kwargs.pop("server_header") and not any(n.lower() == "server" for n, _ in headers):
        headers.insert(0, ("server", "tether"))
    kwargs["headers"] = headers
    kwargs["server_header"] = False
    kwargs["ws"] = LazyProtocol.of(kwargs["ws"], _ws_protocol)
    return kwargs


def _ws_protocol(name: str) -> Any:
    """uvicorn's websocket protocol class for ``--ws NAME`` (at the first upgrade)."""
    from uvicorn.config import WS_PROTOCOLS
    from uvicorn.importer import import_from_string

    return import_from_string(WS_PROTOCOLS[name])
