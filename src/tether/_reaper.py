"""Reap orphans without stealing anyone's exit status (a master is a child subreaper).

When a process dies, its children are re-parented to the nearest ancestor
that asked to be a *child subreaper* (``PR_SET_CHILD_SUBREAPER``), or to
PID 1. A master marks itself so: an app whose library double-forks leaves
its orphans with the master, which reaps them, instead of with whatever
init the host (or container) has, which may never reap them.

Invariant: a zombie is reaped here only if nobody owns it. Children that
this process started and waits for itself (its workers, an upgraded master,
registered with :func:`own` by :class:`tether._children.Child`) keep their
exit status for their owner. The reaper *peeks* with
``waitid(P_ALL, WNOWAIT)`` first and reaps only pids it does not know; when
the zombie it peeks at is owned, which hides the others from ``P_ALL``, it
looks at each zombie child in ``/proc`` instead.

Driven by SIGCHLD on the event loop: nothing runs while no child exits.

Why by hand: ``prctl`` and a SIGCHLD reaper that leaves other waiters alone
are a few lines no maintained library offers (tini is a C program).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
from collections.abc import Iterator

__all__ = ["Reaper", "disown", "own", "reap_orphans", "set_child_subreaper"]

log = logging.getLogger("tether.reaper")

_PR_SET_CHILD_SUBREAPER = 36

#: Children whose owner reaps them itself (by pid, through a pidfd).
_owned: set[int] = set()


def own(pid: int) -> None:
    """Mark ``pid`` as a child this process waits for itself: the reaper leaves it alone."""
    _owned.add(pid)


def disown(pid: int) -> None:
    """``pid`` has been reaped by its owner (or handed on)."""
    _owned.discard(pid)


def set_child_subreaper() -> bool:
    """Make this process the reaper of its descendants' orphans; False if the OS refused."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning(
            "cannot become a child subreaper: %s", os.strerror(ctypes.get_errno())
        )  # pragma: no cover - Linux >= 3.4 always allows it
        return False
    return True


def _reap(pid: int) -> int | None:
    """Reap one exited child; its exit code, or None if someone else reaped it first."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG)
    except ChildProcessError:
        return None
    if info is None:
        return None
    code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
    log.debug("reaped orphan %d (%s)", pid, code)
    return code


def _zombie_children() -> Iterator[int]:
    """This process's children that have exited and are not reaped yet, from /proc."""
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and fields[0] == b"Z" and int(fields[1]) == me:
            yield int(name)


def reap_orphans() -> int:
    """Reap every exited child nobody owns; return how many were reaped."""
    reaped = 0
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return reaped  # no children at all
        if info is None:
            return reaped  # children, none exited
        if info.si_pid in _owned:
            break  # its owner reaps it; it hides the others from P_ALL
        reaped += _reap(info.si_pid) is not None
    for pid in _zombie_children():
        if pid not in _owned:
            reaped += _reap(pid) is not None
    return reaped


class Reaper:
    """Subreaper duty for the life of an event loop: reap unowned orphans on every SIGCHLD.

    Resource handling: :meth:`close` removes the SIGCHLD handler (the
    process stays a subreaper; orphans that arrive later are reaped when it exits).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        set_child_subreaper()
        loop.add_signal_handler(signal.SIGCHLD, reap_orphans)
        reap_orphans()  # any that came before the handler

    def close(self) -> None:
        """Stop reaping."""
        self._loop.remove_signal_handler(signal.SIGCHLD)
