"""Replacement (tether.master.replacement): a worker that leaves its slot is replaced.

Backoff only for a broken app (a worker that never served).

Through the fake spawn seam (``fakepool``), in milliseconds;
``test_master_faults.py`` kills real workers.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from fakepool import FakeOS, make_pool, ready, run, settle, starting
from tether._children import Child
from tether.master.replacement import BACKOFF_FIRST, BACKOFF_MAX, delay


def test_a_sibling_failing_after_one_serves_is_replaced_not_fatal() -> None:
    """Worker 1 READY, worker 2 exits 3: the generation serves and slot 1 is restarted."""

    async def scenario() -> None:
        fake = FakeOS()
        pool = make_pool(fake)
        start = await starting(pool)
        first, second = fake.children
        ready(pool, first)
        second.exit(3)
        await start
        assert pool.is_ready() and pool.active is not None
        await settle()
        assert len(fake.children) == 3  # slot 1 again, at once (its first failure)
        assert pool.active.slots[1].child is cast(Child, fake.children[2])
        fake.children[2].exit(3)
        await settle()
        assert len(fake.children) == 3  # the second failure in a row waits
        assert pool.active.failures[1] == 2
        await pool.close()

    run(scenario)


def test_backoff_only_for_workers_that_never_served() -> None:
    """Dying before READY: at once, then 0.5 s doubling to 30 s; a worker that served: at once."""

    async def scenario() -> None:
        fake = FakeOS()
        pool = make_pool(fake, workers=1)
        start = await starting(pool)
        ready(pool, fake.children[0])
        await start
        gen = pool.active
        assert gen is not None
        worker = gen.slots[0]
        served_since = worker.ready_at
        assert served_since is not None
        delays = [pool.backoff(gen, _starting(worker))[0] for _ in range(10)]
        assert delays[:4] == [0.0, 0.5, 1.0, 2.0] and delays[-1] == BACKOFF_MAX
        worker.ready_at = served_since - 5  # it served for five seconds
        assert pool.backoff(gen, worker) == (0.0, 0)
        await pool.close()

    run(scenario)


def _starting(worker: Any) -> Any:
    worker.ready_at = None
    return worker


def test_the_delay_doubles_from_the_second_failure_and_stops_at_the_maximum() -> None:
    """0 for the first failure in a row, 0.5 s for the second, doubling, never past 30 s."""
    assert [delay(n) for n in (0, 1, 2, 3, 4)] == [0.0, 0.0, BACKOFF_FIRST, 1.0, 2.0]
    assert delay(100) == BACKOFF_MAX


def test_a_replacement_the_os_refuses_is_retried_until_it_starts() -> None:
    """A served worker crashes while spawns fail (EMFILE): the slot is retried, then filled."""

    async def scenario() -> None:
        fake = FakeOS()
        pool = make_pool(fake, workers=1)
        start = await starting(pool)
        ready(pool, fake.children[0])
        await start
        gen = pool.active
        assert gen is not None
        fake.refuse = OSError(24, "Too many open files")
        worker = gen.slots[0]
        assert worker.ready_at is not None
        worker.ready_at -= 5  # it served: replaced at once, not after a backoff
        fake.children[0].exit(1)
        await settle()
        assert len(fake.children) == 1 and 0 in gen.replacing  # refused; a retry is held
        assert pool.restarts == 1
        fake.refuse = None
        async with asyncio.timeout(5):  # the retry comes after the first backoff (0.5 s)
            while len(fake.children) < 2:
                await asyncio.sleep(0.05)
        assert gen.slots[0].child is cast(Child, fake.children[1])
        await pool.close()

    run(scenario)
