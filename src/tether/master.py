"""The master: holds the listening sockets, runs worker generations, reloads without downtime.

The note's graceful restart (SIGHUP, hand the listener to a child, the child
takes over, the parent drains), done so that no request is refused:

- the master binds (or inherits) every socket once and never closes it while
  it runs, so the kernel queues connections even when no worker accepts;
- each worker receives the sockets by ``LISTEN_FDS`` and reports ``READY=1``
  over ``NOTIFY_SOCKET`` only once its app is imported, started and listening;
- a reload starts a whole new generation and waits for every worker of it to
  be ready before the old generation is asked to drain; a generation that
  fails to start is killed and the old one keeps serving.

Invariant (tableflip's, per generation): **at most one generation is not yet
ready**, and at most two exist: the serving one and one starting or draining.
Reloads run one at a time; requests that arrive meanwhile are coalesced into
one more reload after it.

Resource handling: every child is watched through a pidfd and reaped by the
master; a pipe whose write end only the master holds lets workers see the
master's death (even ``kill -9``) as end-of-file. On the way out the master
kills whatever it started and did not hand over, and removes its files.

Error handling: configuration problems raise :class:`~tether.errors.ConfigError`
before anything starts; a first generation that never becomes ready raises
:class:`~tether.errors.StartupError` with the worker's own last words.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from typing import Any, Literal

from tether import sockets as sockets_mod
from tether._children import Child, describe_exit
from tether._control import ControlServer, bind_control
from tether._generations import Generation, Worker, WorkerFailed
from tether._masterhttp import DebugServer
from tether._mastersupport import (
    WORKER_PROGRAM,
    SystemdLink,
    logical_cwd,
    remove_pidfile,
    upgrade_argv,
    worker_base_env,
    write_pidfile,
)
from tether._workercare import WorkerCare
from tether.config import RunConfig
from tether.errors import ConfigError, StartupError
from tether.notify import Notifier, NotifyReceiver, watchdog_interval

__all__ = ["Master", "run_master"]

log = logging.getLogger("tether.master")

StopMode = Literal["graceful", "fast"]


def run_master(config: RunConfig) -> int:
    """Run a master with ``config.workers`` workers until stopped; return the exit code."""
    return asyncio.run(Master(config).run())


class Master(WorkerCare):
    """One master process. ``run()`` once; see the module docstring for the model."""

    def __init__(self, config: RunConfig, *, program: tuple[str, ...] = WORKER_PROGRAM) -> None:
        super().__init__()
        self.config = config
        self.size = config.workers
        self._program = program
        self._pid = os.getpid()
        self._started = time.monotonic()
        self._cwd = logical_cwd()
        self._argv = upgrade_argv()
        self.generations: dict[int, Generation] = {}
        self.active: Generation | None = None
        self._by_pid: dict[int, Worker] = {}
        self._next_generation = 1
        self._next_worker = 1
        self.stopping = False
        self._stop_mode: StopMode = "graceful"
        self._stop_requested = asyncio.Event()
        self._hurry = asyncio.Event()
        self._stop_signals = 0
        self._handover = False
        self._wake = asyncio.Event()
        self._reload_waiters: list[asyncio.Future[dict[str, Any]]] = []
        self._upgrade_waiters: list[asyncio.Future[dict[str, Any]]] = []
        self._successor: Child | None = None
        self._successor_ready = asyncio.Event()
        self.last_reload: dict[str, Any] | None = None
        self.reloads = 0
        self.reloads_failed = 0
        self.reloading = False
        self.restarts = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._rundir = ""
        self._app_socks: list[socket.socket] = []
        self._debug_sock: socket.socket | None = None
        self._control_sock: socket.socket | None = None
        #: The control socket's path once this master owns it (bound or inherited):
        #: only then is it removed on the way out, never a file that was there before.
        self._control_path: str | None = None
        self._servers: list[ControlServer | DebugServer] = []
        self._parent_r = self._parent_w = -1
        self._rx: NotifyReceiver | None = None
        self._upstream: Notifier | None = None
        self.systemd = SystemdLink(None)
        self._worker_env: dict[str, str] = {}
        self._systemd_address: str | None = None
        self._upgraded_from: int | None = None

    # -- the whole life ---------------------------------------------------------

    async def run(self) -> int:
        """Start, serve until stopped, drain; return the exit code (0 clean, 4 abandoned)."""
        loop = asyncio.get_running_loop()
        try:
            self._open()
            for signum in _SIGNALS:
                loop.add_signal_handler(signum, self._on_signal, signum)
            if self._upgraded_from is None:
                await self._start_servers()
            self._spawn_task(self._read_notifications(), "notifications")
            if (interval := watchdog_interval()) is not None:
                self._spawn_task(self._systemd_heartbeat(interval), "systemd-watchdog")
            main = self._spawn_task(self._supervise(), "supervisor")
            stop = asyncio.ensure_future(self._stop_requested.wait())
            await asyncio.wait({main, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if main.done() and not main.cancelled() and main.exception() is not None:
                raise main.exception()  # type: ignore[misc]
            return await self._shutdown(main)
        finally:
            for signum in _SIGNALS:
                loop.remove_signal_handler(signum)
            await self._close()

    def _open(self) -> None:
        """Sockets, private directory, notify receiver, parent pipe. Raises ConfigError."""
        env = os.environ
        self._upgraded_from = _int_or_none(env.pop("TETHER_UPGRADE_FROM", None))
        if self._upgraded_from is not None:
            self._upstream = Notifier.from_env()
            self._systemd_address = env.pop("TETHER_SYSTEMD_NOTIFY_SOCKET", None)
            env.pop("NOTIFY_SOCKET", None)
        else:
            self._systemd_address = env.pop("NOTIFY_SOCKET", None)
        if self._systemd_address:
            self.systemd = SystemdLink(Notifier.from_env({"NOTIFY_SOCKET": self._systemd_address}))
        inherited = sockets_mod.inherit() or []
        for name, sock in inherited:
            if name == "debug":
                self._debug_sock = sock
            elif name == "control":
                self._control_sock = sock
            else:
                self._app_socks.append(sock)
        if inherited:
            log.info("master %d: using %d inherited socket(s)", self._pid, len(inherited))
        cfg = self.config
        if self._control_sock is None and cfg.control:
            self._control_sock = bind_control(cfg.control)
            self._control_path = cfg.control
        elif self._control_sock is not None:
            name = self._control_sock.getsockname()
            self._control_path = name if isinstance(name, str) and name else None
        if not self._app_socks:
            for text in cfg.binds:
                address = sockets_mod.parse_address(text, flag="--bind")
                self._app_socks.append(sockets_mod.bind(address, flag="--bind"))
        if self._debug_sock is None and cfg.debug_bind is not None:
            address = sockets_mod.parse_address(cfg.debug_bind, flag="--debug-bind")
            if not sockets_mod.is_loopback(address) and not cfg.debug_token:
                msg = (
                    f"--debug-bind {address} is not a loopback address; the debug server "
                    "shows every task's stack, so pass --debug-token TOKEN to expose it"
                )
                raise ConfigError(msg)
            self._debug_sock = sockets_mod.bind(address, flag="--debug-bind")
        self._rundir = tempfile.mkdtemp(prefix="tether-master-")
        self._rx = NotifyReceiver(os.path.join(self._rundir, "notify.sock"))
        self._rx.start()
        # Workers hold the read end; only this process holds the write end, so
        # its death (however it happens) is end-of-file for every worker.
        self._parent_r, self._parent_w = os.pipe()
        self._worker_env = worker_base_env(env, cfg)
        self._worker_env["NOTIFY_SOCKET"] = self._rx.path
        self._worker_env["TETHER_PARENT_PID"] = str(self._pid)
        self._worker_env["TETHER_PARENT_FD"] = str(
            sockets_mod.LISTEN_FDS_START + len(self._app_socks)
        )
        where = ", ".join(str(sockets_mod.bound_address(s)) for s in self._app_socks)
        log.info(
            "master %d: serving %s on %s with %d worker(s)", self._pid, cfg.app, where, self.size
        )

    async def _start_servers(self) -> None:
        if self._control_sock is not None:
            server = ControlServer(self._control_sock, self.handle_control)
            await server.start()
            self._servers.append(server)
        if self._debug_sock is not None:
            debug = DebugServer(self._debug_sock, self.debug_routes(), self.config.debug_token)
            await debug.start()
            self._servers.append(debug)

    async def _close(self) -> None:
        """Release everything; kill any child still alive that was not handed over."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        for server in self._servers:
            await server.close()
        self._servers.clear()
        leftovers = [w for g in self.generations.values() for w in g.workers()]
        if self._successor is not None and not self._handover:
            self._successor.kill()
            await self._successor.wait(5)
        for w in leftovers:
            w.child.kill()
        for w in leftovers:
            await w.child.wait(5)
        for w in [w for g in self.generations.values() for w in g.slots.values()]:
            w.child.close()
        if self._successor is not None:
            self._successor.close()
        for fd in (self._parent_r, self._parent_w):
            if fd >= 0:
                os.close(fd)
        self._parent_r = self._parent_w = -1
        for sock in [*self._app_socks, self._debug_sock, self._control_sock]:
            if sock is not None:
                sock.close()
        if self._rx is not None:
            self._rx.close()
        if self._rundir:
            shutil.rmtree(self._rundir, ignore_errors=True)
        if not self._handover:
            if self.config.pidfile:
                remove_pidfile(self.config.pidfile, self._pid)
            if self._control_path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self._control_path)
        if self._upstream is not None:
            self._upstream.close()
        self.systemd.close()

    def _spawn_task(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"master:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- signals ------------------------------------------------------------------

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            self._stop_signals += 1
            fast = signum == signal.SIGQUIT
            if self._stop_signals == 1:
                log.info(
                    "master %d: %s received; stopping %s",
                    self._pid,
                    name,
                    "fast" if fast else "gracefully",
                )
                self.request_stop("fast" if fast else "graceful")
            else:
                log.warning("master %d: %s received again; workers stop now", self._pid, name)
                self._escalate()
        elif signum == signal.SIGHUP:
            self.request_reload()
        elif signum == signal.SIGUSR2:
            self.request_upgrade()
        elif signum == signal.SIGTTIN:
            self.scale(self.size + 1)
        elif signum == signal.SIGTTOU:
            if self.size <= 1:
                log.warning("master %d: TTOU ignored: already at 1 worker", self._pid)
            else:
                self.scale(self.size - 1)
        elif signum == signal.SIGUSR1:
            workers = self.live_workers()
            for w in workers:
                w.child.signal(signal.SIGUSR1)
            log.info(
                "master %d: asked %d worker(s) to log their task and thread dumps",
                self._pid,
                len(workers),
            )

    def request_stop(self, mode: StopMode = "graceful") -> None:
        """Begin stopping (idempotent); ``fast`` skips the drain."""
        if self._stop_requested.is_set():
            if mode == "fast":
                self._escalate()
            return
        self._stop_mode = mode
        if mode == "fast":
            self._hurry.set()
        self._stop_requested.set()

    def _escalate(self) -> None:
        """Second stop signal: workers skip to cancelling (QUIT), delays end."""
        self._stop_mode = "fast"
        self._hurry.set()
        for w in self.live_workers():
            if w.asked_to_stop:
                w.child.signal(signal.SIGQUIT)

    def request_reload(self) -> asyncio.Future[dict[str, Any]]:
        """Queue a reload (coalesced with any not yet started); the future gets the outcome."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if self.stopping or self._stop_requested.is_set():
            fut.set_result({"ok": False, "error": "the master is stopping"})
            return fut
        if self._reload_waiters:
            log.info("master %d: reload already queued; coalesced", self._pid)
        else:
            log.info("master %d: reload requested", self._pid)
        self._reload_waiters.append(fut)
        self._wake.set()
        return fut

    def request_upgrade(self) -> asyncio.Future[dict[str, Any]]:
        """Queue an upgrade of the master itself (USR2); the future gets the outcome."""
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if self.stopping or self._stop_requested.is_set():
            fut.set_result({"ok": False, "error": "the master is stopping"})
            return fut
        log.info("master %d: upgrade requested", self._pid)
        self._upgrade_waiters.append(fut)
        self._wake.set()
        return fut

    def scale(self, n: int) -> None:
        """Run ``n`` workers per generation from now on (applied between reloads)."""
        log.info("master %d: scaling from %d to %d worker(s)", self._pid, self.size, n)
        self.size = n
        self._wake.set()

    # -- the supervisor: one operation at a time ----------------------------------

    async def _supervise(self) -> None:
        try:
            gen = await self._start_generation()
        except WorkerFailed as exc:
            msg = f"the app failed to start: {exc}"
            raise StartupError(msg) from None
        self._promote(gen)
        self._on_first_ready()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._upgrade_waiters or self._reload_waiters:
                if self._upgrade_waiters:
                    waiters, self._upgrade_waiters = self._upgrade_waiters, []
                    outcome = await self._upgrade()
                else:
                    waiters, self._reload_waiters = self._reload_waiters, []
                    self.reloading = True
                    try:
                        outcome = await self._reload()
                    finally:
                        self.reloading = False
                for fut in waiters:
                    if not fut.done():
                        fut.set_result(outcome)
                if self._handover:
                    return
            self._reconcile_size()

    def _on_first_ready(self) -> None:
        assert self.active is not None
        status = self.status_line()
        if self.config.pidfile:
            write_pidfile(self.config.pidfile, self._pid)
        if self._upgraded_from is not None:
            log.info("master %d: ready; telling the old master %d", self._pid, self._upgraded_from)
            if self._upstream is not None:
                self._upstream.send("READY=1", f"MAINPID={self._pid}", f"STATUS={status}")
            self._spawn_task(self._start_servers(), "servers")
        else:
            self.systemd.ready(status, mainpid=self._pid)
        log.info("master %d: %s", self._pid, status)

    def status_line(self) -> str:
        gen = self.active
        if gen is None:
            return "starting"
        return f"generation {gen.number} serving with {gen.ready_count()} worker(s)"

    def _promote(self, gen: Generation) -> None:
        gen.state = "serving"
        self.active = gen

    async def _start_generation(self) -> Generation:
        """Start a generation and wait until every worker is READY; WorkerFailed if not."""
        number = self._next_generation
        self._next_generation += 1
        gen = Generation(number, self.size)
        self.generations[number] = gen
        timeout = self.config.reload_timeout
        try:
            for slot in range(gen.size):
                self._spawn_worker(gen, slot)
            async with asyncio.timeout(timeout):
                async with asyncio.TaskGroup() as tg:
                    for w in gen.slots.values():
                        tg.create_task(w.until_ready())
            _check_alive(gen)
        except TimeoutError:
            laggard = next(w for w in gen.slots.values() if not w.ready.is_set())
            laggard.child.signal(signal.SIGUSR1)  # ask for its stacks before it goes
            await laggard.child.wait(0.5)
            failure = WorkerFailed(laggard, f"was not READY within --reload-timeout {timeout:g}s")
            await self._discard(gen)
            raise failure from None
        except ExceptionGroup as group:
            first = group.exceptions[0]
            await self._discard(gen)
            if isinstance(first, WorkerFailed):
                raise first from None
            raise
        except WorkerFailed:
            await self._discard(gen)
            raise
        except BaseException:
            await asyncio.shield(self._discard(gen))
            raise
        return gen

    # -- reload -------------------------------------------------------------------

    async def _reload(self) -> dict[str, Any]:
        old = self.active
        assert old is not None
        self.reloads += 1
        began = time.monotonic()
        self.progress(
            f"reload: starting generation {self._next_generation} ({self.size} worker(s))"
        )
        self.systemd.reloading(f"reloading: starting generation {self._next_generation}")
        failure: WorkerFailed | None = None
        try:
            gen = await self._start_generation()
        except WorkerFailed as exc:
            failure = exc
        if failure is not None:
            self.reloads_failed += 1
            log.error(
                "master %d: reload failed: %s; generation %d keeps serving",
                self._pid,
                failure,
                old.number,
            )
            self.progress(f"reload failed; generation {old.number} keeps serving")
            outcome: dict[str, Any] = {
                "ok": False,
                "error": str(failure),
                "generation": old.number,
            }
        else:
            self._promote(gen)
            ready_after = time.monotonic() - began
            self.progress(
                f"generation {gen.number} ready in {ready_after:.2f}s; "
                f"draining generation {old.number}"
            )
            self.systemd.ready(self.status_line())
            await self._drain(old, f"replaced by generation {gen.number}")
            took = time.monotonic() - began
            self.progress(f"generation {old.number} exited; reload done in {took:.2f}s")
            outcome = {
                "ok": True,
                "generation": gen.number,
                "ready_after": round(ready_after, 3),
                "seconds": round(took, 3),
            }
        self.systemd.ready(self.status_line())
        outcome["finished_at"] = time.time()
        self.last_reload = outcome
        self.lifecycle.reloaded(outcome)  # reloads by outcome, the console's history
        return outcome

    async def _drain(self, gen: Generation, why: str) -> None:
        """Ask a generation to drain (TERM), wait within the shutdown budget, then kill."""
        gen.state = "draining"
        for task in gen.replacing.values():
            task.cancel()
        workers = gen.workers()
        for w in workers:
            self._ask_to_stop(w, signal.SIGTERM)
        log.info("master %d: generation %d draining (%s)", self._pid, gen.number, why)
        await self._wait_or_kill(workers, self.config.graceful_timeout + self.config.cancel_timeout)
        gen.state = "exited"
        self._forget(gen)

    # -- stopping -----------------------------------------------------------------

    async def _shutdown(self, main: asyncio.Task[None]) -> int:
        """Stop everything within the budget; the exit code follows the workers that served.

        0 if every one drained, 4 if one abandoned work at the deadline or had
        to be killed, 1 if one failed while stopping.
        """
        self.stopping = True
        self.systemd.stopping()
        main.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await main
        for gen in list(self.generations.values()):
            for task in gen.replacing.values():
                task.cancel()
        outcome = {"ok": False, "error": "the master is stopping"}
        for fut in [*self._reload_waiters, *self._upgrade_waiters]:
            if not fut.done():
                fut.set_result(outcome)
        if (
            self._stop_mode == "graceful"
            and not self._handover
            and self.config.drain_delay > 0
            and self.live_workers()
        ):
            log.info(
                "master %d: /readyz answers 503 for %gs before draining",
                self._pid,
                self.config.drain_delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), self.config.drain_delay)
        fast = self._stop_mode == "fast"
        workers = self.live_workers()
        for w in workers:
            self._ask_to_stop(w, signal.SIGQUIT if fast else signal.SIGTERM)
        budget = (
            self.config.cancel_timeout
            if fast
            else self.config.graceful_timeout + self.config.cancel_timeout
        )
        stuck = await self._wait_or_kill(workers, budget)
        # Only workers that served count: one still starting had no work to lose, and
        # SIGTERM during its import ends it by the signal, which is not a failure.
        served = [w for w in workers if w.ready_at is not None]
        codes = [w.child.exited.result() for w in served if w not in stuck]
        log.info("master %d: stopped (%d worker(s) drained)", self._pid, len(workers))
        if any(w in stuck for w in served) or any(c == 4 for c in codes):
            return 4
        if any(c != 0 for c in codes):
            return 1
        return 0


def _check_alive(gen: Generation) -> None:
    """A worker that exited between its READY and the generation's is a failed start."""
    for w in gen.slots.values():
        if not w.child.alive:
            raise WorkerFailed(w, describe_exit(w.child.exited.result()) + " right after READY")


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGTTIN,
    signal.SIGTTOU,
)
