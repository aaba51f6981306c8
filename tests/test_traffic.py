"""What runs only while a connection is open (tether._traffic): the watched set and its clock.

In this process on a real event loop; the server's date header and loop-lag
samples under real connections are ``test_serving.py``'s and ``test_metrics.py``'s.
"""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from tether._traffic import Connections, SecondClock


def test_the_set_says_busy_at_once_and_idle_once_it_stayed_empty() -> None:
    """busy on the first connection; idle no sooner than idle_after after the set emptied.

    ``empty`` follows the set exactly (the drain waits on it); the callbacks alternate.
    """

    async def main() -> None:
        loop = asyncio.get_running_loop()
        seen: list[str] = []
        idle_at = loop.create_future()

        def on_idle() -> None:
            seen.append("idle")
            idle_at.set_result(loop.time())

        conns = Connections(lambda: seen.append("busy"), on_idle, idle_after=0.3)
        assert conns.empty.is_set()
        conns.add("a")
        conns.add("b")
        assert seen == ["busy"] and not conns.empty.is_set()
        conns.discard("a")
        conns.discard("missing")
        conns.remove("b")
        emptied = loop.time()
        assert conns.empty.is_set() and seen == ["busy"]
        async with asyncio.timeout(10):
            assert await idle_at - emptied >= 0.3 - 0.01  # the loop's timer resolution
        assert seen == ["busy", "idle"]
        conns.discard("b")
        with pytest.raises(KeyError):
            conns.remove("b")
        conns.add("c")
        assert seen == ["busy", "idle", "busy"] and not conns.empty.is_set()

    asyncio.run(main())


def test_connections_that_follow_each_other_are_one_busy_stretch() -> None:
    """Emptied and refilled between loop steps (Connection: close traffic): no idle, one busy."""

    async def main() -> None:
        seen: list[str] = []
        conns = Connections(lambda: seen.append("busy"), lambda: seen.append("idle"), 0.3)
        for i in range(50):
            conns.add(i)
            await asyncio.sleep(0)  # the loop runs while the connection is open...
            conns.discard(i)
            assert conns.empty.is_set()
            await asyncio.sleep(0)  # ...and while none is
        conns.add("open")
        async with asyncio.timeout(10):
            while conns._check is not None:  # the look scheduled when the set first emptied
                await asyncio.sleep(0.01)
        assert seen == ["busy"]  # it found a connection open

    asyncio.run(main())


def test_closing_the_set_says_idle_at_once_and_looks_no_more() -> None:
    """close(): idle now, a connection still closing; its later discard schedules nothing."""

    async def main() -> None:
        seen: list[str] = []
        conns = Connections(lambda: seen.append("busy"), lambda: seen.append("idle"), 0.3)
        conns.add("a")
        conns.add("b")
        conns.discard("a")
        conns.close()
        assert seen == ["busy", "idle"]
        conns.discard("b")  # its connection_lost, a step later
        assert conns._check is None and conns.empty.is_set()
        conns.add("c")  # nothing is busy after the server is done
        assert seen == ["busy", "idle"]

    asyncio.run(main())


def test_the_clock_fires_at_once_then_after_the_next_second_begins() -> None:
    """on_second gets the wall time, then lag and tick; the next firing is past a second's end."""

    async def main() -> None:
        stamps: list[float] = []
        lags: list[float] = []
        twice = asyncio.Event()

        def tick() -> None:
            if len(stamps) == 2:
                twice.set()

        clock = SecondClock(on_second=stamps.append, lag=lags.append, tick=tick)
        before = time.time()
        clock.start()
        clock.start()  # already running: no second timer
        assert stamps == [] and clock.running
        await asyncio.wait_for(twice.wait(), 5)
        clock.stop()
        first, second = stamps
        assert before <= first < second
        # Fired no earlier than the second after the first began (to the loop's resolution).
        assert second >= math.floor(first) + 1 - 0.01, stamps
        assert len(lags) == 2 and all(lag >= -0.01 for lag in lags), lags

    asyncio.run(main())


def test_a_stopped_clock_fires_no_more() -> None:
    """stop() cancels the timer that is due, also from within a firing; start() begins again."""

    async def main() -> None:
        fired: list[float] = []
        clock: SecondClock
        firing = asyncio.Event()

        def on_second(now: float) -> None:
            fired.append(now)
            firing.set()
            clock.stop()  # the last connection closed while the clock ran

        clock = SecondClock(on_second=on_second)
        clock.start()
        await asyncio.wait_for(firing.wait(), 5)
        assert len(fired) == 1 and not clock.running
        await asyncio.sleep(1.1)  # past the next second boundary: nothing was due
        assert len(fired) == 1
        firing.clear()
        clock.start()
        await asyncio.wait_for(firing.wait(), 5)
        assert len(fired) == 2 and not clock.running

    asyncio.run(main())
