"""The master: holds the listening sockets, runs worker generations, reloads without downtime.

It is a :class:`~tether.group.Group` of parts, each the one owner of its state:

- ``pool`` (:mod:`.pool`): generations, slots, replacement, watchdog, drain,
  and the one queue of reload/upgrade/resize requests;
- ``upgrade`` (:mod:`.upgrade`): USR2, a new master taking every socket;
- ``servers``: the control socket (:mod:`tether._control`) and the debug
  listener, the same :class:`~tether.debug.DebugApp` on the same
  engine (``tether._engines.http_engine``) a worker uses, over the status
  view (:mod:`.status`). They start once the first workers are spawned;
- ``notifications``: every worker's READY/WATCHDOG/STATUS, routed to the pool
  (or to the upgrader, from a new master).

Before any of this, and before this module is imported, :mod:`tether._opening`
binds the sockets and spawns the first generation (no asyncio, no HTTP engine,
no ``prometheus_client``): the master takes that opening over and adopts those
workers when the pool first asks for them, so the workers import their app
while the master imports itself. With a gunicorn config's hooks (which run
before the sockets are bound and before each spawn) the master opens itself.

Signals arrive through :func:`tether.signals.install`, whose table says which
``handle_<action>`` method each one calls, and become requests: TERM/INT stop
the group gracefully (a second one hurries the workers), QUIT stops fast,
HUP/USR2/TTIN/TTOU go to the pool's queue, USR1 asks every worker for its
dumps.

A stop, in order, by one plan made when it begins
(:class:`~tether.config.ShutdownPlan`, the same a ``--workers 0`` process
follows): ``/readyz`` answers 503 for ``--drain-delay``; a final stop closes
the master's copies of the listening sockets (the kernel refuses new
connections at once; a reload or upgrade keeps them, so queued connections go
to the next generation); the workers drain by the plan's deadline, which the
master writes for them before its TERM (the stop plan of
:mod:`tether.worker`), so the drain delay is counted inside
``--graceful-timeout`` here too; the debug listener stays up until they are gone.

Resource handling: every child is watched through a pidfd and reaped by the
master; a pipe whose write end only the master holds lets workers see the
master's death (even ``kill -9``) as end-of-file. On the way out the master
kills whatever it started and did not hand over, and removes its files.

Error handling: configuration problems raise :class:`~tether.errors.ConfigError`
before anything starts; a first generation in which no worker became ready
raises :class:`~tether.errors.StartupError`; work abandoned by a worker raises
:class:`~tether.errors.ShutdownAbandoned`. The CLI turns them into exit codes.

Why this module is long: it tells the master's one story in order (its members, its
stop, the upgrade handover, the routing of notifications); every part that owns state is
already a module of its own (.pool, .upgrade, .status, .workers, .watchdog, .support).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from tether import _startgc, signals
from tether import sockets as sockets_mod
from tether._appmetrics import MultiprocDir
from tether._children import Child
from tether._control import ControlServer
from tether._opening import Opening, open_master, spawn_worker
from tether._pidfile import PidFile
from tether._reaper import Reaper, disown, own
from tether._waits import first
from tether.config import RunConfig, ShutdownBudget, ShutdownPlan
from tether.group import Group, StopToken
from tether.master.pool import Pool, PoolHooks
from tether.master.status import StatusView, fetch_unix
from tether.master.support import SystemdLink, upgrade_argv
from tether.master.upgrade import Upgrader, upgrade_env
from tether.master.workers import Worker
from tether.metrics import Aggregator, Lifecycle
from tether.notify import Notifier, NotifyMessage, NotifyReceiver, watchdog_interval
from tether.worker import WORKER_PROGRAM, write_stop_plan

if TYPE_CHECKING:
    from tether._hooks import ServerHooks
    from tether._otel import Telemetry

__all__ = ["Master", "run_master"]

log = logging.getLogger("tether.master")

StopMode = Literal["graceful", "fast"]


def run_master(config: RunConfig, opening: Opening | None = None) -> None:
    """Run a master with ``config.workers`` workers until stopped; raises as ``Master.run``.

    ``opening``: what :func:`tether._opening.open_master` bound and spawned before this
    module was imported (the CLI's way, so the first workers start at once); None: the
    master opens itself.
    """
    asyncio.run(Master(config, opening=opening).run())


class Master:
    """One master process. ``run()`` once; see the module docstring for the model."""

    def __init__(
        self,
        config: RunConfig,
        *,
        program: Sequence[str] = WORKER_PROGRAM,
        opening: Opening | None = None,
    ) -> None:
        self.config = config
        self.budget = ShutdownBudget.of(config)
        self._program = tuple(program)
        self._pid = os.getpid()
        #: Sockets, runtime directory and first workers, until ``_open`` takes them over.
        self._opening = opening
        self._cwd = ""
        self._app_socks: list[socket.socket] = []
        self._debug_sock: socket.socket | None = None
        self._control_sock: socket.socket | None = None
        #: The control socket's path once this master owns it (bound or inherited):
        #: only then is it removed on the way out, never a file that was there before.
        self._control_path: str | None = None
        self._rundir = ""
        self._rx: NotifyReceiver | None = None
        self._parent_r = self._parent_w = -1
        #: What every worker inherits; each gets its own WorkerContract on top (_spawn_worker).
        self._worker_env: dict[str, str] = {}
        self._stop_plan_path = ""
        self._systemd_address: str | None = None
        self._upgraded_from: int | None = None
        self._upstream: Notifier | None = None
        self.systemd = SystemdLink(None)
        self._stop_mode: StopMode = "graceful"
        #: The stop's deadlines, made once when it begins (``request_stop`` or the final stop).
        self._plan: ShutdownPlan | None = None
        self._stop_signals = 0
        self._first_ready = asyncio.Event()
        #: Set when the first worker has been started: what the master serves itself (the
        #: debug listener, the control socket) starts after it, never delaying the workers.
        self._spawned = asyncio.Event()
        self._handover = asyncio.Event()
        self._pool_done = asyncio.Event()
        self.group = Group(
            "master",
            # The pool bounds the workers' drain itself; the group only backs it up.
            graceful_timeout=self.budget.graceful + 2 * self.budget.master_kill,
            cancel_timeout=self.budget.cancel,
        )
        self.pool = Pool(config, self._spawn_worker)
        #: /metrics: the workers' sums, kept across their exits; reloads and restarts.
        self.aggregator = Aggregator(fetch_unix)
        self.lifecycle = Lifecycle()
        #: The app's prometheus_client files (off until ``_open`` chooses the directory).
        self.app_metrics = opening.app_metrics if opening is not None else MultiprocDir()
        self.view = StatusView(
            self.pool,
            stop=lambda: self.request_stop("graceful"),
            aggregator=self.aggregator,
            lifecycle=self.lifecycle,
            app_metrics=self.app_metrics.families,
        )
        self.pool.hooks = PoolHooks(
            progress=self.view.progress,
            systemd=self.systemd,
            pending=self._pending,
            upgrade=self._upgrade,
            exited=self._worker_exited,
            restarted=self.lifecycle.restarted,
            reloaded=self.lifecycle.reloaded,
        )
        self.upgrader: Upgrader | None = None
        #: OpenTelemetry, when the environment asks for it; made once the workers started.
        self.telemetry: Telemetry | None = None
        #: A gunicorn config's server hooks (-c gunicorn.conf.py), or None.
        self.server_hooks = _server_hooks(config)
        if self.server_hooks is not None:
            self.pool.hooks.reloading = lambda: self._hook("on_reload")
            self.pool.hooks.resized = self._resized

    def _hook(self, name: str, *args: Any, fatal: bool = False) -> None:
        """Run a master-side gunicorn hook with this master as ``server`` (see tether._hooks)."""
        if self.server_hooks is not None:
            self.server_hooks.call(name, self.server_hooks.server, *args, fatal=fatal)

    def _resized(self, new: int, old: int) -> None:
        if self.server_hooks is not None:
            self.server_hooks.server.num_workers = new
        self._hook("nworkers_changed", new, old)

    def _worker_exited(self, w: Worker) -> None:
        """A worker's process ended: keep its counts, end its live app gauges, call child_exit."""
        self.aggregator.retire(str(w.id), w.debug_path)
        self.app_metrics.process_dead(w.pid)
        if self.server_hooks is not None and self.server_hooks.has("child_exit"):
            gone = self.server_hooks.exited_worker(
                w.id, w.generation, w.pid, w.child.exited.result()
            )
            self._hook("child_exit", gone)

    # -- the whole life -------------------------------------------------------------

    async def run(self) -> None:
        """Start, serve until stopped, drain. Raises what the group collected."""
        loop = asyncio.get_running_loop()
        for pid in self._opening.first_workers.values() if self._opening is not None else ():
            own(pid)  # spawned before this loop: reaped by the pool, never as an orphan
        reaper = Reaper(loop)  # orphans of the workers' apps come back here, to be reaped
        try:
            # gunicorn's arbiter tells the first count before on_starting (old value None).
            self._hook("nworkers_changed", self.config.workers, None)
            self._hook("on_starting", fatal=True)
            self._open()
            if self.server_hooks is not None:
                self.server_hooks.set_bind(
                    [str(sockets_mod.bound_address(s)) for s in self._app_socks]
                )
            self._hook("when_ready", fatal=True)
            with signals.install(loop, self, "master"):
                self.group.add(self._pool_member, name="pool")
                self.group.add(self._servers_member, name="servers")
                self.group.add(self._notifications_member, name="notifications")
                if self.config.reload:
                    from tether._reloader import watcher

                    dirs, includes, excludes = self.config.reload_watch()
                    watch = watcher(dirs, includes, excludes, self._on_code_change)
                    self.group.add(watch, name="reload-watch")
                if (interval := watchdog_interval()) is not None:
                    self.group.add(self._heartbeat_member(interval), name="systemd-watchdog")
                try:
                    await self.group.wait()
                except ExceptionGroup as problems:
                    # The master's own story needs no note naming its internal members.
                    for leaf in problems.exceptions:
                        notes = getattr(leaf, "__notes__", [])
                        notes[:] = [n for n in notes if not n.endswith("of group 'master'")]
                    raise
        finally:
            await self._close()
            reaper.close()
            self._hook("on_exit")

    def _on_code_change(self, paths: list[str]) -> None:
        """--reload: a save reloads the app as HUP does (a failed start keeps the old code)."""
        log.info("master %d: %s changed; reloading", self._pid, ", ".join(paths[:3]))
        self.pool.request("reload")

    def _open(self) -> None:
        """Sockets, private directory, notify receiver, parent pipe. Raises ConfigError."""
        if self._opening is None:  # not opened before the loop: gunicorn hooks first, or a test
            self._opening = open_master(self.config, app_metrics=self.app_metrics)
        op = self._opening.take()
        if op.upgrade is not None:  # a USR2: the old master started this one
            self._upgraded_from = op.upgrade.predecessor_pid
            self._upstream = Notifier.from_env({"NOTIFY_SOCKET": op.upgrade.notify_address})
        self._systemd_address = op.systemd_address
        if self._systemd_address:
            self.systemd.notifier = Notifier.from_env({"NOTIFY_SOCKET": self._systemd_address})
        self._app_socks, self._debug_sock = op.app_socks, op.debug_sock
        self._control_sock, self._control_path = op.control_sock, op.control_path
        self._rundir, self._rx, self._cwd = op.rundir, op.rx, op.cwd
        self._rx.start()
        self._parent_r, self._parent_w = op.parent_r, op.parent_w
        self._worker_env = op.worker_env
        self._stop_plan_path = op.stop_plan_path
        cfg = self.config
        self.upgrader = Upgrader(
            argv=upgrade_argv(),
            cwd=self._cwd,
            env=upgrade_env(
                {**self.app_metrics.successor_environ(os.environ), **cfg.successor_env()},
                pid=self._pid,
                notify_path=self._rx.path,
                systemd_address=self._systemd_address,
            ),
            sockets=self._all_sockets,
            timeout=cfg.reload_timeout,
        )

    def _all_sockets(self) -> list[tuple[str, socket.socket]]:
        named = [("app", s) for s in self._app_socks]
        named += [("debug", s) for s in [self._debug_sock] if s is not None]
        named += [("control", s) for s in [self._control_sock] if s is not None]
        return named

    def _spawn_worker(self, wid: int, generation: int) -> tuple[Child, str | None]:
        """The pool's seam: start one worker on this master's sockets (OSError if refused).

        A first worker that the opening already started is adopted instead.
        """
        assert self._opening is not None
        name = f"worker {wid}"
        pid = self._opening.adopt(wid, generation)
        if pid is not None:
            debug_path = os.path.join(self._rundir, f"w{wid}.sock")
        else:
            if self.server_hooks is not None:
                self._hook("pre_fork", self.server_hooks.new_worker(wid, generation))
            pid, debug_path = spawn_worker(
                self._opening, self.config, self._program, wid, generation
            )
        self._spawned.set()
        # Its stderr is the master's, inherited: a stalled master never blocks a worker.
        return Child(pid, name, None), debug_path

    async def _close(self) -> None:
        """Release everything; kill any child still alive that was not handed over."""
        handed_over = self._handover.is_set()
        if self._opening is not None:
            # First workers the pool never asked for (a stop came first): killed and reaped.
            unadopted = list(self._opening.first_workers.values())
            self._opening.close()
            for pid in unadopted:
                disown(pid)
        if self.upgrader is not None and not handed_over:
            await self.upgrader.close()
        await self.pool.close()
        if self.telemetry is not None:
            self.telemetry.shutdown(self.budget.master_kill)
        for fd in (self._parent_r, self._parent_w):
            if fd >= 0:
                os.close(fd)
        self._parent_r = self._parent_w = -1
        for sock in [*self._app_socks, self._debug_sock, self._control_sock]:
            if sock is not None:
                sock.close()
        if self._rx is not None:
            self._rx.close()
        self.app_metrics.close(os.environ)
        if self._rundir:
            shutil.rmtree(self._rundir, ignore_errors=True)
        if not handed_over and self._control_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._control_path)
        if self._upstream is not None:
            self._upstream.close()
        self.systemd.close()

    # -- members --------------------------------------------------------------------

    async def _pool_member(self, stop: StopToken) -> None:
        """The first generation, then queued operations until a stop; then the drain."""
        try:
            started, _ = await first(self.pool.start(), stop.wait())
            if started == 0:
                self._on_first_ready()
                await first(self.pool.serve(), stop.wait())
            await self._final_stop()
        finally:
            self._pool_done.set()

    async def _final_stop(self) -> None:
        self.pool.begin_stop()
        self.systemd.stopping()
        handover = self._handover.is_set()
        plan = self._plan_stop()
        delay = plan.left(plan.drain_delay_end)
        graceful = self._stop_mode == "graceful"
        if graceful and not handover and delay > 0 and self.pool.live_workers():
            log.info("master %d: /readyz answers 503 for %.1fs before draining", self._pid, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.pool.hurry.wait(), delay)
        if self._stop_mode == "graceful":
            # Before the TERM: the workers drain by this plan's deadline, not one of their own.
            with contextlib.suppress(OSError):  # unwritable: they take the whole budget, as before
                write_stop_plan(self._stop_plan_path, plan.deadline)
        if not handover:
            # A final stop: no generation will accept on these again. Closing our copies
            # now (the workers close theirs as they begin to drain) makes the kernel
            # refuse new connections at once, instead of queueing them until we exit.
            for sock in self._app_socks:
                sock.close()
        await self.pool.stop_workers(fast=self._stop_mode == "fast", plan=plan)

    def _plan_stop(self) -> ShutdownPlan:
        """This stop's plan, made once, when it begins."""
        if self._plan is None:
            self._plan = ShutdownPlan.begin(self.config)
        return self._plan

    async def _servers_member(self, stop: StopToken) -> None:
        """The control socket and the debug listener; up until the workers are gone."""
        # The workers start first: the HTTP engine this imports would delay them. After
        # an upgrade the old master serves these until we are ready: then we take over.
        begin = self._spawned if self._upgraded_from is None else self._first_ready
        began, _ = await first(begin.wait(), stop.wait())
        if began != 0:
            return
        self._start_telemetry()
        inner = Group("master-servers", graceful_timeout=0.5, cancel_timeout=0.5)
        try:
            if self._control_sock is not None:
                await inner.start(
                    _control_member(ControlServer(self._control_sock, self.view.handle_control)),
                    name="control",
                )
            if self._debug_sock is not None:
                from tether._engines import http_engine
                from tether.debug import DebugApp, debug_serve_options, hosts_for

                debug = http_engine()(
                    DebugApp(
                        self.view.debug_source(),
                        token=self.config.debug_token,
                        allowed_hosts=hosts_for(self._debug_sock, self.config.debug_allowed_hosts),
                    ),
                    [self._debug_sock],
                    debug_serve_options(),
                )
                await inner.start(debug.run, name="debug")
            await first(self._handover.wait(), self._pool_done.wait())
        finally:
            inner.stop("the master is stopping")
            with contextlib.suppress(Exception):
                await inner.wait()
        await self._pool_done.wait()

    def _start_telemetry(self) -> None:
        """OpenTelemetry's reload and replacement spans, if ``OTEL_*`` asks (tether._otel).

        After the first workers started: the SDK's import must not delay them.
        """
        if not any(name.startswith("OTEL_") for name in os.environ):
            return
        from tether._otel import Telemetry

        self.telemetry = Telemetry.start({"tether.role": "master", "process.pid": self._pid})
        if self.telemetry is not None:
            self.telemetry.trace_pool(self.pool.hooks, lambda: self.pool.reloading)

    async def _notifications_member(self, stop: StopToken) -> None:
        assert self._rx is not None
        rx = self._rx

        async def read() -> None:
            async for message in rx:
                self._route(message)

        reader = asyncio.ensure_future(read())
        try:
            await self._pool_done.wait()
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    def _heartbeat_member(self, interval: float) -> Callable[[StopToken], Awaitable[None]]:
        async def member(_stop: StopToken) -> None:
            # Until the workers are gone: systemd kills a master whose heartbeats stop.
            while not self._pool_done.is_set():
                self.systemd.send("WATCHDOG=1")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._pool_done.wait(), interval)

        return member

    # -- notifications ----------------------------------------------------------------

    def _route(self, message: NotifyMessage) -> None:
        if self.upgrader is not None and self.upgrader.on_notification(message):
            return
        self.pool.on_notification(message)

    def _pending(self) -> list[NotifyMessage]:
        """Notifications already in the socket, routed; the pool's are returned to it."""
        if self._rx is None:
            return []
        ours = []
        for message in self._rx.pending():
            if self.upgrader is None or not self.upgrader.on_notification(message):
                ours.append(message)
        return ours

    def _on_first_ready(self) -> None:
        status = self.pool.status_line()
        if self.config.pidfile:
            PidFile(self.config.pidfile).serving()  # an upgraded master takes it over now
        if self._upgraded_from is not None:
            log.info("master %d: ready; telling the old master %d", self._pid, self._upgraded_from)
            if self._upstream is not None:
                self._upstream.send("READY=1", f"MAINPID={self._pid}", f"STATUS={status}")
        else:
            self.systemd.ready(status, mainpid=self._pid)
        self._first_ready.set()
        # The collector was held off for the start (tether._startgc); nothing to freeze here.
        _startgc.catch_up(asyncio.get_running_loop())
        where = ", ".join(str(sockets_mod.bound_address(s)) for s in self._app_socks)
        log.info("master %d: serving %s on %s: %s", self._pid, self.config.app, where, status)

    # -- requests ----------------------------------------------------------------------

    # -- signals (tether.signals.SIGNALS says which signal asks for which) -------------

    def handle_stop(self, signum: int) -> None:
        """Stop gracefully; a second stop signal tells the workers to stop now."""
        self._stop_signal(signum, fast=False)

    def handle_fast_stop(self, signum: int) -> None:
        """Stop fast: the workers skip their drain."""
        self._stop_signal(signum, fast=True)

    def _stop_signal(self, signum: int, *, fast: bool) -> None:
        name = signal.Signals(signum).name
        self._stop_signals += 1
        if self._stop_signals == 1:
            how = "fast" if fast else "gracefully"
            log.info("master %d: %s received; stopping %s", self._pid, name, how)
            self.request_stop("fast" if fast else "graceful")
        else:
            log.warning("master %d: %s received again; workers stop now", self._pid, name)
            self._stop_mode = "fast"
            self.pool.escalate()

    def handle_reload(self, _signum: int) -> None:
        """A new generation; the old one drains once every new worker is ready."""
        self.pool.request("reload")

    def handle_upgrade(self, _signum: int) -> None:
        """A new master takes every socket (see :mod:`.upgrade`)."""
        self.pool.request("upgrade")

    def handle_add_worker(self, _signum: int) -> None:
        """One worker more."""
        self.pool.scale(self.pool.size + 1)

    def handle_remove_worker(self, signum: int) -> None:
        """One worker fewer, never none."""
        if self.pool.size <= 1:
            name = signal.Signals(signum).name.removeprefix("SIG")
            log.warning("master %d: %s ignored: already at 1 worker", self._pid, name)
        else:
            self.pool.scale(self.pool.size - 1)

    def handle_dump(self, _signum: int) -> None:
        """Every worker logs its task and thread dumps."""
        workers = self.pool.live_workers()
        ask = signals.signum_for("worker", "dump")
        for w in workers:
            w.child.signal(ask)
        log.info(
            "master %d: asked %d worker(s) to log their task and thread dumps",
            self._pid,
            len(workers),
        )

    def request_stop(self, mode: StopMode = "graceful") -> None:
        """Begin stopping (idempotent); ``fast`` skips the drain."""
        if self.group.stopping:
            if mode == "fast":
                self._stop_mode = "fast"
                self.pool.escalate()
            return
        self._stop_mode = mode
        self._plan_stop()
        if mode == "fast":
            self.pool.hurry.set()
        self.group.stop(f"{mode} stop requested")

    async def _upgrade(self) -> dict[str, Any]:
        """USR2: start a new master with every socket; hand over once it is READY."""
        assert self.upgrader is not None
        self._hook("pre_exec")
        self.view.progress(f"upgrade: starting a new master ({' '.join(upgrade_argv())})")
        self.systemd.reloading("upgrading the master")
        pid, why = await self.upgrader.upgrade()
        if pid is None:
            log.error("master %d: upgrade failed: %s; this master keeps serving", self._pid, why)
            self.systemd.ready(self.pool.status_line())
            return {"ok": False, "error": why}
        self._handover.set()
        self.pool.handed_over = True
        self.systemd.ready(f"handed over to master {pid}", mainpid=pid)
        self.view.progress(f"new master {pid} is ready; this master ({self._pid}) drains and exits")
        self.request_stop("graceful")
        return {"ok": True, "new_master": pid}


def _control_member(server: ControlServer) -> Callable[[StopToken], Awaitable[None]]:
    async def member(stop: StopToken) -> None:
        await server.start()
        stop.ready()
        try:
            await stop.wait()
        finally:
            await server.close()

    return member


def _server_hooks(config: RunConfig) -> ServerHooks | None:
    """The hooks of ``-c gunicorn.conf.py``; tether._hooks is imported only with such a file."""
    if config.python_config is None:
        return None
    from tether._hooks import ServerHooks

    return ServerHooks.of(config)
