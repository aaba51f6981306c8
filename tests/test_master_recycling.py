"""Recycling (tether.master.recycling): a due worker drains only once its successor is READY.

Through the fake spawn seam (``fakepool``), in milliseconds; ``test_recycling.py``
runs it under wrk load with real workers.
"""

from __future__ import annotations

import asyncio
import signal

from fakepool import FakeChild, FakeOS, make_pool, ready, run, say, serving, settle, starting
from tether.master.pool import Pool


def recycle_due(pool: Pool, child: FakeChild) -> None:
    """The worker says it reached --max-requests (it has stopped taking requests)."""
    say(pool, child, TETHER_RECYCLE="1", STATUS="recycling: served 100 requests")


def test_a_due_worker_drains_once_its_successor_is_ready() -> None:
    """A worker due for recycling: its successor starts at once; it gets TERM when that is READY."""

    async def scenario() -> None:
        fake = FakeOS()
        pool = make_pool(fake, workers=1)
        serve = await serving(pool, fake)
        (old,) = fake.children
        recycle_due(pool, old)
        await settle()
        assert len(fake.children) == 2 and old.signals == []
        ready(pool, fake.children[1])
        await settle()
        assert old.signals == [signal.SIGTERM]
        assert pool.recycles == 1
        serve.cancel()
        await pool.close()

    run(scenario)


def test_a_due_worker_takes_requests_again_when_its_successor_fails() -> None:
    """The successor exits before READY: the old worker is told to resume (CONT), then retried."""

    async def scenario() -> None:
        fake = FakeOS()
        pool = make_pool(fake, workers=1)
        serve = await serving(pool, fake)
        (old,) = fake.children
        recycle_due(pool, old)
        await settle()
        fake.children[1].exit(3)
        await settle()
        assert old.signals == [signal.SIGCONT]
        async with asyncio.timeout(5):  # the retry comes after the first backoff (0.5 s)
            while len(fake.children) < 3:
                await asyncio.sleep(0.05)
        ready(pool, fake.children[2])
        await settle()
        assert old.signals == [signal.SIGCONT, signal.SIGTERM]
        serve.cancel()
        await pool.close()

    run(scenario)


def test_a_successor_due_before_it_took_over_is_recycled_next() -> None:
    """READY and due in one breath: the successor takes over, then its own successor starts."""

    async def scenario() -> None:
        fake = FakeOS()
        pool = make_pool(fake, workers=1)
        serve = await serving(pool, fake)
        old = fake.children[0]
        recycle_due(pool, old)
        await settle()
        successor = fake.children[1]
        ready(pool, successor)
        recycle_due(pool, successor)
        await settle()
        assert old.signals == [signal.SIGTERM]
        assert successor.signals == []  # not told to resume: its successor is on the way
        assert len(fake.children) == 3
        ready(pool, fake.children[2])
        await settle()
        assert successor.signals == [signal.SIGTERM]
        serve.cancel()
        await pool.close()

    run(scenario)


def test_a_worker_due_while_its_generation_starts_resumes_then_is_recycled() -> None:
    """Due before its sibling is READY: told to resume; recycled once the generation serves."""

    async def scenario() -> None:
        fake = FakeOS()
        pool = make_pool(fake)
        start = await starting(pool)
        first, second = fake.children
        ready(pool, first)
        recycle_due(pool, first)
        await settle()
        assert first.signals == [signal.SIGCONT] and len(fake.children) == 2
        ready(pool, second)
        await start
        await settle()
        assert len(fake.children) == 3  # first's successor
        ready(pool, fake.children[2])
        await settle()
        assert first.signals == [signal.SIGCONT, signal.SIGTERM]
        await pool.close()

    run(scenario)
