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
stops, and looks again when the owner has reaped that one (:func:`disown`).

Driven by SIGCHLD on the event loop: nothing runs while no child exits.

Why by hand: ``prctl`` and a SIGCHLD reaper that leaves other waiters alone
are a few lines no maintained library offers (tini is a C program).
"""

from __future__ import annotations

import logging
import os
import signal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio

__all__ = ["Reaper", "disown", "own", "reap_orphans", "set_child_subreaper", "stop_with_parent"]

log = logging.getLogger("tether.reaper")

_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_PDEATHSIG = 1

#: Children whose owner reaps them itself (by pid, through a pidfd).
_owned: set[int] = set()
#: Whether a Reaper is installed: only then are orphans reaped at all.
_reaping = False


def own(pid: int) -> None:
    """Mark ``pid`` as a child this process waits for itself: the reaper leaves it alone."""
    _owned.add(pid)


def disown(pid: int) -> None:
    """``pid`` has been reaped by its owner, or nobody waits for it any more."""
    _owned.discard(pid)
    if _reaping:
        reap_orphans()  # orphans that exited meanwhile were hidden behind it


def set_child_subreaper() -> bool:
    """Make this process the reaper of its descendants' orphans; False if the OS refused."""
    import ctypes  # only a process that reaps (a master, PID 1) loads it

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning(
            "cannot become a child subreaper: %s", os.strerror(ctypes.get_errno())
        )  # pragma: no cover - Linux >= 3.4 always allows it
        return False
    return True


def stop_with_parent(signum: int) -> bool:
    """Have the kernel send ``signum`` to this process when its parent dies; False if refused.

    Linux only (``PR_SET_PDEATHSIG``): a fork clears it, an exec keeps it.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0)


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
            # Its owner reaps it soon and calls disown(), which looks again: until
            # then it hides any other exited child from P_ALL.
            return reaped
        reaped += _reap(info.si_pid) is not None


class Reaper:
    """Subreaper duty for the life of an event loop: reap unowned orphans on every SIGCHLD.

    Resource handling: :meth:`close` removes the SIGCHLD handler (the
    process stays a subreaper; orphans that arrive later are reaped when it exits).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        global _reaping
        self._loop = loop
        set_child_subreaper()
        loop.add_signal_handler(signal.SIGCHLD, reap_orphans)
        _reaping = True
        reap_orphans()  # any that came before the handler

    def close(self) -> None:
        """Stop reaping."""
        global _reaping
        _reaping = False
        self._loop.remove_signal_handler(signal.SIGCHLD)
