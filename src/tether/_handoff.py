"""One process hands its listening sockets to a fresh copy of itself (``--workers 0``, HUP).

This is the note's "endless" restart done with the same protocol a master
uses for its workers: the copy receives the sockets through ``LISTEN_FDS``,
imports the app from disk, starts it, and says ``READY=1``. Only then does
this process drain and exit; if the copy exits or is not ready within the
reload timeout it is killed and this process keeps serving, so a broken
deploy never takes the service down.

Invariant: at most one copy is starting at any time, and the sockets never
close in between — the kernel queues connections for whichever process
accepts next.

The copy reports readiness to a private receiver named in
:func:`tether.worker.handoff_env`; ``NOTIFY_SOCKET`` keeps pointing at the
supervisor (systemd) if there is one, so the copy announces itself there as
the new ``MAINPID``.

:class:`Reloads` is the one process's side of it (``--workers 0``): at most
one handoff in progress, the reload requests that come during it folded into
one that follows, and a stop during it waited for, so that a copy which
became ready hears the stop too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence

from tether import signals
from tether._children import describe_exit, start_child
from tether._waits import first
from tether.errors import RuntimeDirError
from tether.notify import NotifyReceiver
from tether.worker import handoff_env

__all__ = ["Reloads", "hand_over"]

logger = logging.getLogger("tether.runtime")


async def hand_over(
    sockets: Sequence[tuple[str, socket.socket]],
    *,
    argv: Sequence[str],
    cwd: str,
    supervisor_notify: str | None,
    ready_within: float,
    extra_env: dict[str, str] | None = None,
) -> int | None:
    """Start ``argv`` with ``sockets``; return its pid once it is ready, else None.

    Error handling: every failure (no private socket, no new process, the copy
    exits, or is not ready in time) is logged with the reason and returns None;
    a copy that started is then killed and reaped.
    """
    try:
        receiver = NotifyReceiver()
    except RuntimeDirError as exc:
        logger.error("reload failed: %s; still serving with this one", exc)  # noqa: TRY400
        return None
    async with receiver:
        env = handoff_env(
            {**os.environ, **(extra_env or {})},
            notify_address=receiver.path,
            supervisor_address=supervisor_notify,
        )
        try:
            child, _ = start_child(
                argv, name="successor", env=env, sockets=sockets, capture_stderr=False, cwd=cwd
            )
        except OSError as exc:  # EMFILE, EAGAIN, ENOMEM: this process goes on serving
            logger.error(  # noqa: TRY400 - the reason is the whole story
                "reload failed: cannot start a new process: %s; still serving with this one", exc
            )
            return None
        logger.info("reload: started pid %d with the listening sockets", child.pid)
        try:
            async with asyncio.timeout(ready_within):
                while True:
                    got = await first(receiver.get(), child.exited)
                    if got[0] == 1:
                        logger.error(
                            "reload failed: the new process %d %s before it was ready; "
                            "still serving with this one",
                            child.pid,
                            describe_exit(child.exited.result()),
                        )
                        return None
                    message = got[1]
                    if message.pid == child.pid and message.fields.get("READY") == "1":
                        child.close()  # it lives on without us
                        return child.pid
        except TimeoutError:
            logger.error(  # noqa: TRY400 - the traceback of a timeout says nothing more
                "reload failed: the new process %d was not ready within %.0fs "
                "(--reload-timeout); killed it, still serving with this one",
                child.pid,
                ready_within,
            )
            child.signal(signal.SIGKILL)
            await child.wait(5.0)
            return None
        except BaseException:
            # We are being cancelled or failing ourselves: never leave a half-started copy.
            child.signal(signal.SIGKILL)
            raise


class Reloads:
    """One process's reloads by handoff: at most one at a time, the rest folded into the next.

    The service decides whether a reload may begin (it serves, it was started
    by ``tether run``) and says how it learns the outcome: ``stopping`` (a
    stop has begun), ``notify`` (to its supervisor), ``took_over(pid)`` (the
    copy is ready: drain) and ``retry(why)`` (a reload asked for during a
    failed one).
    """

    def __init__(
        self,
        argv: Sequence[str] | None,
        *,
        ready_within: float,
        extra_env: dict[str, str],
        stopping: Callable[[], bool],
        notify: Callable[..., None],
        took_over: Callable[[int], None],
        retry: Callable[[str], None],
    ) -> None:
        #: How to start a fresh copy of this process; None: reloads are not supported.
        self.argv = list(argv) if argv is not None else None
        self.cwd = os.getcwd()
        self.ready_within = ready_within
        self.extra_env = extra_env
        #: The supervisor's notify socket (systemd), which the copy tells its MAINPID.
        self.supervisor_notify: str | None = None
        #: The copy that took the sockets over: ours, never a leak of the app's.
        self.successor: int | None = None
        self._stopping = stopping
        self._notify = notify
        self._took_over = took_over
        self._retry = retry
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def busy(self) -> bool:
        """A handoff is in progress (a request now is folded into one that follows it)."""
        return self._task is not None and not self._task.done()

    def follow_up(self) -> None:
        """One more reload once the one in progress ends."""
        self._again = True

    def start(self, why: str, sockets: Sequence[tuple[str, socket.socket]]) -> None:
        """Hand ``sockets`` to a fresh copy (the caller checked that none is in progress)."""
        self._task = asyncio.get_running_loop().create_task(
            self._hand_over(why, sockets), name="tether-reload"
        )

    def cancel_starting(self) -> None:
        """A forced stop: kill the copy that is starting (one that took over is left alone)."""
        if self._task is not None and self.successor is None:
            self._task.cancel()

    async def settle(self, deadline: float) -> None:
        """A stop during a reload waits for it: a copy that became ready must hear the stop.

        Until ``deadline`` (``time.monotonic()``: the stop plan's): past it, the
        copy still starting is killed.
        """
        task = self._task
        if task is None or task.done():
            return
        logger.info("stopped; waiting for the reload in progress to end")
        await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
        if not task.done():
            task.cancel()  # hand_over kills the copy it started
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _hand_over(self, why: str, sockets: Sequence[tuple[str, socket.socket]]) -> None:
        assert self.argv is not None
        logger.info("%s: handing the sockets to a fresh copy of this process", why)
        self._notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        pid = await hand_over(
            sockets,
            argv=self.argv,
            cwd=self.cwd,
            supervisor_notify=self.supervisor_notify,
            ready_within=self.ready_within,
            extra_env=self.extra_env,
        )
        again, self._again = self._again, False
        if pid is not None:
            self.successor = pid
            if self._stopping():
                # It announced itself as the main process (MAINPID=): a supervisor now
                # waits for it, so the stop that came during the reload is its too.
                logger.info("pid %d became ready while stopping: passing the stop on", pid)
                os.kill(pid, signals.signum_for("single", "stop"))
                return
            self._took_over(pid)
            if again:  # HUPs that came during this reload: the new process owns them now
                os.kill(pid, signals.signum_for("single", "reload"))
            return
        if not self._stopping():
            self._notify("READY=1", "STATUS=reload failed; still serving the previous code")
        if again:
            self._retry("a HUP received during the failed reload")
