"""Upgrade the master itself (USR2, ``tether ctl upgrade``): hand every socket to a new master.

In the shape of tableflip's upgrader: one object, one wait. The new master
is started from this one's command line, in the logical working directory
(a deploy that switched a ``current`` symlink is picked up), with every
listening socket (app, debug, control) by ``LISTEN_FDS``. It counts as a new
generation: it starts its own workers and says ``READY=1`` (with its
``MAINPID``) to this master's notify socket once they serve. Then this master
hands over (systemd learns the new ``MAINPID``) and drains its workers.

Invariant: at most one new master is starting. One wait decides: its READY,
its exit, or ``--reload-timeout``; on exit or timeout it is killed (its
workers see their parent's pipe close and stop) and this master serves on.

Resource handling: the new master is watched through a pidfd until it is
READY or gone; once handed over, it lives on without us.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Sequence

from tether._children import Child, describe_exit, start_child
from tether._waits import first
from tether.notify import NotifyMessage
from tether.worker import UpgradeContract

__all__ = ["Upgrader", "upgrade_env"]

log = logging.getLogger("tether.master")

#: How to start the new master (the seam a test replaces).
StartChild = Callable[..., tuple[Child, list[int]]]


class Upgrader:
    """Starts a new master and waits for it; see the module docstring."""

    def __init__(
        self,
        *,
        argv: Sequence[str],
        cwd: str,
        env: dict[str, str],
        sockets: Callable[[], list[tuple[str, socket.socket]]],
        timeout: float,
        start: StartChild = start_child,
    ) -> None:
        self._argv = list(argv)
        self._cwd = cwd
        self._env = env
        self._sockets = sockets
        self._timeout = timeout
        self._start = start
        self.successor: Child | None = None
        self._ready = asyncio.Event()

    def on_notification(self, message: NotifyMessage) -> bool:
        """True if ``message`` came from the new master (and was taken)."""
        if self.successor is None or message.pid != self.successor.pid:
            return False
        if message.fields.get("READY") == "1":
            self._ready.set()
        return True

    async def upgrade(self) -> tuple[int | None, str]:
        """Start the new master and wait for it: (its pid, "") once READY, else (None, why)."""
        self._ready.clear()
        try:
            child, _ = self._start(
                self._argv,
                name="new master",
                env=self._env,
                sockets=self._sockets(),
                capture_stderr=False,
                cwd=self._cwd,
            )
        except OSError as exc:
            return None, f"cannot start a new master: {exc}"
        self.successor = child
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout):
                await first(self._ready.wait(), child.exited)
        if self._ready.is_set():
            child.close()  # it lives on without us
            return child.pid, ""
        why = (
            describe_exit(child.exited.result())
            if child.exited.done()
            else f"was not READY within --reload-timeout {self._timeout:g}s"
        )
        child.kill()  # its workers see end-of-file on its pipe and stop
        await child.wait(5)
        child.close()
        self.successor = None
        return None, f"the new master (pid {child.pid}) {why}"

    async def close(self) -> None:
        """Kill a new master that is still starting (this one is going away first)."""
        child, self.successor = self.successor, None
        if child is not None and child.alive and not self._ready.is_set():
            child.kill()
            await child.wait(5)
            child.close()


def upgrade_env(
    environ: dict[str, str], *, pid: int, notify_path: str, systemd_address: str | None
) -> dict[str, str]:
    """The new master's environment: ours, plus where to report and who it replaces."""
    return UpgradeContract(pid, notify_path, systemd_address).environ(environ)
