"""The pid your parent started stays the service's pid for its whole life.

Whatever started ``tether run`` watches the pid it started: an init as PID 1
(``docker run --init``, tini, dumb-init), a shell, ``docker run`` itself, a
supervisor. When that process exits, the watcher takes the service for gone:
an init exits and the kernel kills everything left in the container. Yet
three things hand the service over to a successor process and let the old
one exit: a ``--workers 0`` reload (HUP, USR2, ``--reload``), ``--workers 0
--max-requests`` recycling, and a master's upgrade (USR2). Only a supervisor
that reads ``MAINPID=`` from ``NOTIFY_SOCKET`` (systemd, ``Type=notify``)
follows the service to its successor.

The rule, then: unless a ``NOTIFY_SOCKET`` says a supervisor follows
``MAINPID=``, ``tether run`` forks once, before it binds or imports
anything; the parent keeps the pid as a small *keeper* and the child runs
the service exactly as it would under systemd, with the keeper's own
``NOTIFY_SOCKET``. The keeper

- is a child subreaper (PID 1 is one by nature): when a process hands over
  and exits, its successor becomes the keeper's child, and so does every
  orphan the app leaves behind;
- passes on every signal it receives to the service's main process (TERM,
  INT, HUP, USR2, USR1, TTIN, TTOU...: each means what it means);
- follows ``MAINPID=`` as systemd does: the main process names its
  successor, or a successor that the main process started announces itself;
- reaps every other child: they are orphans that nobody else waits for;
- exits with the main process's exit code (128 + N when signal N killed it,
  as a shell says) once the main process is gone without a successor.

A master's workers never hand over (their master replaces them), so a worker
never forks a keeper.

As PID 1 (a container without an init) the keeper is also the container's
init: when PID 1 exits the kernel kills the namespace, every orphan in it
comes to PID 1, and a signal PID 1 has no handler for is dropped.

The service runs in its own process group, so a signal an init sends to the
keeper's group (dumb-init does) reaches it once, through the keeper. When the
keeper holds the terminal's foreground (``docker run -it``, a shell), the
service's group takes it, so Ctrl-C reaches the service once, from the
terminal; Ctrl-Z stops the keeper too, so the shell sees its job stopped, and
``fg`` gives the terminal back to the service.

Invariant: the keeper outlives every main process, and exits as soon as the
last one is gone. If the keeper itself is killed outright (SIGKILL), the
process it started hears SIGTERM from the kernel and stops as it would on a
TERM; a successor that a handover started is not covered (it is not the
keeper's own child when it starts).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import struct
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from tether.notify import KEEPER_LOGGING, KEEPER_PREFIX, parse_message

__all__ = ["become_init"]

log = logging.getLogger("tether.init")

_CREDS = struct.Struct("iII")
#: Signals that are about the keeper itself, never passed on.
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


#: Whether this process has forked its keeper, or tried: the service never forks another.
_tried = False


def become_init() -> int | None:
    """Fork a keeper (the module docstring): the service's exit code in it, None in the service.

    Error handling: if this process cannot become a child subreaper (a kernel
    older than 3.4), it says so in one line and returns None at once: the
    service runs in this process, and a handover ends the pid its parent watches.
    """
    global _tried
    if _tried:
        return None  # tried already (tether._entry), and this process is the service
    _tried = True
    pid1 = os.getpid() == 1
    if not pid1:
        from tether._reaper import set_child_subreaper

        if not set_child_subreaper():
            log.warning(
                "cannot keep this pid for the service (no child subreaper): a reload of "
                "--workers 0, --max-requests or an upgrade (USR2) will end pid %d",
                os.getpid(),
            )
            return None
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"{KEEPER_PREFIX}{os.urandom(8).hex()}"
    notify.bind(b"\0" + name[1:].encode())
    notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    notify.setblocking(False)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    upstream = os.environ.get("NOTIFY_SOCKET")
    # Sockets passed to this process (socket activation) are meant for the service.
    count = os.environ.get("LISTEN_FDS", "")
    passed = count.isdigit() and os.environ.get("LISTEN_PID") == str(os.getpid())
    terminal = _foreground()
    handled = (*FORWARDED, signal.SIGCHLD)
    signal.pthread_sigmask(signal.SIG_BLOCK, handled)
    keeper = os.getpid()
    pid = os.fork()
    if pid == 0:  # the service
        # A keeper killed outright (`kill -9` of the pid a user started) must not
        # leave the service running with nobody holding its pid: it stops too.
        from tether._reaper import stop_with_parent

        stop_with_parent(signal.SIGTERM)
        if os.getppid() != keeper:  # gone before the line above took effect
            os._exit(128 + signal.SIGTERM)
        notify.close()
        os.close(wake_r)
        os.close(wake_w)
        os.environ["NOTIFY_SOCKET"] = name
        if passed:
            os.environ["LISTEN_PID"] = str(os.getpid())
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
        _own_group(take_terminal=terminal or pid1)
        return None
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)  # as the child does: whichever runs first, signals find the group
    if passed:
        os.closerange(3, 3 + int(count))  # only the service holds them: its close is final
    previous: dict[int, Any] = {s: signal.signal(s, _ignore) for s in handled}
    from tether._startgc import release

    release()  # the keeper has no start to hurry (tether._startgc)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)
    try:
        # PID 1 has no job control to take part in: a shell never waits for it.
        return _Init(pid, notify, wake_r, upstream, job_control=terminal and not pid1).serve()
    finally:
        signal.set_wakeup_fd(-1)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        notify.close()
        os.close(wake_r)
        os.close(wake_w)


def _log_like_the_service(setup: str) -> None:
    """Set up this keeper's logging as its service did (it forked before the options were read)."""
    import json

    from tether.logs import setup_logging

    try:
        level, log_format, config, app_dir = json.loads(setup)
        if config and app_dir not in sys.path:
            sys.path.insert(0, app_dir)  # a --log-config may name the app's own handlers
        setup_logging(level, log_format, config or None)
    except Exception as exc:  # the keeper keeps going with the logging it has
        log.warning("keeper: cannot set up logging as the service did: %s", exc)


def _foreground() -> bool:
    """Whether this process's group holds the foreground of a terminal on stdin."""
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


def _own_group(*, take_terminal: bool) -> None:
    """Own process group; the terminal's foreground one if the keeper held it."""
    with contextlib.suppress(OSError):  # the keeper may have made it already
        os.setpgid(0, 0)
    if take_terminal and os.isatty(0):
        _give_terminal(os.getpgrp())


def _give_terminal(group: int) -> None:
    # Changing the foreground group from a background one raises SIGTTOU.
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.tcsetpgrp(0, group)
    signal.signal(signal.SIGTTOU, previous)


def _parent_of(pid: int) -> int:
    """``pid``'s parent, or 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return 0
    return int(stat[stat.rfind(b")") + 2 :].split()[1])


class _Init:
    """The keeper's loop: signals in, notifications in, children reaped."""

    def __init__(
        self,
        main: int,
        notify: socket.socket,
        wake: int,
        upstream: str | None,
        *,
        job_control: bool = False,
    ) -> None:
        self.main = main
        #: The service's process group: the first main process's pid (successors join it).
        self.group = main
        self.notify = notify
        self.wake = wake
        self.upstream = upstream
        self.job_control = job_control
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
            fields = parse_message(data)
            if KEEPER_LOGGING in fields:
                if sender == self.main:
                    _log_like_the_service(fields[KEEPER_LOGGING])
                continue  # the keeper's own business, not a supervisor's
            mainpid = fields.get("MAINPID", "")
            if mainpid.isdigit() and self._may_name(sender, int(mainpid)):
                if int(mainpid) != self.main:
                    log.info("keeper: pid %s is now the main process (was %d)", mainpid, self.main)
                self.main = int(mainpid)
            if self.upstream:
                self._pass_up(data)

    def _may_name(self, sender: int, mainpid: int) -> bool:
        """As systemd's NotifyAccess: the main process names its successor, or a successor
        the main process started announces itself (it may have been handed to us already).
        """
        if sender == self.main:
            return True
        return sender == mainpid and _parent_of(mainpid) in (self.main, os.getpid())

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
        flags = os.WNOHANG | (os.WUNTRACED if self.job_control else 0)
        while True:
            try:
                pid, status = os.waitpid(-1, flags)
            except ChildProcessError:
                pid, status = 0, 0
            if pid == 0:
                return
            if os.WIFSTOPPED(status):
                if pid == self.main:
                    self._stopped()
                continue
            if pid != self.main:
                continue  # an orphan, or a main process that named its successor
            # A successor may have been named just before this exit: read it first.
            self._on_notifications()
            if pid == self.main:
                code = os.waitstatus_to_exitcode(status)
                self.exit_code = code if code >= 0 else 128 - code
                return

    def _stopped(self) -> None:
        """Ctrl-Z stopped the service: stop too, so the shell sees its job stopped.

        When the shell continues the job (``fg``, ``bg``), it continues this
        process: the service's group continues with it and, if the shell gave
        the terminal back to this group (``fg``), gets the terminal again.
        """
        os.kill(os.getpid(), signal.SIGSTOP)
        if _foreground():
            _give_terminal(self.group)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.group, signal.SIGCONT)
