"""One process's side of its supervisor link: what it says over notify, and its parent's death.

Whoever started this process waits on what it says: a tether master (its
private receiver, from the :class:`~tether.worker.WorkerContract`), systemd
(``NOTIFY_SOCKET``), or the process it took the sockets over from in a
reload (its handoff receiver). :class:`Supervision` is the one place that
speaks to them:

- ``READY=1`` with ``STATUS=`` and ``MAINPID=`` once the app serves; then
  ``READY=1`` to the predecessor of a handoff (after ``MAINPID``: a
  supervisor must know this process before the predecessor exits);
- ``STOPPING=1`` when a stop begins; one ``STATUS=failed: ...`` line when
  the process ends with an error (work abandoned at the deadline is a stop's
  outcome, not a failure);
- ``WATCHDOG=1`` from the event loop itself, every watchdog interval (a
  blocked loop is visible), and whatever else a caller sends;
- a master's worker also watches the pipe from its master: end-of-file means
  the master is gone, and the worker stops (no orphans).

Invariant: the addresses are taken out of the environment before the app is
imported (:meth:`Supervision.take`): app code that notifies at import, or
starts processes of its own, never reaches whoever waits for this process.

Resource handling: one notify socket, closed by :meth:`close`; the heartbeat
is one loop timer, cancelled by the callable :meth:`ready` returns; the
parent watch is one daemon thread, blocked in ``read`` until the pipe ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, MutableMapping

from tether.errors import ShutdownAbandoned
from tether.notify import Notifier, watchdog_interval
from tether.worker import WorkerContract, failed_report, take_handoff, withdraw

__all__ = ["Supervision", "every"]


class Supervision:
    """What this process tells whoever waits on it."""

    def __init__(self, contract: WorkerContract | None) -> None:
        self._contract = contract
        self.notifier: Notifier | None = None
        #: systemd's NOTIFY_SOCKET, for one process (a master's worker has the master).
        self.supervisor: str | None = None
        self._predecessor: str | None = None

    def take(self, environ: MutableMapping[str, str]) -> None:
        """Take every address out of ``environ`` (before the app is imported) and connect."""
        contract = self._contract
        supervisor = environ.pop("NOTIFY_SOCKET", None) or None
        withdraw(environ)
        self.supervisor = None if contract is not None else supervisor
        self._predecessor = take_handoff(environ)
        address = contract.notify_address if contract is not None else supervisor
        self.notifier = Notifier.from_env({"NOTIFY_SOCKET": address or ""})

    def send(self, *fields: str) -> None:
        if self.notifier is not None:
            self.notifier.send(*fields)

    def ready(self, app: str, heartbeat: Callable[[float], None]) -> Callable[[], None] | None:
        """The app serves: READY=1, then the predecessor's; the heartbeat's cancel, if any."""
        cancel = None
        if self.notifier is not None:
            self.notifier.send("READY=1", f"STATUS=serving {app}", f"MAINPID={os.getpid()}")
            interval = watchdog_interval()
            if interval is not None:
                cancel = every(asyncio.get_running_loop(), interval, heartbeat)
        if self._predecessor is not None:
            # After MAINPID: a supervisor must know us before the predecessor exits.
            # The process that started us with its sockets drains once it hears this.
            with Notifier(self._predecessor) as predecessor:
                predecessor.send("READY=1")
        return cancel

    def stopping(self, reason: str) -> None:
        self.send("STOPPING=1", f"STATUS=stopping: {reason}")

    def failed(self, exc: BaseException) -> None:
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

    def watch_parent(self, gone: Callable[[], None]) -> None:
        """Call ``gone`` (from a thread) when the pipe from the master reaches end-of-file.

        A thread, not a loop reader, so that it works from the first moment:
        while the app is still being imported or starting up, the loop is busy.
        """
        if self._contract is None:
            return
        fd = self._contract.parent_fd

        def watch() -> None:
            with contextlib.suppress(OSError):
                while os.read(fd, 512):
                    pass
            gone()

        threading.Thread(target=watch, name="tether-parent-watch", daemon=True).start()

    def close(self) -> None:
        if self.notifier is not None:
            self.notifier.close()


def every(
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
