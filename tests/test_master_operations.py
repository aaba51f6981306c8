"""The queue of reloads, upgrades and resizes (tether.master.operations): one at a time.

Through the fake spawn seam (``fakepool``), in milliseconds; ``test_master.py``
reloads a real master by HUP and ``tether ctl``.
"""

from __future__ import annotations

import asyncio

from fakepool import FakeOS, make_pool, ready, run, serving, settle


def test_reloads_queued_meanwhile_are_coalesced() -> None:
    """Three reloads while one runs: one more reload, and all four get an outcome."""

    async def scenario() -> None:
        fake = FakeOS()
        pool = make_pool(fake, workers=1)
        serve = await serving(pool, fake)
        first = pool.request("reload")
        await settle()
        more = [pool.request("reload") for _ in range(3)]
        assert pool.reload_queued
        ready(pool, *fake.last())
        assert (await first)["ok"]
        await settle()
        ready(pool, *fake.last())
        outcomes = await asyncio.gather(*more)
        assert all(o["ok"] and o["generation"] == 3 for o in outcomes)
        assert pool.reloads == 2
        serve.cancel()
        await pool.close()

    run(scenario)


def test_a_request_while_stopping_is_answered_at_once() -> None:
    """Once the pool stops, a reload asked gets "the master is stopping", and none runs."""

    async def scenario() -> None:
        fake = FakeOS()
        pool = make_pool(fake, workers=1)
        serve = await serving(pool, fake)
        pool.begin_stop()
        outcome = await pool.request("reload")
        assert outcome == {"ok": False, "error": "the master is stopping"}
        assert len(fake.children) == 1 and not pool.reload_queued
        serve.cancel()
        await pool.close()

    run(scenario)


def test_a_stop_answers_what_is_queued_behind_a_running_reload() -> None:
    """A reload queued behind one that runs gets the stop's answer, not silence."""

    async def scenario() -> None:
        fake = FakeOS()
        pool = make_pool(fake, workers=1)
        serve = await serving(pool, fake)
        running = pool.request("reload")
        await settle()
        assert pool.reloading
        queued = pool.request("reload")
        pool.begin_stop()
        assert (await queued)["error"] == "the master is stopping"
        serve.cancel()
        assert (await running)["error"] == "the master is stopping"
        await pool.close()

    run(scenario)


def test_an_upgrade_without_an_upgrader_says_so_and_the_reload_behind_it_runs() -> None:
    """A turn runs the upgrade first: refused in one line; then the reload queued with it."""

    async def scenario() -> None:
        fake = FakeOS()
        pool = make_pool(fake, workers=1)
        serve = await serving(pool, fake)
        upgrade, reload = pool.request("upgrade"), pool.request("reload")
        assert await upgrade == {"ok": False, "error": "this master cannot be upgraded"}
        await settle()
        ready(pool, *fake.last())
        assert (await reload)["ok"] is True
        serve.cancel()
        await pool.close()

    run(scenario)
