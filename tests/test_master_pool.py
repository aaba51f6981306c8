"""The master's pool and upgrader through a fake spawn seam: the policy, in milliseconds.

Children here are :class:`FakeChild`: an exit future the test resolves, and a
record of the signals sent. Notifications are handed to the pool as the
master's reader would. The real-process tests (``test_master*.py``) show the
same behaviour end to end.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any, cast

import pytest

from fakepool import FIRST_PID, FakeChild, FakeOS, ready, run, serving, settle, starting
from tether._children import Child
from tether.config import RunConfig
from tether.master.pool import Pool, PoolHooks
from tether.master.upgrade import Upgrader
from tether.notify import NotifyMessage


def test_a_reload_starts_its_workers_at_a_low_priority_until_ready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """First generation: untouched. A reload's workers: idle class, then niced, then normal.

    A worker not ready after STARTING_IDLE_FOR is raised to "low" (a saturated host must
    not hold a reload back for ever); READY gives it "normal"; one that exits first is
    never touched again.
    """
    monkeypatch.setattr("tether.master.priority.STARTING_IDLE_FOR", 0.05)
    calls: list[tuple[int, str]] = []

    async def scenario() -> None:
        fake = FakeOS()
        config = RunConfig(app="x:app", workers=2)
        raised = asyncio.Event()

        def prioritise(pid: int, level: str) -> None:
            calls.append((pid, level))
            if level == "low":
                raised.set()

        hooks = PoolHooks(prioritise=prioritise)
        pool = Pool(config, fake.spawn, hooks)
        serve = await serving(pool, fake)
        assert calls == []  # the first generation takes the CPU it needs
        outcome = pool.request("reload")
        await settle()
        quick, slow = fake.last(2)
        assert calls == [(quick.pid, "idle"), (slow.pid, "idle")]
        ready(pool, quick)
        assert calls[-1] == (quick.pid, "normal")
        await asyncio.wait_for(raised.wait(), 5)
        assert calls[-1] == (slow.pid, "low")  # still starting after STARTING_IDLE_FOR
        ready(pool, slow)
        assert (await outcome)["ok"] is True
        assert calls[-1] == (slow.pid, "normal")
        calls.clear()
        outcome = pool.request("reload")
        await settle()
        broken, other = fake.last(2)
        broken.exit(3)
        await outcome
        await other.exited  # the failed reload kills its sibling too
        await settle()
        assert not pool.priority.pending()  # neither will be raised later: their timers are gone
        assert calls == [(broken.pid, "idle"), (other.pid, "idle")]
        serve.cancel()
        await pool.close()

    run(scenario)


def test_a_heartbeat_waiting_in_the_socket_saves_the_worker() -> None:
    """The watchdog reads pending notifications first: a queued heartbeat re-arms it."""

    async def scenario() -> None:
        fake = FakeOS()
        pending: list[NotifyMessage] = []
        config = RunConfig(app="x:app", workers=1, watchdog_timeout=0.05)
        pool = Pool(config, fake.spawn, PoolHooks(pending=lambda: pending, prioritise=_no_priority))
        start = await starting(pool)
        (child,) = fake.children
        ready(pool, child)
        await start
        pending.append(NotifyMessage(child.pid, 0, {"WATCHDOG": "1"}))
        await asyncio.sleep(0.08)  # the timer fires; the heartbeat was only in the socket
        assert child.signals == []
        pending.clear()
        await asyncio.sleep(0.2)  # now silence for real
        assert signal.SIGUSR1 in child.signals
        await pool.close()

    run(scenario)


def _no_priority(pid: int, level: str) -> None:
    pass


def test_the_upgrader_hands_over_only_to_a_ready_new_master() -> None:
    """One wait: READY from the new master's pid → its pid; its exit first → why, and no pid."""

    async def scenario() -> None:
        started: list[FakeChild] = []

        def start(*_args: Any, **_kwargs: Any) -> tuple[Child, list[int]]:
            child = FakeChild(FIRST_PID + len(started))
            started.append(child)
            return cast(Child, child), []

        upgrader = Upgrader(argv=["x"], cwd="/", env={}, sockets=list, timeout=5, start=start)
        attempt = asyncio.ensure_future(upgrader.upgrade())
        await settle()
        started[0].exit(1)
        assert await attempt == (None, f"the new master (pid {FIRST_PID}) exited with code 1")
        attempt = asyncio.ensure_future(upgrader.upgrade())
        await settle()
        assert not upgrader.on_notification(NotifyMessage(42, 0, {"READY": "1"}))
        assert upgrader.on_notification(NotifyMessage(started[1].pid, 0, {"READY": "1"}))
        assert await attempt == (started[1].pid, "")
        await upgrader.close()

    run(scenario)


def test_the_masters_own_stall_kills_no_worker() -> None:
    """A watchdog timer that fires late (this loop was blocked) gives the worker a new period."""

    async def scenario() -> None:
        fake = FakeOS()
        config = RunConfig(app="x:app", workers=1, watchdog_timeout=0.05)
        pool = Pool(config, fake.spawn, PoolHooks(prioritise=_no_priority))
        start = await starting(pool)
        (child,) = fake.children
        ready(pool, child)
        await start
        time.sleep(1.2)  # the master itself does not run (the scenario, not a wait)
        await asyncio.sleep(0.01)  # the overdue timer fires now
        assert child.signals == []
        await asyncio.sleep(0.1)  # a whole period of real silence from the worker
        assert signal.SIGUSR1 in child.signals
        await pool.close()

    run(scenario)


def test_the_pool_tells_its_hooks_each_exit_restart_cause_and_reload() -> None:
    """What /metrics counts: a reload's outcome, every exit, restarts by cause (crash, watchdog)."""

    async def scenario() -> None:
        fake = FakeOS()
        exited: list[int] = []
        causes: list[str] = []
        reloads: list[dict[str, Any]] = []
        hooks = PoolHooks(
            prioritise=_no_priority,
            exited=lambda w: exited.append(w.pid),
            restarted=causes.append,
            reloaded=reloads.append,
        )
        pool = Pool(RunConfig(app="x:app", workers=1, watchdog_timeout=0.2), fake.spawn, hooks)
        serve = await serving(pool, fake)
        (first,) = fake.children
        outcome = pool.request("reload")
        await settle()
        (second,) = fake.last()
        ready(pool, second)
        assert (await outcome)["ok"]
        await settle()
        assert [r["generation"] for r in reloads] == [2] and reloads[0]["ok"]
        assert exited == [first.pid] and causes == []  # drained by the reload: no restart
        second.exit(1)  # a crash while serving
        await settle()
        (third,) = fake.last()
        assert causes == ["crash"] and exited == [first.pid, second.pid]
        ready(pool, third)  # then silent: the watchdog asks for stacks and kills it
        async with asyncio.timeout(10):
            await third.exited
        await settle()
        assert third.signals == [signal.SIGUSR1, signal.SIGKILL]
        assert causes == ["crash", "watchdog"] and exited[-1] == third.pid
        serve.cancel()
        await pool.close()

    run(scenario)
