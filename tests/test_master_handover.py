"""Starting a generation and reloading (tether.master.handover): READY first, or the old serves.

Through the fake spawn seam (``fakepool``), in milliseconds; ``test_master.py`` and
``test_master_faults.py`` reload real masters.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from fakepool import FakeOS, make_pool, ready, run, say, serving, settle, starting
from tether.config import RunConfig
from tether.errors import StartupError
from tether.master.pool import Pool, PoolHooks


def test_a_generation_is_promoted_once_every_worker_is_ready() -> None:
    """start() returns when both workers said READY; the pool then serves generation 1."""

    async def scenario() -> None:
        fake = FakeOS()
        pool = make_pool(fake)
        start = await starting(pool)
        ready(pool, fake.children[0])
        await settle()
        assert not start.done() and not pool.is_ready()
        ready(pool, fake.children[1])
        await start
        assert pool.is_ready() and pool.status_line() == "generation 1 serving with 2 worker(s)"
        await pool.close()

    run(scenario)


def test_a_first_generation_that_never_serves_is_a_startup_error() -> None:
    """A worker exiting before READY while none serves: StartupError, the rest killed."""

    async def scenario() -> None:
        fake = FakeOS()
        pool = make_pool(fake)
        start = await starting(pool)
        first, second = fake.children
        say(pool, first, STATUS="failed: cannot import 'app'")
        first.exit(3)
        with pytest.raises(StartupError) as info:
            await start
        assert str(info.value).endswith("exited with code 3 before READY")
        assert second.signals == [signal.SIGKILL]
        await pool.close()

    run(scenario)


def test_a_failed_reload_keeps_the_old_generation() -> None:
    """A new worker exiting before READY fails the reload, with its own reason; gen 1 serves."""

    async def scenario() -> None:
        fake = FakeOS()
        pool = make_pool(fake)
        serve = await serving(pool, fake)
        outcome = pool.request("reload")
        await settle()
        new_first, new_second = fake.last(2)
        say(pool, new_first, STATUS="failed: importing 'app' raised SyntaxError")
        new_first.exit(3)
        result = await outcome
        assert result["ok"] is False
        assert "exited with code 3 before READY" in result["error"]
        assert "SyntaxError" in result["error"]
        assert new_second.signals == [signal.SIGKILL]
        assert pool.active is not None and pool.active.number == 1
        assert pool.reloads_failed == 1
        serve.cancel()
        await pool.close()

    run(scenario)


def test_a_laggard_gets_its_priority_back_before_it_is_asked_for_its_stacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reload that times out: the worker not READY is raised to normal, then sent USR1.

    Its task dump is written from its own event loop; at the idle priority of a starting
    worker on a busy host it would be killed before it got the CPU to write it.
    """
    monkeypatch.setattr("tether.master.handover.STACKS_GRACE", 0.01)
    events: list[tuple[int, str]] = []

    async def scenario() -> None:
        fake = FakeOS()
        config = RunConfig(app="x:app", workers=2, reload_timeout=0.05)

        def prioritise(pid: int, level: str) -> None:
            child = next(c for c in fake.children if c.pid == pid)
            asked = signal.SIGUSR1 in child.signals
            events.append((pid, f"{level} after USR1" if asked else level))

        pool = Pool(config, fake.spawn, PoolHooks(prioritise=prioritise))
        serve = await serving(pool, fake)
        outcome = pool.request("reload")
        await settle()
        quick, laggard = fake.last(2)
        ready(pool, quick)
        result = await asyncio.wait_for(outcome, 5)
        assert result["ok"] is False and "not READY within" in result["error"]
        assert signal.SIGUSR1 in laggard.signals
        assert (laggard.pid, "normal") in events
        assert not any(pid == laggard.pid and "after" in level for pid, level in events)
        serve.cancel()
        await pool.close()

    run(scenario)


def test_a_spawn_the_os_refuses_fails_the_reload() -> None:
    """EMFILE from the spawn seam: the reload fails with the OS error; nothing crashes."""

    async def scenario() -> None:
        fake = FakeOS()
        pool = make_pool(fake)
        serve = await serving(pool, fake)
        fake.refuse = OSError(24, "Too many open files")
        result = await pool.request("reload")
        assert result["ok"] is False and "Too many open files" in result["error"]
        assert pool.active is not None and pool.active.number == 1 and pool.is_ready()
        serve.cancel()
        await pool.close()

    run(scenario)
