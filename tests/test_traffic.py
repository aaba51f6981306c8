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
    """busy on the first connection; idle when a look idle_after later finds it still empty.

    ``empty`` follows the set exactly (the drain waits on it); the callbacks alternate.
    """

    async def main() -> None:
        seen: list[str] = []
        idle = asyncio.Event()

        def on_idle() -> None:
            seen.append("idle")
            idle.set()

        conns = Connections(lambda: seen.append("busy"), on_idle, idle_after=0.05)
        assert conns.empty.is_set()
        conns.add("a")
        conns.add("b")
        assert seen == ["busy"] and not conns.empty.is_set()
        conns.discard("a")
        conns.discard("missing")
        conns.remove("b")
        assert conns.empty.is_set()
        assert seen == ["busy"]  # not yet: it may be the moment between two connections
        await asyncio.wait_for(idle.wait(), 5)
        assert seen == ["busy", "idle"]
        conns.discard("b")
        with pytest.raises(KeyError):
            conns.remove("b")
        conns.add("c")
        assert seen == ["busy", "idle", "busy"] and not conns.empty.is_set()

    asyncio.run(main())


def test_connections_that_follow_each_other_are_one_busy_stretch() -> None:
    """Emptied and refilled before the look (Connection: close traffic): no idle, no second busy."""

    async def main() -> None:
        seen: list[str] = []
        conns = Connections(lambda: seen.append("busy"), lambda: seen.append("idle"), 0.05)
        for i in range(100):
            conns.add(i)
            conns.discard(i)
            assert conns.empty.is_set()
        conns.add("open")
        while conns._check is not None:  # the look scheduled when the set first emptied
            await asyncio.sleep(0.01)
        assert seen == ["busy"]  # it found a connection open
        conns.discard("open")
        conns.close()  # the server is done: idle now, and no look left pending
        assert seen == ["busy", "idle"] and conns._check is None

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
