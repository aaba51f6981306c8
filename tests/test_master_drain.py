"""Stopping the workers (tether.master.drain): by the plan's absolute deadline, then SIGKILL.

Through the fake spawn seam (``fakepool``), in milliseconds; ``test_shutdown_plan.py``
checks the same plan on a real master.
"""

from __future__ import annotations

import asyncio
import signal
import time

import pytest

from fakepool import FakeOS, make_pool, ready, run, serving, settle, starting
from tether.config import RunConfig, ShutdownBudget, ShutdownPlan
from tether.errors import ShutdownAbandoned
from tether.master.drain import judge
from tether.master.pool import Pool, PoolHooks
from tether.master.workers import WorkersFailed


def _no_priority(pid: int, level: str) -> None:
    """The fake pids are never reprioritised."""


def test_a_stop_during_the_first_start_drains_the_worker_already_ready() -> None:
    """Stopped while worker 1 is READY and worker 2 starts: both get TERM, none SIGKILL."""

    async def scenario() -> None:
        fake = FakeOS()
        pool = make_pool(fake)
        start = await starting(pool)
        first, second = fake.children
        ready(pool, first)
        await settle()
        start.cancel()
        with pytest.raises(asyncio.CancelledError):
            await start
        assert first.signals == [] and second.signals == []
        await pool.stop_workers(fast=False)
        assert first.signals == [signal.SIGTERM] and second.signals == [signal.SIGTERM]
        await pool.close()

    run(scenario)


def test_a_stop_during_a_reload_drains_the_new_workers_already_ready() -> None:
    """Stopped mid-reload with one new worker READY: it drains (TERM); none is killed."""

    async def scenario() -> None:
        fake = FakeOS()
        pool = make_pool(fake)
        serve = await serving(pool, fake)
        pool.request("reload")
        await settle()
        new_first, _starting = fake.last(2)
        ready(pool, new_first)
        await settle()
        serve.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serve
        await pool.stop_workers(fast=False)
        assert all(child.signals == [signal.SIGTERM] for child in fake.children)
        assert pool.active is not None and pool.active.number == 1
        await pool.close()

    run(scenario)


def test_a_stop_with_a_stuck_worker_reports_it_abandoned() -> None:
    """A worker that ignores TERM past the budget is killed and named in ShutdownAbandoned."""

    async def scenario() -> None:
        fake = FakeOS()
        fake.stubborn = True
        config = RunConfig(app="x:app", workers=1, graceful_timeout=0.0, cancel_timeout=0.0)
        pool = Pool(config, fake.spawn, PoolHooks(prioritise=_no_priority))
        start = await starting(pool)
        ready(pool, *fake.children)
        await start
        with pytest.raises(ShutdownAbandoned) as info:
            await pool.stop_workers(fast=False)
        assert info.value.items[0].detail == "killed at the deadline"
        assert fake.children[0].signals == [signal.SIGTERM, signal.SIGKILL]
        await pool.close()

    run(scenario)


def test_the_workers_are_killed_at_the_plans_deadline_not_a_fresh_budget() -> None:
    """A plan made earlier, its master_kill near: a stuck worker is killed then, not 30 s on."""

    async def scenario() -> None:
        fake = FakeOS()
        fake.stubborn = True
        config = RunConfig(app="x:app", workers=1, graceful_timeout=30.0)
        pool = Pool(config, fake.spawn, PoolHooks(prioritise=_no_priority))
        start = await starting(pool)
        ready(pool, *fake.children)
        await start
        began = time.monotonic()
        budget = ShutdownBudget.of(config)
        # Begun 30 s ago (the drain delay and the drain took it): 0.3 s left to kill.
        deadline = began + 0.3 - budget.master_kill
        plan = ShutdownPlan(began - 30.0, began - 30.0, deadline, budget)
        with pytest.raises(ShutdownAbandoned) as info:
            await pool.stop_workers(fast=False, plan=plan)
        took = time.monotonic() - began
        assert 0.2 <= took < 2.0, took
        assert [i.detail for i in info.value.items] == ["killed at the deadline"]
        assert fake.children[0].signals == [signal.SIGTERM, signal.SIGKILL]
        await pool.close()

    run(scenario)


def test_a_second_stop_signal_cuts_the_wait_to_a_stop_that_ends_now() -> None:
    """escalate(): QUIT to the workers; the wait ends at master_kill from now, not the plan's."""

    async def scenario() -> None:
        fake = FakeOS()
        fake.stubborn = True
        config = RunConfig(app="x:app", workers=1, graceful_timeout=30.0, cancel_timeout=0.0)
        pool = Pool(config, fake.spawn, PoolHooks(prioritise=_no_priority))
        start = await starting(pool)
        ready(pool, *fake.children)
        await start
        stopping = asyncio.ensure_future(pool.stop_workers(fast=False))
        await settle()
        pool.escalate()
        escalated = time.monotonic()
        with pytest.raises(ShutdownAbandoned):
            await stopping
        cut = ShutdownPlan.until(config, escalated).master_kill - escalated
        assert time.monotonic() - escalated < cut + 1.0
        assert fake.children[0].signals == [signal.SIGTERM, signal.SIGQUIT, signal.SIGKILL]
        await pool.close()

    run(scenario)


def test_judge_names_what_served_workers_lost_and_ignores_those_still_starting() -> None:
    """Exit 4 is abandoned work, a kill is "killed at the deadline", exit 1 a failure."""

    async def scenario() -> None:
        fake = FakeOS()
        pool = make_pool(fake, workers=3)
        start = await starting(pool)
        ready(pool, *fake.children)
        await start
        gen = pool.active
        assert gen is not None
        lost, killed, failed = (gen.slots[i] for i in range(3))
        fake.children[0].exit(4)
        fake.children[1].exit(-9)
        fake.children[2].exit(1)
        await settle()
        with pytest.raises(ShutdownAbandoned) as info:
            judge([lost, killed, failed], [killed])
        assert [(i.name, i.detail) for i in info.value.items] == [
            (killed.label, "killed at the deadline"),
            (lost.label, "abandoned work at its deadline"),
        ]
        with pytest.raises(WorkersFailed, match=r"worker\(s\) failed while stopping: worker 3 "):
            judge([failed], [])
        judge([], [killed])  # a worker still starting had nothing to lose
        await pool.close()

    run(scenario)
