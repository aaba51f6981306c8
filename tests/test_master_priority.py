"""A reload's starting priority (tether.master.priority), through its one seam, ``prioritise``.

The pool's use of it (which workers start low, and when they are raised) is in
``test_master_pool.py``; here the bookkeeping alone, with a recording seam, and
``set_priority`` on a real process of our own.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from tether.master import priority
from tether.master.priority import Priority, StartingPriority, set_priority


def test_a_worker_started_low_is_raised_after_a_while_then_restored() -> None:
    """idle at once, low after STARTING_IDLE_FOR, normal on restore; nothing pending after."""
    calls: list[tuple[int, Priority]] = []

    async def scenario() -> None:
        raised = asyncio.Event()

        def record(pid: int, level: Priority) -> None:
            calls.append((pid, level))
            if level == "low":
                raised.set()

        starting = StartingPriority(record)
        starting.start_low(7)
        assert calls == [(7, "idle")] and starting.pending() == [7]
        await asyncio.wait_for(raised.wait(), 5)
        starting.restore(7)
        assert calls == [(7, "idle"), (7, "low"), (7, "normal")]
        assert starting.pending() == []

    original = priority.STARTING_IDLE_FOR
    priority.STARTING_IDLE_FOR = 0.01
    try:
        asyncio.run(scenario())
    finally:
        priority.STARTING_IDLE_FOR = original


def test_a_worker_that_exits_while_low_is_never_touched_again() -> None:
    """forget() cancels the raise: no "low" and no "normal" for a pid that is gone."""
    calls: list[tuple[int, Priority]] = []

    async def scenario() -> None:
        starting = StartingPriority(lambda pid, level: calls.append((pid, level)))
        starting.start_low(8)
        assert starting.forget(8) is True
        assert starting.forget(8) is False  # once forgotten, there is nothing left to cancel
        starting.restore(8)
        await asyncio.sleep(priority.STARTING_IDLE_FOR / 20)
        assert calls == [(8, "idle")] and starting.pending() == []

    asyncio.run(scenario())


def test_restore_leaves_a_worker_that_was_never_started_low_alone() -> None:
    """The first generation's workers, and replacements, are never reprioritised."""
    calls: list[tuple[int, Priority]] = []
    StartingPriority(lambda pid, level: calls.append((pid, level))).restore(9)
    assert calls == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may lower and raise priorities back")
def test_set_priority_lowers_and_restores_every_thread_of_a_real_process() -> None:
    """A child of ours goes to SCHED_IDLE, then niceness 10, then back to normal, nice 0."""
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=-1)
    try:
        set_priority(child.pid, "idle")
        assert os.sched_getscheduler(child.pid) == os.SCHED_IDLE
        set_priority(child.pid, "low")
        assert os.sched_getscheduler(child.pid) == os.SCHED_OTHER
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == priority.STARTING_NICENESS
        set_priority(child.pid, "normal")
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == 0
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(10)
