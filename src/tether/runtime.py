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

Each concern of the process lives in its own module, and Service composes them:
the stop and its plan (tether._stopping), what it says to its supervisor
(tether._supervision), its own limits (tether._recycler), the reload by
handoff (tether._handoff), the app's import (tether._hosting), the debug
member (tether._debugmember), the end report (tether._endreport) and what it
shows about itself (tether._views).
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import functools
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tether import _startgc, leaks, signals
from tether import sockets as sockets_mod
from tether._appmetrics import check_user_dir, forget_process
from tether._debugmember import debug_member, log_task_dump, wait_quietly
from tether._endreport import holding, raise_problems, report_leftovers
from tether._engines import http_engine
from tether._handoff import Reloads
from tether._hosting import as_asgi, import_app, server_hooks
from tether._listeners import Listeners, open_listeners
from tether._loopwatch import LoopWatch
from tether._pidfile import PidFile
from tether._recycler import Recycler
from tether._stopping import ProcessStop
from tether._supervision import Supervision
from tether.app import App
from tether.config import RunConfig, ShutdownBudget, ShutdownPlan
from tether.engine import DrainHooks, Engine, EngineFactory, ServeOptions
from tether.errors import AbandonedWork
from tether.group import Group
from tether.metrics import ProcessMetrics, write_final
from tether.tracker import REQUESTS, Tracker, install_adoption, set_current_tracker
from tether.worker import (
    WorkerContract,
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
        #: What this process's master told it (None: not a master's worker). Read once,
        #: here: ``run`` removes the private part from the environment before the app.
        self.contract = WorkerContract.from_env(os.environ)
        #: What this process says to whoever waits on it (tether._supervision).
        self.link: Supervision = Supervision(self.contract)
        #: Reloads by handoff (HUP); ``argv`` None: not supported.
        self.reloads = Reloads(
            argv,
            ready_within=config.reload_timeout,
            extra_env=config.successor_env(),
            stopping=lambda: self.shutdown.requested,
            notify=self.link.send,
            took_over=lambda pid: self.request_stop(
                f"reloaded: pid {pid} now serves", drain_delay=False
            ),
            retry=self._reload,
        )
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
        #: TERM/INT received so far; the second one forces (a reload's drain is not a signal).
        self._stop_signals = 0
        #: This process's stop: its plan, the drain delay, the last-resort timer.
        self.shutdown: ProcessStop = ProcessStop(
            config,
            self.group,
            hard_stop=hard_stop,
            stop_plan_path=self.contract.stop_plan if self.contract is not None else None,
            on_begin=self._began_stopping,
            on_force=self.reloads.cancel_starting,
            on_drain_delay=lambda: setattr(self, "status", "draining (drain delay)"),
        )
        #: OpenTelemetry, when the environment asks for it (tether._otel); made in ``run``.
        self.telemetry: Telemetry | None = None
        #: --limit-max-requests, --max-requests, --max-worker-memory (tether._recycler).
        self.recycler = Recycler(
            config,
            is_worker=self._is_worker,
            http=lambda: self.http,
            notify=self.link.send,
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
        self.link.stopping(reason)

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
        """Every task's stack to the log (faulthandler has written the threads' already)."""
        log_task_dump(signal.Signals(signum).name)

    # -- running ------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until stopped; raise an ExceptionGroup if anything failed or was abandoned."""
        if self.config.app_metrics:
            check_user_dir(os.environ)  # a bad PROMETHEUS_MULTIPROC_DIR fails before binding
        hooks = self._server_hooks = server_hooks(self.config)
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
        self.link.watch_parent(self._orphaned(asyncio.get_running_loop()))
        # Before the app is imported: app code that notifies at import must not reach
        # whoever waits for this process's READY (a master, systemd).
        self.link.take(os.environ)
        self.reloads.supervisor_notify = self.link.supervisor
        final = self.contract.final_metrics if self.contract is not None else None
        try:
            # Before the app is imported, so that its own instrumentation finds the providers.
            self._start_telemetry()
            app, kind = import_app(self.config, hooks)
        except BaseException as exc:
            self.link.failed(exc)
            listeners.close()
            self.link.close()
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
                    self.link.failed(exc)
                    raise
                finally:
                    for signum in dumps:
                        faulthandler.unregister(signum)
        finally:
            listeners.close()
            if self.telemetry is not None:
                self.telemetry.shutdown(self.shutdown.last_window())
            self.shutdown.disarm()
            if hooks is not None:
                hooks.call("worker_exit", hooks.server, hooks.this_worker())
            self.link.close()
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

    async def _drain_background(self, deadline: float) -> list[AbandonedWork]:
        """Phase 5: wait for tracked and adopted work by ``deadline``; cancel, report the rest."""
        cancel = ShutdownBudget.of(self.config).tracker_report
        report = await self.tracker.shutdown(deadline=deadline, cancel_timeout=cancel)
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
                # No HTTP server ran phase 5: drain background work here, by the plan's deadline.
                self.hooks.abandoned.extend(await self._drain_background(plan.deadline))
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
        # --gc-freeze: what startup made lives as long as the process, so a busy worker's
        # collections need scan only what requests make (what preloading gives gunicorn's
        # users). The young generations are collected first: startup's garbage is freed,
        # not frozen. A start the `tether` command held (tether._startgc) waits a second.
        catching_up = _startgc.catch_up(asyncio.get_running_loop(), freeze=self.config.gc_freeze)
        if catching_up is not None:
            cleanups.append(catching_up.cancel)
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
        heartbeat = self.link.ready(self.config.app, self._heartbeat)
        if heartbeat is not None:
            cleanups.append(heartbeat)

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

    def _heartbeat(self, late: float = 0.0) -> None:
        self.metrics.loop_lag(late)
        self.link.send("WATCHDOG=1")
        self.recycler.check_memory()  # growth without connections (background work) counts too

    def _orphaned(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """What the parent watch calls (from its thread) when the master is gone: a short stop."""

        def gone() -> None:
            orphaned = ShutdownPlan.until(self.config, time.monotonic() + PARENT_DEATH_BUDGET)
            self.shutdown.arm_hard_stop(orphaned.hard_stop)
            stop = functools.partial(self.request_stop, "the master process exited", plan=orphaned)
            with contextlib.suppress(RuntimeError):  # the loop has closed: we are exiting anyway
                loop.call_soon_threadsafe(stop)

        return gone

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
