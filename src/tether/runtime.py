"""One process: the app, its other members and the debug server in one Group.

This is the note's version 5 — an app server and a debug server that live and
die together — plus the shutdown phases of DESIGN.md. Every worker a master
starts runs exactly this, with its sockets passed through ``LISTEN_FDS``.

Order of work, and why:

1. parse every address and check the options, so a bad flag fails before
   anything is bound;
2. bind (or inherit) every socket, so a port in use fails before the app is
   imported (and nothing stays bound if anything later fails);
3. import the app;
4. start the debug server, then the HTTP server (``READY`` only after
   lifespan startup and listening), then the app's other members;
5. serve until a signal, a member's exit, or the parent's death; then drain
   in phases within one budget, and report whatever was abandoned.

Why this module is long: Service is the process's one lifecycle object: the startup
order, the stop plan, signals, the guards of a reload, recycling and the final report
all read and write the same state (ready, status, the plan, the hard-stop timer). What
it shows about itself lives in tether._views and the reload by handoff in
tether._handoff; the recycling path (``_recycle``, ``_resume_accepting``,
``_check_memory``) and the startup sequence of ``run`` are the next to move out.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import functools
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tether import leaks, signals
from tether import sockets as sockets_mod
from tether._appmetrics import check_user_dir, forget_process
from tether._debugmember import debug_member, wait_quietly
from tether._endreport import holding, raise_problems, report_leftovers
from tether._engines import http_engine
from tether._handoff import Reloads
from tether._listeners import Listeners, open_listeners
from tether._loopwatch import LoopWatch
from tether._pidfile import PidFile
from tether._recycler import Recycler
from tether._stopping import ProcessStop
from tether.app import App, load_app
from tether.config import RunConfig, ShutdownBudget, ShutdownPlan
from tether.engine import ASGIApp, DrainHooks, Engine, EngineFactory, ServeOptions
from tether.errors import AbandonedWork, ShutdownAbandoned
from tether.group import Group
from tether.metrics import ProcessMetrics, write_final
from tether.notify import Notifier, watchdog_interval
from tether.serving import host_asgi2, host_wsgi
from tether.tracker import REQUESTS, Tracker, install_adoption, set_current_tracker
from tether.worker import (
    WorkerContract,
    failed_report,
    take_handoff,
    withdraw,
)

# The debug server (tether.debug, tether.console), --reload's watcher and prometheus_client
# are imported where they are used: a process that runs without them never loads them.
if TYPE_CHECKING:
    from tether._hooks import ServerHooks
    from tether._otel import Telemetry
    from tether._views import ProcessView

__all__ = ["Service"]

logger = logging.getLogger("tether.runtime")

#: Budget for the whole shutdown when the parent (a master) has died.
PARENT_DEATH_BUDGET = 1.0


def as_asgi(
    app: App, kind: str | None, threads: int = 10, interface: str = "auto"
) -> ASGIApp | None:
    """The app's HTTP part as ASGI (WSGI apps run in a pool of ``threads`` threads)."""
    if app.http is None:
        return None
    if kind == "wsgi":
        return host_wsgi(app.http, threads)
    if interface == "asgi2":
        return host_asgi2(app.http)
    asgi: ASGIApp = app.http
    return asgi


class Service:
    """Runs one process's members under tether's lifecycle.

    ``hard_stop`` is the last resort the CLI provides: it is armed when a stop
    begins (a stop signal, the parent's death, a member's exit, the drain after
    a reload) and called if the process is still alive well past the deadline
    (an event loop blocked in C code cannot be cancelled). Nothing else arms
    it: USR1, HUP and USR2 leave a serving process serving.
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        listeners: Listeners | None = None,
        hard_stop: Callable[[], None] | None = None,
        argv: Sequence[str] | None = None,
        engine: EngineFactory | None = None,
    ) -> None:
        self.config = config
        #: What serves the app and the debug listener (tether.engine; None: uvicorn's).
        self._engine = engine if engine is not None else http_engine()
        #: Reloads by handoff (HUP); ``argv`` None: not supported.
        self.reloads = Reloads(
            argv,
            ready_within=config.reload_timeout,
            extra_env=config.successor_env(),
            stopping=lambda: self.shutdown.requested,
            notify=self._notify,
            took_over=lambda pid: self.request_stop(
                f"reloaded: pid {pid} now serves", drain_delay=False
            ),
            retry=self._reload,
        )
        self._handoff_notify: str | None = None
        #: What this process's master told it (None: not a master's worker). Read once,
        #: here: ``run`` removes the private part from the environment before the app.
        self.contract = WorkerContract.from_env(os.environ)
        self._is_worker = self.contract is not None
        self._generation = self.contract.generation if self.contract is not None else 0
        #: This process's sockets: given, or opened by ``run``.
        self._open: Listeners | None = listeners
        self.group = Group(
            "service",
            graceful_timeout=config.graceful_timeout,
            cancel_timeout=config.cancel_timeout,
        )
        #: Background work of this process: ``tether.spawn`` and tasks requests start.
        self.tracker = Tracker(name="background")
        #: Requests, loop lag and drains of this process (``TETHER_REQUEST_METRICS=off``: none).
        self.metrics = ProcessMetrics(worker=str(self.contract.worker_id if self.contract else 0))
        recording = os.environ.get("TETHER_REQUEST_METRICS", "on") != "off"
        threshold = config.blocked_loop_threshold
        #: Logs a serving loop blocked past --blocked-loop-threshold (None: 0, off).
        self.loop_watch = LoopWatch(threshold) if threshold > 0 else None
        self.hooks = DrainHooks(
            background=self._drain_background,
            requests=REQUESTS,
            metrics=self.metrics if recording else None,
            traffic=self.loop_watch.traffic if self.loop_watch is not None else None,
        )
        self._started = time.monotonic()
        self.http: Engine | None = None
        self.ready = False
        self.status = "starting"
        self.notifier: Notifier | None = None
        #: TERM/INT received so far; the second one forces (a reload's drain is not a signal).
        self._stop_signals = 0
        #: This process's stop: its plan, the drain delay, the last-resort timer.
        self.shutdown = ProcessStop(
            config,
            self.group,
            hard_stop=hard_stop,
            stop_plan_path=self.contract.stop_plan if self.contract is not None else None,
            on_begin=self._began_stopping,
            on_force=self.reloads.cancel_starting,
            on_drain_delay=self._drain_delay_begins,
        )
        #: OpenTelemetry, when the environment asks for it (tether._otel); made in ``run``.
        self.telemetry: Telemetry | None = None
        #: --limit-max-requests, --max-requests, --max-worker-memory (tether._recycler).
        self.recycler = Recycler(
            config,
            is_worker=self._is_worker,
            http=lambda: self.http,
            notify=self._notify,
            stop=self.request_stop,
            reload=self._reload,
            stopping=lambda: self.shutdown.requested,
        )
        #: A gunicorn config's server hooks (-c gunicorn.conf.py), loaded by ``run``.
        self._server_hooks: ServerHooks | None = None

    # -- stop requests ------------------------------------------------------------

    def request_stop(
        self,
        reason: str,
        *,
        force: bool = False,
        plan: ShutdownPlan | None = None,
        drain_delay: bool = True,
    ) -> None:
        """Begin a graceful stop (drain delay, then the group); ``force`` cancels at once.

        ``plan``: the deadlines of a stop decided elsewhere (tether._stopping).
        """
        self.shutdown.request(reason, force=force, plan=plan, drain_delay=drain_delay)

    def _began_stopping(self, reason: str) -> None:
        """A stop began (once): not ready, and whoever supervises this process hears it."""
        self.ready = False
        self.status = f"stopping: {reason}"
        if self.telemetry is not None:
            self.telemetry.drain_begins(reason)
        if self.notifier is not None:
            self.notifier.send("STOPPING=1", f"STATUS=stopping: {reason}")

    def _drain_delay_begins(self) -> None:
        self.status = "draining (drain delay)"

    # -- signals (tether.signals.SIGNALS says which signal asks for which) -------------

    def _worker_int(self) -> None:
        """gunicorn's ``worker_int`` hook: this process was interrupted (INT or QUIT)."""
        if self._server_hooks is not None:
            self._server_hooks.call("worker_int", self._server_hooks.this_worker())

    def handle_stop(self, signum: int) -> None:
        """Stop gracefully; the second one cancels what is left."""
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:  # the hook is gunicorn's, defined by its signals
            self._worker_int()
        self._stop_signals += 1
        if self._stop_signals > 1:
            self.request_stop(f"second {name} received", force=True)
        elif self.shutdown.requested:
            logger.info(
                "%s received: already stopping (%s); a second one cancels what is left",
                name,
                self.status,
            )
        else:
            self.request_stop(f"{name} received")

    def handle_fast_stop(self, signum: int) -> None:
        """Stop at once: cancel what is left."""
        self._worker_int()
        self.request_stop(f"{signal.Signals(signum).name} received (fast stop)", force=True)

    def handle_reload(self, signum: int) -> None:
        """Hand the sockets to a fresh copy of this process (a worker's master does it)."""
        self._reload(f"{signal.Signals(signum).name} received")

    def handle_resume(self, _signum: int) -> None:
        """The master could start no successor for this recycling worker: serve on."""
        self.recycler.resume()

    def handle_dump(self, signum: int) -> None:
        """Every task's stack to the log."""
        # Thread stacks were written by faulthandler already, even if the loop was stuck.
        from tether.debug import format_task_dump, task_dump

        name = signal.Signals(signum).name
        logger.warning("task dump (%s):\n%s", name, format_task_dump(task_dump()))

    # -- running ------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until stopped; raise an ExceptionGroup if anything failed or was abandoned."""
        if self.config.app_metrics:
            check_user_dir(os.environ)  # a bad PROMETHEUS_MULTIPROC_DIR fails before binding
        hooks = self._server_hooks = _server_hooks(self.config)
        in_master = self._is_worker  # a master's worker: the master runs its hooks
        if hooks is not None:
            hooks.contract = self.contract  # the hooks' worker: its id, generation, master
            if not in_master:
                hooks.call("on_starting", hooks.server, fatal=True)
        listeners = self._open = self._open or open_listeners(self.config)
        if hooks is not None:
            hooks.set_bind([str(sockets_mod.bound_address(s)) for s in listeners.app])
            if not in_master:
                try:
                    hooks.call("when_ready", hooks.server, fatal=True)
                except BaseException:
                    listeners.close()
                    raise
        self._watch_parent(asyncio.get_running_loop())
        # Before the app is imported: app code that notifies at import must not reach
        # whoever waits for this process's READY (a master, systemd).
        contract = self.contract
        supervisor = os.environ.pop("NOTIFY_SOCKET", None) or None
        withdraw(os.environ)
        address = contract.notify_address if contract is not None else supervisor
        self.reloads.supervisor_notify = None if contract is not None else supervisor
        self._handoff_notify = take_handoff(os.environ)
        final = contract.final_metrics if contract is not None else None
        self.notifier = Notifier.from_env({"NOTIFY_SOCKET": address or ""})
        try:
            # Before the app is imported, so that its own instrumentation finds the providers.
            self._start_telemetry()
            if hooks is not None:
                hooks.call("post_fork", hooks.server, hooks.this_worker(), fatal=True)
            interface = self.config.interface
            app, kind = load_app(
                self.config.app,
                app_dir=self.config.app_dir,
                interface="asgi" if interface in ("asgi2", "asgi3") else interface,  # type: ignore[arg-type]
                factory=self.config.factory,
            )
            if hooks is not None:
                hooks.this_worker().wsgi = app.http
                hooks.call("post_worker_init", hooks.this_worker(), fatal=True)
        except BaseException as exc:
            self._failed(exc)
            listeners.close()
            if self.notifier is not None:
                self.notifier.close()
            raise
        # What exists now is ours, or the app's for the life of the process (what its
        # import made: a logging thread, a pool); what it starts from here on and leaves
        # behind is reported at the end.
        since = leaks.snapshot()
        loop = asyncio.get_running_loop()
        mode: signals.Mode = "worker" if self._is_worker else "single"
        dumps = signals.signums(mode, "dump")
        try:
            with signals.install(
                loop,
                self,
                mode,
                immediate=self.shutdown.on_signal_now,
                owner=self.hooks.drain,  # where libraries written for uvicorn look
            ):
                # A dump also writes every thread's stack from C, which works while the loop
                # is stuck.
                for signum in dumps:
                    faulthandler.register(signum, all_threads=True, chain=True)
                try:
                    await self._run(app, kind, listeners)
                except BaseException as exc:
                    self._failed(exc)
                    raise
                finally:
                    for signum in dumps:
                        faulthandler.unregister(signum)
        finally:
            listeners.close()
            if self.telemetry is not None:
                self.telemetry.shutdown(self._flush_budget())
            self.shutdown.disarm()
            if hooks is not None:
                hooks.call("worker_exit", hooks.server, hooks.this_worker())
            if self.notifier is not None:
                self.notifier.close()
            if final:  # the master keeps these counts once this process is gone
                write_final(final, self.view.families)
            elif self.config.app_metrics and not self._is_worker:
                forget_process()  # (a worker's master does it, even after a kill -9)
            # The service has stopped: a TERM now (a master stopping while this worker
            # leaves on its own) must not kill the process in the middle of its report.
            with holding(signals.STOPPING):
                await report_leftovers(since, successor=self.reloads.successor)
            if hooks is not None and not self._is_worker:
                hooks.call("on_exit", hooks.server)

    def _start_telemetry(self) -> None:
        """OpenTelemetry's providers, if any ``OTEL_*`` variable asks for them (tether._otel)."""
        if not any(name.startswith("OTEL_") for name in os.environ):
            return  # the common case: tether._otel and the SDK are never imported
        from tether._otel import Telemetry

        self.telemetry = telemetry = Telemetry.start(
            {
                "tether.worker.id": self.metrics.worker,
                "tether.generation": self._generation,
                "process.pid": os.getpid(),
            }
        )
        if telemetry is None:
            return
        self.hooks.wrap = telemetry.server_spans
        self.hooks.phase_done = telemetry.phase_done
        self.tracker.observer = telemetry.task_spans()
        telemetry.observe(self.view.families)

    def _flush_budget(self) -> float:
        """Seconds the telemetry's last export may take: to the plan's cancel end, or a grace."""
        cancel = ShutdownBudget.of(self.config).group_abandon
        if not self.group.stopping:
            return cancel
        plan = self.shutdown.under_way()
        return max(cancel, plan.left(plan.cancel_end))

    def _failed(self, exc: BaseException) -> None:
        """Tell whoever supervises this process why it ends (one line, over notify).

        A master reports it for a worker whose output its user may not see.
        Work abandoned at the deadline is a stop's outcome, not a failure.
        """
        if self.notifier is None or isinstance(exc, KeyboardInterrupt | asyncio.CancelledError):
            return
        if isinstance(exc, BaseExceptionGroup) and exc.subgroup(ShutdownAbandoned) is not None:
            rest = exc.split(ShutdownAbandoned)[1]
            if rest is None:
                return
            exc = rest
        self.notifier.send(*failed_report(exc))

    async def _drain_background(self, budget: float) -> list[AbandonedWork]:
        """Phase 5: wait for tracked and adopted work, then cancel and report the rest."""
        report = await self.tracker.shutdown(
            budget, cancel_timeout=ShutdownBudget.of(self.config).tracker_report
        )
        return report.abandoned_work()

    async def _run(self, app: App, kind: str | None, listeners: Listeners) -> None:
        group = self.group
        loop = asyncio.get_running_loop()
        previous = set_current_tracker(self.tracker)
        adoption = install_adoption(self.tracker, loop)
        cleanups: list[Callable[[], object]] = [
            adoption.uninstall,
            lambda: set_current_tracker(previous),
        ]
        try:
            if listeners.debug is not None:
                source = self.view.debug_source()
                debug = debug_member(self._engine, source, listeners.debug, self.config, group)
                await group.start(debug, name="debug")
            asgi = as_asgi(app, kind, self.config.threads, self.config.interface)
            if asgi is not None and self._server_hooks is not None:
                asgi = self._server_hooks.wrap(asgi)
            if asgi is not None:
                self.http = self._engine(asgi, listeners.app, self._serve_options(kind), self.hooks)
                await group.start(self.http.run, name="http")
            for name, member in app.members.items():
                group.add(member, name=name)
            if self.config.reload and not self._is_worker:
                dirs, includes, excludes = self.config.reload_watch()
                from tether._reloader import watcher

                changed = lambda paths: self._reload(f"{', '.join(paths[:3])} changed")  # noqa: E731
                group.add(watcher(dirs, includes, excludes, changed), name="reload-watch")
            # A member's exit stops the group without a signal: that is a stop too.
            armer = loop.create_task(
                self.shutdown.begin_with_the_group(), name="tether-hard-stop-armer"
            )
            cleanups.append(armer.cancel)
            if not group.stopping:
                self._became_ready(cleanups)
        except BaseException as exc:
            group.stop(f"startup failed: {type(exc).__name__}", force=True)
            await wait_quietly(group)  # the first error is the story
            for cleanup in cleanups:
                cleanup()
            raise
        try:
            await group.wait()
            problems: list[Exception] = []
        except ExceptionGroup as exc:
            problems = list(exc.exceptions)
        plan = self.shutdown.under_way()
        await self.reloads.settle(plan.deadline)
        try:
            if self.http is None:
                # No HTTP server ran phase 5: drain background work here, in what is left.
                self.hooks.abandoned.extend(await self._drain_background(plan.left(plan.deadline)))
        finally:
            for cleanup in cleanups:
                cleanup()
        told = self.telemetry.abandoned if self.telemetry is not None else None
        raise_problems(problems, self.hooks.abandoned, told=told)

    def _serve_options(self, kind: str | None) -> ServeOptions:
        config = self.config
        limit = self.recycler.wire(self.hooks)
        return ServeOptions(
            idle_grace=config.idle_grace,
            head_timeout=config.timeout_request_head,
            lifespan="off" if kind == "wsgi" else config.lifespan,
            access_log=config.access_log,
            access_logformat=config.access_logformat,
            limit_max_requests=limit,
            http=config.http,
            report_grace=ShutdownBudget.of(config).http_report_grace,
        )

    def _became_ready(self, cleanups: list[Callable[[], object]]) -> None:
        loop = asyncio.get_running_loop()
        if self.config.gc_freeze:
            # What the import and startup made lives as long as the process: move it out
            # of the collector's sight, so that a busy worker's collections scan only
            # what requests make (what preloading before fork gives gunicorn's users).
            # The young generations are collected first, so the garbage startup just left
            # is freed rather than frozen; a full collection would cost tens of ms before
            # the first request, and finds nothing in an imported app's older objects.
            gc.collect(1)
            gc.freeze()
        self.ready = True
        self.status = "serving"
        if self.loop_watch is not None:
            # Watched from now on, not while importing: a slow import is not a stall.
            self.loop_watch.enable()
            cleanups.append(self.loop_watch.close)
        where = ", ".join(
            str(sockets_mod.bound_address(s)) for s in (self.http.sockets if self.http else [])
        )
        logger.info(
            "serving %s on %s (pid %d)", self.config.app, where or "no sockets", os.getpid()
        )
        if self.config.pidfile:
            PidFile(self.config.pidfile).serving()  # after a reload: name the successor now
        if self.notifier is not None:
            self.notifier.send(
                "READY=1", f"STATUS=serving {self.config.app}", f"MAINPID={os.getpid()}"
            )
            interval = watchdog_interval()
            if interval is not None:
                cleanups.append(_every(loop, interval, self._heartbeat))
        if self._handoff_notify is not None:
            # After MAINPID: a supervisor must know us before the predecessor exits.
            # The process that started us with its sockets drains once it hears this.
            with Notifier(self._handoff_notify) as predecessor:
                predecessor.send("READY=1")

    def _reload(self, why: str) -> None:
        """HUP/USR2, --max-requests, --reload in one process: hand the sockets to a fresh copy."""
        if self._is_worker:
            logger.info("%s; ignored: reloads of a worker are its master's job", why)
            return
        if self.reloads.argv is None or self._open is None:
            logger.warning("%s; ignored: this service was not started by `tether run`", why)
            return
        if self.shutdown.requested or not self.ready:
            logger.info("%s; ignored: not serving (%s)", why, self.status)
            return
        if self.reloads.busy():
            logger.info("%s: a reload is in progress; one more will follow it", why)
            self.reloads.follow_up()
            return
        if self._server_hooks is not None:
            self._server_hooks.call("on_reload", self._server_hooks.server)
        self.reloads.start(why, self._open.named())

    def _notify(self, *fields: str) -> None:
        if self.notifier is not None:
            self.notifier.send(*fields)

    def _heartbeat(self, late: float = 0.0) -> None:
        self.metrics.loop_lag(late)
        if self.notifier is not None:
            self.notifier.send("WATCHDOG=1")
        self.recycler.check_memory()  # growth without connections (background work) counts too

    def _watch_parent(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop when the pipe from the parent (a master) reaches end-of-file: it is gone.

        A thread, not a loop reader, so that it works from the first moment:
        while the app is still being imported or starting up, the loop is busy.
        """
        if self.contract is None:
            return
        fd = self.contract.parent_fd

        def watch() -> None:
            with contextlib.suppress(OSError):
                while os.read(fd, 512):
                    pass
            orphaned = ShutdownPlan.until(self.config, time.monotonic() + PARENT_DEATH_BUDGET)
            self.shutdown.arm_hard_stop(orphaned.hard_stop)
            stop = functools.partial(self.request_stop, "the master process exited", plan=orphaned)
            with contextlib.suppress(RuntimeError):  # the loop has closed: we are exiting anyway
                loop.call_soon_threadsafe(stop)

        threading.Thread(target=watch, name="tether-parent-watch", daemon=True).start()

    @functools.cached_property
    def view(self) -> ProcessView:
        """This process seen from outside (tether._views), made when first asked for."""
        from tether._views import ProcessView

        return ProcessView(
            self.config,
            metrics=self.metrics,
            tracker=self.tracker,
            group=self.group,
            ready=lambda: self.ready,
            status=lambda: self.status,
            http=lambda: self.http,
            is_worker=self._is_worker,
            generation=self._generation,
            started=self._started,
        )


def _server_hooks(config: RunConfig) -> ServerHooks | None:
    """The hooks of ``-c gunicorn.conf.py``; tether._hooks is imported only with such a file."""
    if config.python_config is None:
        return None
    from tether._hooks import ServerHooks

    return ServerHooks.of(config)


def _every(
    loop: asyncio.AbstractEventLoop, interval: float, fn: Callable[[float], None]
) -> Callable[[], None]:
    """Call ``fn(seconds late)`` every ``interval`` seconds (a protocol heartbeat, not a poll)."""
    handle: list[asyncio.TimerHandle] = []
    due = [loop.time()]

    def tick() -> None:
        fn(loop.time() - due[0])
        due[0] = loop.time() + interval
        handle[:] = [loop.call_later(interval, tick)]

    handle.append(loop.call_later(0, tick))
    return lambda: handle[0].cancel()
