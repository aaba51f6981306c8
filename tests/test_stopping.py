"""One process's stop (tether._stopping): one plan, the drain delay, the last-resort timer.

In this process, with a real Group and a recording ``hard_stop``; the same
stop seen from outside, in both process modes, is ``test_shutdown_plan.py``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from tether._stopping import ProcessStop
from tether.config import RunConfig
from tether.group import Group, StopToken
from tether.worker import write_stop_plan


async def serve(stop: StopToken) -> None:
    await stop


def test_the_plan_is_made_once_and_the_group_stops_at_its_deadline() -> None:
    """A second request reads the same plan; the group's deadline is the plan's."""

    async def main() -> None:
        config = RunConfig(app="x:app", graceful_timeout=5.0)
        group = Group(graceful_timeout=30.0)
        group.add(serve)
        begun: list[str] = []
        stopping = ProcessStop(config, group, on_begin=begun.append)
        stopping.request("first")
        plan = stopping.plan()
        stopping.request("second")
        assert stopping.plan() is plan and begun == ["first"] and stopping.requested
        loop = asyncio.get_running_loop()
        assert group.deadline is not None
        on_monotonic = group.deadline - loop.time() + time.monotonic()
        assert abs(on_monotonic - plan.deadline) < 0.01
        await group.wait()

    asyncio.run(main())


def test_the_drain_delay_runs_first_and_a_forced_stop_cuts_it_short() -> None:
    """With --drain-delay the group stops at its end; force stops it at once, on_force told."""

    async def main() -> None:
        config = RunConfig(app="x:app", graceful_timeout=5.0, drain_delay=0.2)
        events: list[str] = []
        group = Group()
        group.add(serve)
        stopping = ProcessStop(
            config,
            group,
            on_drain_delay=lambda: events.append("delay"),
            on_force=lambda: events.append("force"),
        )
        stopping.request("TERM")
        assert events == ["delay"] and not group.stopping
        reason = await asyncio.wait_for(group.wait_stopping(), 2.0)
        assert reason == "TERM"
        plan = stopping.plan()
        assert time.monotonic() >= plan.drain_delay_end
        await group.wait()

        forced = Group()
        forced.add(serve)
        again = ProcessStop(config, forced, on_force=lambda: events.append("force"))
        again.request("TERM")
        again.request("second TERM", force=True)
        assert forced.stopping and events[-1] == "force"
        await forced.wait()

    asyncio.run(main())


def test_a_stop_that_began_in_the_group_gets_its_plan_from_the_group() -> None:
    """A member's exit: under_way() ends at the group's deadline; begin_with_the_group begins it."""

    async def main() -> None:
        config = RunConfig(app="x:app", graceful_timeout=5.0)
        group = Group(graceful_timeout=2.0)
        group.add(serve)
        begun: list[str] = []
        stopping = ProcessStop(config, group, on_begin=begun.append)
        watcher = asyncio.ensure_future(stopping.begin_with_the_group())
        group.stop("member 'job' returned")
        await watcher
        plan = stopping.under_way()
        assert abs(plan.deadline - time.monotonic() - 2.0) < 0.1
        assert plan.deadline == group.monotonic_deadline  # the group's, not seconds left again
        assert begun == ["member 'job' returned"]
        await group.wait()

    asyncio.run(main())


def test_a_worker_keeps_the_deadline_its_master_wrote(tmp_path: Path) -> None:
    """TETHER_STOP_PLAN: the master's deadline, not a fresh budget from the worker's TERM."""
    path = str(tmp_path / "stop-plan")
    deadline = time.monotonic() + 1.5
    write_stop_plan(path, deadline)

    async def main() -> None:
        config = RunConfig(app="x:app", graceful_timeout=30.0)
        stopping = ProcessStop(config, Group(), stop_plan_path=path)
        plan = stopping.plan()
        assert abs(plan.deadline - deadline) < 1e-3 and plan.drain_delay_end == plan.begun

    asyncio.run(main())


def test_the_last_resort_fires_at_the_plans_hard_stop_and_disarm_removes_it() -> None:
    """hard_stop is called at plan.hard_stop; once disarmed, no timer thread is left."""
    fired = threading.Event()
    #: When the timer called: read in the callback, not when this thread wakes up later.
    called: list[float] = []

    def hard_stop() -> None:
        called.append(time.monotonic())
        fired.set()

    async def main() -> float:
        config = RunConfig(app="x:app", graceful_timeout=0.1, cancel_timeout=0.05)
        stopping = ProcessStop(config, Group(), hard_stop=hard_stop)
        stopping.begin("TERM")
        at = stopping.plan().hard_stop
        assert fired.wait(30.0)
        stopping.disarm()
        return called[0] - at

    late = asyncio.run(main())
    assert -0.05 < late < 1.0, late
    assert "tether-hard-stop" not in [t.name for t in threading.enumerate()]

    quiet = threading.Event()

    async def disarmed() -> None:
        config = RunConfig(app="x:app", graceful_timeout=0.1, cancel_timeout=0.05)
        stopping = ProcessStop(config, Group(), hard_stop=quiet.set)
        stopping.begin("TERM")
        stopping.disarm()

    asyncio.run(disarmed())
    assert not quiet.wait(1.5)
