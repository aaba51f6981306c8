"""PID 1 in a container: a small init keeps PID 1 while the service runs as its child.

A container started without an init (``docker run IMAGE``, a Kubernetes pod
without ``shareProcessNamespace``) makes ``tether run`` PID 1 of its PID
namespace, and PID 1 has duties no other process has:

- when PID 1 exits, the kernel kills every process left in the namespace.
  A reload that hands the sockets to a successor and then exits (HUP with
  ``--workers 0``, USR2 for a master) would take the successor down with it;
- every orphan in the namespace becomes PID 1's child, and only PID 1 can
  reap it: zombies pile up otherwise;
- a signal for which PID 1 has no handler is dropped, not acted on.

So ``tether run`` started as PID 1 forks once, before anything is bound or
imported: the parent stays PID 1 as an init (what tini does), the child runs
the service exactly as it would anywhere else. The init

- passes on every signal it receives to the service's main process
  (``docker stop``, the kubelet and ``docker kill -s HUP`` signal PID 1);
- follows ``MAINPID=`` notifications as systemd does: the service's
  ``NOTIFY_SOCKET`` is the init's, so after a ``--workers 0`` reload or a
  master upgrade the successor becomes the main process and the init stays;
- reaps every other child: the only child it started is the service, so all
  the rest are orphans that nobody else waits for;
- exits with the main process's exit code (128 + N when signal N killed it,
  as a shell says) once the main process is gone without a successor.

The service runs in its own process group, made the terminal's foreground
group when there is a terminal (``docker run -it``), so Ctrl-C reaches it
once, from the terminal, and not a second time through the init.

Invariant: the init outlives every main process, and exits as soon as the
last one is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import struct
from collections.abc import Callable
from types import FrameType
from typing import Any

from tether.notify import parse_message

__all__ = ["become_init"]

log = logging.getLogger("tether.init")

_CREDS = struct.Struct("iII")
#: Signals that are about the init itself, never passed on.
_OWN = {
    signal.SIGCHLD,
    signal.SIGKILL,
    signal.SIGSTOP,
    signal.SIGPIPE,
    signal.SIGSEGV,
    signal.SIGBUS,
    signal.SIGFPE,
    signal.SIGILL,
    signal.SIGTRAP,
    signal.SIGSYS,
    signal.SIGABRT,
}
FORWARDED = tuple(s for s in signal.Signals if s not in _OWN)


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """The wakeup fd carries the signal; the handler only has to exist (PID 1 drops the rest)."""


def become_init() -> int | None:
    """In PID 1: fork; return the service's exit code in the init, None in the service."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"@tether-init-{os.urandom(8).hex()}"
    notify.bind(b"\0" + name[1:].encode())
    notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    notify.setblocking(False)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    upstream = os.environ.get("NOTIFY_SOCKET")
    # Sockets passed to PID 1 (socket activation) are meant for the service.
    count = os.environ.get("LISTEN_FDS", "")
    passed = int(count) if count.isdigit() and os.environ.get("LISTEN_PID") == "1" else 0
    handled = (*FORWARDED, signal.SIGCHLD)
    signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    pid = os.fork()
    if pid == 0:  # the service
        notify.close()
        os.close(wake_r)
        os.close(wake_w)
        os.environ["NOTIFY_SOCKET"] = name
        if passed:
            os.environ["LISTEN_PID"] = str(os.getpid())
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
        _take_terminal()
        return None
    os.closerange(3, 3 + passed)  # only the service holds them: its close is final
    previous: dict[int, Any] = {s: signal.signal(s, _ignore) for s in handled}
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
    try:
        return _Init(pid, notify, wake_r, upstream).serve()
    finally:
        signal.set_wakeup_fd(-1)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        notify.close()
        os.close(wake_r)
        os.close(wake_w)


def _take_terminal() -> None:
    """Own process group; the terminal's foreground one if there is a terminal."""
    os.setpgid(0, 0)
    if os.isatty(0):
        # Changing the foreground group from a background one raises SIGTTOU.
        previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        with contextlib.suppress(OSError):
            os.tcsetpgrp(0, os.getpgrp())
        signal.signal(signal.SIGTTOU, previous)


class _Init:
    """The init's loop: signals in, notifications in, children reaped."""

    def __init__(self, main: int, notify: socket.socket, wake: int, upstream: str | None) -> None:
        self.main = main
        self.notify = notify
        self.wake = wake
        self.upstream = upstream
        self.exit_code: int | None = None

    def serve(self) -> int:
        with selectors.DefaultSelector() as selector:
            selector.register(self.wake, selectors.EVENT_READ, self._on_signals)
            selector.register(self.notify, selectors.EVENT_READ, self._on_notifications)
            while self.exit_code is None:
                for key, _events in selector.select():
                    callback: Callable[[], None] = key.data
                    callback()
        return self.exit_code

    def _on_signals(self) -> None:
        try:
            received = os.read(self.wake, 512)
        except BlockingIOError:
            return
        for signum in received:
            if signum == signal.SIGCHLD:
                self._reap()
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.main, signum)

    def _on_notifications(self) -> None:
        space = socket.CMSG_SPACE(_CREDS.size) + socket.CMSG_SPACE(253 * 4)
        while True:
            try:
                data, ancdata, _flags, _addr = self.notify.recvmsg(4096, space)
            except (BlockingIOError, InterruptedError):
                return
            sender = 0
            for level, kind, blob in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    sender = _CREDS.unpack(blob[: _CREDS.size])[0]
                elif level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    for fd in struct.unpack(f"{len(blob) // 4}i", blob[: len(blob) // 4 * 4]):
                        with contextlib.suppress(OSError):
                            os.close(fd)
            mainpid = parse_message(data).get("MAINPID", "")
            # As systemd's NotifyAccess: the main process names its successor, or a
            # successor started by it announces itself.
            if mainpid.isdigit() and sender in (self.main, int(mainpid)):
                if int(mainpid) != self.main:
                    log.info("init: pid %s is now the main process (was %d)", mainpid, self.main)
                self.main = int(mainpid)
            if self.upstream:
                self._pass_up(data)

    def _pass_up(self, data: bytes) -> None:
        assert self.upstream is not None
        address = self.upstream
        target: str | bytes = b"\0" + address[1:].encode() if address[0] == "@" else address
        with (
            contextlib.suppress(OSError),
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as up,
        ):
            up.sendto(data, target)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid, status = 0, 0
            if pid == 0:
                return
            if pid != self.main:
                continue  # an orphan, or a main process that named its successor
            # A successor may have been named just before this exit: read it first.
            self._on_notifications()
            if pid == self.main:
                code = os.waitstatus_to_exitcode(status)
                self.exit_code = code if code >= 0 else 128 - code
                return
