"""The CPU priority of a reload's workers while they start.

Importing and starting an app is CPU-heavy and must not take CPU from the
generation that serves. A worker of a new generation starts under SCHED_IDLE
(it gets only CPU that nobody else wants); if it is still not READY after
:data:`STARTING_IDLE_FOR` seconds (a saturated host), it is raised to niceness
:data:`STARTING_NICENESS`, so that a reload always finishes; READY gives it the
normal priority back. Only where the master may undo it (root).

Invariant: no worker keeps a low priority once it serves. Every worker started
low is either given ``normal`` (READY, or asked for its stacks, which it writes
from its event loop) or forgotten with its timer cancelled (it exited); a
worker of the first generation, or a replacement in a serving one, is never
touched.

Resource handling: one timer per worker started low, cancelled when the worker
is raised or forgotten; :meth:`StartingPriority.pending` says which remain.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Literal

__all__ = ["STARTING_IDLE_FOR", "STARTING_NICENESS", "Priority", "StartingPriority", "set_priority"]

#: Seconds a reload's worker runs under SCHED_IDLE before it is raised to STARTING_NICENESS.
STARTING_IDLE_FOR = 2.0
STARTING_NICENESS = 10
#: "idle": SCHED_IDLE; "low": SCHED_OTHER at STARTING_NICENESS; "normal": SCHED_OTHER at 0.
Priority = Literal["idle", "low", "normal"]
#: Sets the CPU priority of every thread of a pid (the seam: a fake pool has no real pids).
Prioritise = Callable[[int, Priority], None]


class StartingPriority:
    """The workers started at a reload's low priority, and when each is raised."""

    def __init__(self, prioritise: Prioritise) -> None:
        self._prioritise = prioritise
        self._raise_later: dict[int, asyncio.TimerHandle] = {}

    def start_low(self, pid: int) -> None:
        """``pid`` starts beside a serving generation: idle now, ``low`` if it takes long."""
        self._prioritise(pid, "idle")
        self._raise_later[pid] = asyncio.get_running_loop().call_later(
            STARTING_IDLE_FOR, self._prioritise, pid, "low"
        )

    def forget(self, pid: int) -> bool:
        """Whether ``pid`` was started low; its pending raise is cancelled either way."""
        timer = self._raise_later.pop(pid, None)
        if timer is None:
            return False
        timer.cancel()
        return True

    def restore(self, pid: int) -> None:
        """A worker started low gets the normal priority back (READY, or asked for stacks)."""
        if self.forget(pid):
            self._prioritise(pid, "normal")

    def pending(self) -> list[int]:
        """The pids still starting low, whose raise is still to come."""
        return list(self._raise_later)


def set_priority(pid: int, level: Priority) -> None:
    """Give every thread of ``pid`` the CPU priority ``level``; only as root (see above)."""
    if os.geteuid() != 0:
        return
    policy = os.SCHED_IDLE if level == "idle" else os.SCHED_OTHER
    niceness = STARTING_NICENESS if level == "low" else 0
    try:
        threads = [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return  # already gone
    for tid in threads:  # policy and niceness are per thread on Linux
        with contextlib.suppress(OSError):
            os.sched_setscheduler(tid, policy, os.sched_param(0))
            os.setpriority(os.PRIO_PROCESS, tid, niceness)
