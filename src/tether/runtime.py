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
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from tether import leaks, signals
from tether import sockets as sockets_mod
from tether._appmetrics import check_user_dir, forget_process
from tether._engines import http_engine
from tether._handoff import Reloads
from tether._listeners import Listeners, open_listeners
from tether._loopwatch import LoopWatch
from tether._pidfile import PidFile
from tether.app import App, load_app
from tether.config import RunConfig, ShutdownBudget, ShutdownPlan
from tether.engine import ASGIApp, DrainHooks, Engine, EngineFactory, ServeOptions
from tether.errors import AbandonedWork, ShutdownAbandoned
from tether.group import Group, StopToken
from tether.metrics import ProcessMetrics, process_rss, write_final
from tether.notify import Notifier, watchdog_interval
from tether.serving import host_asgi2, host_wsgi
from tether.tracker import REQUESTS, Tracker, install_adoption, set_current_tracker
from tether.worker import (
    WorkerContract,
    failed_report,
    read_stop_plan,
    recycle_report,
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
#: How long what the app left behind may take to end on its own before it is logged.
LEAK_CHECK_TIMEOUT = 0.2
#: Pooled threads that hosting keeps for the event loop's life and ends with it: the
#: executor a2wsgi and ``run_in_executor`` use, and anyio's (FastAPI's sync endpoints).
_HOSTING_THREADS = (
    "concurrent.futures.thread._worker",
    "anyio._backends._asyncio.WorkerThread.run",
)
#: Bytes in a MiB (--max-worker-memory).
MIB = 1024 * 1024


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
            stopping=lambda: self._stop_requested,
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
        self._hard_stop = hard_stop
        self._hard_timer: threading.Timer | None = None
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
        self._stop_requested = False
        #: TERM/INT received so far; the second one forces (a reload's drain is not a signal).
        self._stop_signals = 0
        self._drain_timer: asyncio.TimerHandle | None = None
        #: This stop's deadlines, made once when it begins (see ``_plan_stop``).
        self._plan: ShutdownPlan | None = None
        #: Where a master leaves its final stop's deadline for this worker (tether.worker).
        self._stop_plan_path = self.contract.stop_plan if self.contract is not None else None
        #: OpenTelemetry, when the environment asks for it (tether._otel); made in ``run``.
        self.telemetry: Telemetry | None = None
        #: --max-requests or --max-worker-memory was reached (a successor is asked for once).
        self._recycle_asked = False
        self._resuming: asyncio.Task[None] | None = None
        #: A gunicorn config's server hooks (-c gunicorn.conf.py), loaded by ``run``.
        self._server_hooks: ServerHooks | None = None

    # -- stop requests ------------------------------------------------------------

    def request_stop(
        self,
        reason: str,
        *,
        force: bool = False,
        budget: float | None = None,
        drain_delay: bool = True,
    ) -> None:
        """Begin a graceful stop (drain delay, then the group); ``force`` cancels at once."""
        loop = asyncio.get_running_loop()
        if force:
            logger.warning("%s: cancelling everything now", reason)
            if self._drain_timer is not None:
                self._drain_timer.cancel()  # the drain delay is over too
            self.reloads.cancel_starting()
            self._begin(reason)
            self.group.stop(reason, force=True)
            return
        if self._stop_requested:
            return
        if budget is not None:  # the master is gone: a short stop of our own, from now
            self._plan = ShutdownPlan.until(self.config, time.monotonic() + budget)
        plan = self._plan_stop(drain_delay=drain_delay)
        self._begin(reason)
        delay = plan.left(plan.drain_delay_end)
        logger.info(
            "%s: stopping gracefully within %.1fs (drain delay %.1fs)",
            reason,
            plan.left(plan.deadline),
            delay,
        )
        if delay > 0:
            self.status = "draining (drain delay)"
            self._drain_timer = loop.call_later(
                delay, lambda: self.group.stop(reason, timeout=plan.left(plan.deadline))
            )
        else:
            self.group.stop(reason, timeout=plan.left(plan.deadline))

    def _plan_stop(self, *, drain_delay: bool = True) -> ShutdownPlan:
        """This stop's plan, made once, when it begins (the first stop signal, or a request).

        A worker whose master wrote a deadline for this stop keeps the master's
        (its drain delay has used part of the budget); anything else begins now.
        """
        if self._plan is None:
            given = read_stop_plan(self._stop_plan_path)
            if given is not None:
                self._plan = ShutdownPlan.until(self.config, given)
            else:
                self._plan = ShutdownPlan.begin(self.config, drain_delay=drain_delay)
        return self._plan

    def _begin(self, reason: str) -> None:
        if self._stop_requested:
            return
        self._stop_requested = True
        self._arm_hard_stop(self._plan_stop().hard_stop)
        self.ready = False
        self.status = f"stopping: {reason}"
        if self.telemetry is not None:
            self.telemetry.drain_begins(reason)
        if self.notifier is not None:
            self.notifier.send("STOPPING=1", f"STATUS=stopping: {reason}")

    def _arm_hard_stop(self, at: float) -> None:
        """Start the last-resort timer once, for ``at`` (``time.monotonic()``): a stop has begun.

        Thread-safe enough for its callers (the signal handler, the parent
        watcher, the loop): the worst race starts the timer twice, and both
        copies are cancelled at the end.
        """
        if self._hard_stop is None or self._hard_timer is not None:
            return
        self._hard_timer = threading.Timer(max(0.0, at - time.monotonic()), self._hard_stop)
        self._hard_timer.name = "tether-hard-stop"
        self._hard_timer.daemon = True
        self._hard_timer.start()

    def _disarm_hard_stop(self) -> None:
        timer, self._hard_timer = self._hard_timer, None
        if timer is not None:
            timer.cancel()
            timer.join()  # returns at once; the thread must be gone before the leak check

    async def _arm_when_stopping(self) -> None:
        reason = await self.group.wait_stopping()
        left = (self.group.deadline or 0.0) - asyncio.get_running_loop().time()
        # A stop that began in the group (a member's exit): its deadline is the plan's.
        self._arm_hard_stop(ShutdownPlan.until(self.config, time.monotonic() + left).hard_stop)
        # ...and it is a stop like a requested one: not ready, STOPPING=1 (a no-op if requested).
        self._begin(reason)

    def _on_signal_now(self, signum: int) -> None:
        """In the signal handler itself, even while the loop is stuck: a stop arms the timer."""
        if signum in signals.STOPPING:
            self._arm_hard_stop(self._plan_stop().hard_stop)

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
        elif self._stop_requested:
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
        self._resume_accepting()

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
                immediate=self._on_signal_now,
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
            self._disarm_hard_stop()
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
            with _holding(signals.STOPPING):
                await self._report_leaks(since)
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
        """Seconds the telemetry's last export may take: to the group's deadline, and its grace."""
        cancel = ShutdownBudget.of(self.config).group_abandon
        deadline = self.group.deadline
        if deadline is None:
            return cancel
        return max(cancel, deadline + cancel - asyncio.get_running_loop().time())

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

    async def _report_leaks(self, since: leaks.Snapshot) -> None:
        """After the group stopped: log what the app started and left running."""
        found = await leaks.afind(
            since,
            timeout=LEAK_CHECK_TIMEOUT,
            ignore_any=_HOSTING_THREADS,
            ignore=(_libuv_reserve_fd, self._is_successor),
        )
        if found:
            logger.warning("%s", leaks.format_leaks(found, "the app"))

    def _is_successor(self, leak: leaks.Leak) -> bool:
        return leak.kind == "process" and leak.name == str(self.reloads.successor)

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
                from tether.debug import DebugApp, debug_serve_options, hosts_for

                debug = self._engine(
                    DebugApp(
                        self.view.debug_source(),
                        token=self.config.debug_token,
                        allowed_hosts=hosts_for(listeners.debug, self.config.debug_allowed_hosts),
                    ),
                    [listeners.debug],
                    debug_serve_options(),
                )
                await group.start(self._debug_member(debug), name="debug")
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
            armer = loop.create_task(self._arm_when_stopping(), name="tether-hard-stop-armer")
            cleanups.append(armer.cancel)
            if not group.stopping:
                self._became_ready(cleanups)
        except BaseException as exc:
            group.stop(f"startup failed: {type(exc).__name__}", force=True)
            await group_wait_quietly(group)  # the first error is the story
            for cleanup in cleanups:
                cleanup()
            raise
        try:
            await group.wait()
            problems: list[Exception] = []
        except ExceptionGroup as exc:
            problems = list(exc.exceptions)
        await self.reloads.settle(group.deadline)
        try:
            if self.http is None:
                # No HTTP server ran phase 5: drain background work here, in what is left.
                left = max(0.0, (group.deadline or loop.time()) - loop.time())
                self.hooks.abandoned.extend(await self._drain_background(left))
        finally:
            for cleanup in cleanups:
                cleanup()
        self._raise_problems(problems)

    def _serve_options(self, kind: str | None) -> ServeOptions:
        config = self.config
        limit = config.limit_max_requests
        if limit is not None:
            limit += random.randint(0, config.limit_max_requests_jitter)
            self.hooks.request_limit = lambda: self.request_stop(
                f"served {limit} requests (--limit-max-requests)"
            )
        elif config.max_requests is not None:
            limit = config.max_requests + random.randint(0, config.max_requests_jitter)
            self.hooks.request_limit = functools.partial(
                self._recycle, f"served {limit} requests (--max-requests)"
            )
        if config.max_worker_memory is not None:
            self.hooks.tick = self._check_memory
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

    def _recycle(self, why: str) -> None:
        """--max-requests or --max-worker-memory reached: a fresh process takes over.

        Asked once per process. A master's worker stops taking connections and
        requests at once (each open connection gets at most one more, told
        ``Connection: close``; new ones queue in the master's sockets for the
        siblings and the successor) and asks its master for a successor, which
        is READY before this one is told to drain; if none can be started, the
        master sends RESUME_SIGNAL and this one serves on. One process hands
        its sockets over as a reload does.
        """
        if self._recycle_asked:
            return
        self._recycle_asked = True
        if self._is_worker:
            logger.info("%s: taking no new requests; asking the master for a successor", why)
            if self.http is not None:
                self.http.stop_accepting()
            if self.notifier is not None:
                self.notifier.send(*recycle_report(why))
        else:
            self._reload(why)

    def _resume_accepting(self) -> None:
        """RESUME_SIGNAL: no successor could take over; serve on (not once stopping)."""
        http = self.http
        if http is None or http.accepting or self._stop_requested:
            return
        if self._resuming is not None and not self._resuming.done():
            return
        logger.warning("no successor could be started: taking requests again")
        self._resuming = asyncio.get_running_loop().create_task(
            http.resume_accepting(), name="tether-resume-accepting"
        )

    def _check_memory(self) -> None:
        """--max-worker-memory: recycle once resident memory passes the limit."""
        limit = self.config.max_worker_memory
        if limit is None or self._recycle_asked:
            return
        rss = process_rss()
        if rss > limit * MIB:
            self._recycle(
                f"resident memory {rss / MIB:.0f} MiB passed --max-worker-memory {limit} MiB"
            )

    def _reload(self, why: str) -> None:
        """HUP/USR2, --max-requests, --reload in one process: hand the sockets to a fresh copy."""
        if self._is_worker:
            logger.info("%s; ignored: reloads of a worker are its master's job", why)
            return
        if self.reloads.argv is None or self._open is None:
            logger.warning("%s; ignored: this service was not started by `tether run`", why)
            return
        if self._stop_requested or not self.ready:
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
        self._check_memory()  # growth without connections (background work) counts too

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
            self._arm_hard_stop(orphaned.hard_stop)
            stop = functools.partial(
                self.request_stop, "the master process exited", budget=PARENT_DEATH_BUDGET
            )
            with contextlib.suppress(RuntimeError):  # the loop has closed: we are exiting anyway
                loop.call_soon_threadsafe(stop)

        threading.Thread(target=watch, name="tether-parent-watch", daemon=True).start()

    def _debug_member(self, debug: Engine) -> Callable[[StopToken], Any]:
        """The debug server stays up while the rest drains, so a stuck drain can be inspected."""

        async def member(stop: StopToken) -> None:
            inner = Group("debug", graceful_timeout=0.5, cancel_timeout=0.5)
            await inner.start(debug.run, name="debug-http")
            stop.ready()
            try:
                # Cancelled at the deadline while keeping the dumps available:
                # the debug server itself abandons nothing.
                with contextlib.suppress(asyncio.CancelledError):
                    await stop.wait()
                    others = [t for name, t in self.group.tasks().items() if name != "debug"]
                    if others:
                        await asyncio.wait(others, timeout=stop.remaining())
            finally:
                inner.stop("service stopping")
                await group_wait_quietly(inner)

        return member

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

    def _raise_problems(self, problems: list[Exception]) -> None:
        """One ExceptionGroup: members' errors, and everything abandoned in one report."""
        abandoned = list(self.hooks.abandoned)
        errors: list[Exception] = []
        for exc in problems:
            if isinstance(exc, ShutdownAbandoned):
                abandoned[:0] = exc.items
            else:
                errors.append(exc)
        for item in abandoned:
            # The tracker has already logged its tasks' stacks.
            stack = f"\n{item.stack}" if item.stack and item.kind != "task" else ""
            logger.error("abandoned at the deadline: %s%s", item.describe(), stack)
        if abandoned:
            if self.telemetry is not None:
                self.telemetry.abandoned(abandoned)
            errors.append(ShutdownAbandoned(abandoned))
        if errors:
            msg = "the service ended with problems"
            raise ExceptionGroup(msg, errors)


@contextlib.contextmanager
def _holding(signums: Iterable[int]) -> Iterator[None]:
    """Signals in ``signums`` do nothing while the block runs (the process is ending anyway)."""
    previous = {signum: signal.signal(signum, _ignore) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _ignore(_signum: int, _frame: object) -> None:
    """The stop it asks for has already happened."""


def _server_hooks(config: RunConfig) -> ServerHooks | None:
    """The hooks of ``-c gunicorn.conf.py``; tether._hooks is imported only with such a file."""
    if config.python_config is None:
        return None
    from tether._hooks import ServerHooks

    return ServerHooks.of(config)


def _libuv_reserve_fd(leak: leaks.Leak) -> bool:
    """libuv's EMFILE reserve: /dev/null per listening loop, reopened on "/" after an EMFILE."""
    return leak.kind == "fd" and leak.target in ("/dev/null", "/")


async def group_wait_quietly(group: Group) -> None:
    """Wait for a group to settle, ignoring its errors (the caller already has the story)."""
    try:
        await group.wait()
    except Exception as exc:
        logger.debug("group %r ended with: %r", group.name, exc)


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
