"""The master's care of single processes: workers (spawn, heartbeats, death, replacement)
and its own successor (upgrade).

Split from ``master.py`` (which keeps the lifecycle: start, reload, upgrade,
stop); both work on the same state, declared here.

Invariants: a worker the master did not ask to stop and that dies while its
generation serves is replaced in its slot, at once the first time, then with
exponential backoff while it keeps dying; a ready worker whose event loop
misses heartbeats for ``--watchdog-timeout`` is asked for its stacks (USR1)
and killed; every wait on a worker's exit is bounded, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from typing import Any

from tether._children import Child, describe_exit, start_child
from tether._generations import Generation, Worker, WorkerFailed
from tether._masterapi import MasterAPI
from tether._mastersupport import SystemdLink, worker_argv
from tether.config import RunConfig
from tether.metrics import FINAL_ENV, final_path
from tether.notify import NotifyMessage, NotifyReceiver

__all__ = ["KILL_MARGIN", "WorkerCare"]

log = logging.getLogger("tether.master")

#: Extra seconds past a worker's own shutdown budget before the master kills it.
KILL_MARGIN = 5.0
#: Backoff between restarts of a worker that keeps dying: first at once, then doubling.
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
#: A worker that served this long before dying starts its slot's backoff afresh.
BACKOFF_RESET_AFTER = 30.0


class WorkerCare(MasterAPI):
    """Mixed into :class:`tether.master.Master`."""

    config: RunConfig
    systemd: SystemdLink
    _by_pid: dict[int, Worker]
    _next_worker: int
    _rundir: str
    _worker_env: dict[str, str]
    _program: tuple[str, ...]
    _app_socks: list[socket.socket]
    _parent_r: int
    _cwd: str
    _rx: NotifyReceiver | None
    _hurry: asyncio.Event
    _successor: Child | None
    _successor_ready: asyncio.Event

    _argv: list[str]
    _systemd_address: str | None
    _servers: list[Any]
    _handover: bool
    _debug_sock: socket.socket | None
    _control_sock: socket.socket | None
    #: Pids the watchdog killed, so their restart counts as "watchdog", not "crash".
    _watchdog_killed: set[int]

    def _spawn_task(self, coro: Any, name: str) -> asyncio.Task[Any]:
        raise NotImplementedError

    async def _discard(self, gen: Generation) -> None:
        """Kill a generation that did not make it (bounded wait)."""
        gen.state = "failed"
        workers = gen.workers()
        for w in workers:
            w.asked_to_stop = True
            w.child.kill()
        for w in workers:
            await w.child.wait(5)
            await w.child.wait_output(1)
        gen.state = "exited"

    def _spawn_worker(self, gen: Generation, slot: int, restarts: int = 0) -> Worker:
        wid = self._next_worker
        self._next_worker += 1
        debug_path = os.path.join(self._rundir, f"w{wid}.sock")
        env = dict(self._worker_env, TETHER_WORKER_ID=str(wid), TETHER_GENERATION=str(gen.number))
        env[FINAL_ENV] = final_path(debug_path)  # where it leaves its final counts
        child, fds = start_child(
            worker_argv(self.config, debug_path, self._program),
            name=f"worker {wid}",
            env=env,
            sockets=[("app", s) for s in self._app_socks],
            extra_fds=[self._parent_r],
            cwd=self._cwd,
            new_process_group=True,  # terminal signals go to the master, which decides
        )
        assert str(fds[0]) == env["TETHER_PARENT_FD"]
        if self.active is not None and self.active is not gen:
            _yield_cpu(child.pid)  # a reload: the serving generation keeps the CPU first
        w = Worker(wid, gen.number, slot, child, debug_path, restarts=restarts)
        old = gen.slots.get(slot)
        if old is not None and old.child.alive:
            gen.retired.append(old)
        elif old is not None:
            self._by_pid.pop(old.pid, None)
            old.child.close()
        gen.slots[slot] = w
        self._by_pid[w.pid] = w
        child.exited.add_done_callback(lambda _: self._on_worker_exit(w))
        log.info("master %d: started %s in slot %d", self._pid, w.label, slot)
        return w

    def _ask_to_stop(self, w: Worker, sig: int) -> None:
        if w.child.alive and not w.asked_to_stop:
            w.asked_to_stop = True
            w.state = "stopping"
            if w.watchdog is not None:
                w.watchdog.cancel()
            w.child.signal(sig)

    async def _wait_or_kill(self, workers: list[Worker], budget: float) -> list[Worker]:
        """Wait for ``workers`` to exit within ``budget`` (+ margin); kill and return the rest.

        A second stop signal (``_hurry``) shortens the wait to the cancel budget:
        the workers were told to skip to cancelling.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget + KILL_MARGIN
        pending: set[asyncio.Future[Any]] = {w.child.exited for w in workers if w.child.alive}
        hurried = self._hurry.is_set()
        hurry = asyncio.ensure_future(self._hurry.wait())
        try:
            while pending and (remaining := deadline - loop.time()) > 0:
                waiting = pending if hurried else pending | {hurry}
                done, _ = await asyncio.wait(
                    waiting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                pending -= done
                if not hurried and hurry in done:
                    hurried = True
                    cut = loop.time() + self.config.cancel_timeout + KILL_MARGIN
                    deadline = min(deadline, cut)
        finally:
            hurry.cancel()
        stuck = [w for w in workers if w.child.alive]
        for w in stuck:
            log.error(
                "master %d: %s did not exit within its shutdown budget; killing it",
                self._pid,
                w.label,
            )
            w.killed = True
            w.child.kill()
        for w in stuck:
            await w.child.wait(5)
        return stuck

    def _forget(self, gen: Generation) -> None:
        for w in [*gen.slots.values(), *gen.retired]:
            if not w.child.alive:
                self._by_pid.pop(w.pid, None)
                w.child.close()
        if gen is not self.active:
            self.generations.pop(gen.number, None)

    # -- workers that die, scale ----------------------------------------------------

    def _on_worker_exit(self, w: Worker) -> None:
        self.aggregator.retire(str(w.id), w.debug_path)  # its counts are kept in /metrics
        code = w.child.exited.result()
        was_ready = w.state == "ready"
        w.state = "exited"
        if w.watchdog is not None:
            w.watchdog.cancel()
        gen = self.generations.get(w.generation)
        if w.asked_to_stop or self.stopping or gen is None:
            log.info("master %d: %s %s", self._pid, w.label, describe_exit(code))
            return
        if gen.state != "serving" or gen is not self.active or gen.slots.get(w.slot) is not w:
            if gen.state != "starting":
                log.info("master %d: %s %s", self._pid, w.label, describe_exit(code))
            return
        failures = gen.failures.get(w.slot, 0)
        if w.ready_at is not None and time.monotonic() - w.ready_at > BACKOFF_RESET_AFTER:
            failures = 0
        failures += 1
        gen.failures[w.slot] = failures
        delay = 0.0 if failures == 1 else min(BACKOFF_FIRST * 2 ** (failures - 2), BACKOFF_MAX)
        log.warning(
            "master %d: %s %s %s; replacing it%s",
            self._pid,
            w.label,
            describe_exit(code),
            "while serving" if was_ready else "before it was ready",
            f" in {delay:.1f}s (failure {failures} in a row)" if delay else "",
        )
        self.restarts += 1
        self.lifecycle.restarted("watchdog" if w.pid in self._watchdog_killed else "crash")
        task = self._spawn_task(
            self._replace(gen, w.slot, delay, w.restarts + 1), f"replace-{w.slot}"
        )
        gen.replacing[w.slot] = task
        self.systemd.status(self.status_line())
        task.add_done_callback(
            lambda t: gen.replacing.pop(w.slot, None) if gen.replacing.get(w.slot) is t else None
        )

    async def _replace(self, gen: Generation, slot: int, delay: float, restarts: int) -> None:
        if delay:
            await asyncio.sleep(delay)
        if self.stopping or gen is not self.active or gen.state != "serving":
            return
        w = self._spawn_worker(gen, slot, restarts)
        timed_out = False
        try:
            async with asyncio.timeout(self.config.reload_timeout):
                await w.until_ready()
        except TimeoutError:
            timed_out = True
        except WorkerFailed as exc:
            log.debug("replacement failed: %s", exc)  # its exit schedules the next attempt
        if timed_out:
            log.error(
                "master %d: %s was not READY within --reload-timeout; killing it",
                self._pid,
                w.label,
            )
            w.child.kill()

    def _reconcile_size(self) -> None:
        gen = self.active
        if gen is None or self.stopping:
            return
        gen.size = self.size
        for slot in range(self.size):
            if slot not in gen.slots:
                self._spawn_task(self._replace(gen, slot, 0.0, 0), f"scale-{slot}")
        for slot in sorted(gen.slots, reverse=True):
            if slot >= self.size:
                w = gen.slots.pop(slot)
                gen.retired.append(w)
                task = gen.replacing.pop(slot, None)
                if task is not None:
                    task.cancel()
                self._ask_to_stop(w, signal.SIGTERM)

    # -- notifications and the watchdog ------------------------------------------

    async def _read_notifications(self) -> None:
        assert self._rx is not None
        async for message in self._rx:
            self._on_notification(message)

    def _on_notification(self, message: NotifyMessage) -> None:
        fields = message.fields
        if self._successor is not None and message.pid == self._successor.pid:
            if fields.get("READY") == "1":
                self._successor_ready.set()
            return
        w = self._by_pid.get(message.pid)
        if w is None:
            log.debug("notification from unknown pid %d ignored: %r", message.pid, fields)
            return
        if "STATUS" in fields:
            w.status = fields["STATUS"]
        if fields.get("READY") == "1" and not w.ready.is_set():
            _reclaim_cpu(w.pid)
            w.mark_ready()
            took = time.monotonic() - w.started_at
            gen = self.generations.get(w.generation)
            if gen is not None and gen.state == "starting":
                self.progress(f"{w.label} ready in {took:.2f}s ({gen.ready_count()}/{gen.size})")
            else:
                log.info("master %d: %s ready in %.2fs", self._pid, w.label, took)
                self.systemd.status(self.status_line())
            self._arm_watchdog(w)
        if fields.get("WATCHDOG") == "1" and w.state == "ready":
            w.last_heartbeat = time.monotonic()
            self._arm_watchdog(w)

    def _arm_watchdog(self, w: Worker) -> None:
        if w.watchdog is not None:
            w.watchdog.cancel()
        loop = asyncio.get_running_loop()
        w.watchdog = loop.call_later(self.config.watchdog_timeout, self._watchdog_expired, w)

    def _watchdog_expired(self, w: Worker) -> None:
        if not w.child.alive or w.state != "ready":
            return
        log.error(
            "master %d: %s sent no heartbeat for %gs (--watchdog-timeout): its event loop is "
            "blocked; asking it for its stacks (USR1), then killing it",
            self._pid,
            w.label,
            self.config.watchdog_timeout,
        )
        self._watchdog_killed.add(w.pid)
        w.child.signal(signal.SIGUSR1)
        asyncio.get_running_loop().call_later(1.0, w.child.kill)

    async def _systemd_heartbeat(self, interval: float) -> None:
        while True:
            self.systemd.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    # -- upgrade (USR2) -----------------------------------------------------------

    async def _upgrade(self) -> dict[str, Any]:
        self.progress(f"upgrade: starting a new master ({' '.join(self._argv)})")
        self.systemd.reloading("upgrading the master")
        env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_PID",)}
        assert self._rx is not None
        env["TETHER_UPGRADE_FROM"] = str(self._pid)
        env["NOTIFY_SOCKET"] = self._rx.path
        if self._systemd_address:
            env["TETHER_SYSTEMD_NOTIFY_SOCKET"] = self._systemd_address
        named = [("app", s) for s in self._app_socks]
        named += [("debug", s) for s in [self._debug_sock] if s is not None]
        named += [("control", s) for s in [self._control_sock] if s is not None]
        self._successor_ready.clear()
        try:
            child, _ = start_child(
                self._argv,
                name="new master",
                env=env,
                sockets=named,
                capture_stderr=False,
                cwd=self._cwd,
            )
        except OSError as exc:
            return self._upgrade_failed(f"cannot start a new master: {exc}")
        self._successor = child
        ready = asyncio.ensure_future(self._successor_ready.wait())
        waiting: set[asyncio.Future[Any]] = {ready, child.exited}
        try:
            await asyncio.wait(
                waiting,
                timeout=self.config.reload_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            ready.cancel()
        if not self._successor_ready.is_set():
            why = (
                describe_exit(child.exited.result())
                if child.exited.done()
                else f"was not READY within --reload-timeout {self.config.reload_timeout:g}s"
            )
            child.kill()  # its workers see end-of-file on its pipe and stop
            await child.wait(5)
            child.close()
            self._successor = None
            return self._upgrade_failed(f"the new master (pid {child.pid}) {why}")
        self._handover = True
        self.systemd.ready(f"handed over to master {child.pid}", mainpid=child.pid)
        self.progress(
            f"new master {child.pid} is ready; this master ({self._pid}) drains and exits"
        )
        for server in self._servers:
            await server.close()
        self._servers.clear()
        self.request_stop("graceful")
        return {"ok": True, "new_master": child.pid}

    def _upgrade_failed(self, why: str) -> dict[str, Any]:
        log.error("master %d: upgrade failed: %s; this master keeps serving", self._pid, why)
        self.systemd.ready(self.status_line())
        return {"ok": False, "error": why}


#: Niceness of a worker of a new generation until it is READY. Importing and starting
#: an app is CPU-heavy; on a small machine it would take CPU from the workers that are
#: serving. Only where the master may undo it (root), so no worker stays niced.
STARTING_NICENESS = 10


def _yield_cpu(pid: int) -> None:
    if os.geteuid() != 0:
        return
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, STARTING_NICENESS)


def _reclaim_cpu(pid: int) -> None:
    if os.geteuid() != 0:
        return
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, 0)
