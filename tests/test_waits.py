"""first(a, b): the winner's result, the loser cancelled and awaited, errors never lost."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from tether._waits import first

T = TypeVar("T")


def run(main: Callable[[], Awaitable[T]]) -> T:
    async def checked() -> T:
        result = await main()
        left = asyncio.all_tasks() - {asyncio.current_task()}
        assert not left, f"first() left tasks running: {left}"
        return result

    return asyncio.run(checked())


async def never(log: list[str], name: str) -> None:
    """Wait forever; on cancellation, take two more loop turns to unwind, then log it."""
    try:
        await asyncio.Event().wait()
    finally:
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        log.append(f"{name} unwound")


async def value(v: T, turns: int = 0) -> T:
    for _ in range(turns):
        await asyncio.sleep(0)
    return v


def test_the_winner_is_returned_and_the_loser_awaited_before_first_returns() -> None:
    """The side that ends first gives (its index, its result); the loser has unwound already."""
    log: list[str] = []

    async def main() -> tuple[Any, Any]:
        return await first(never(log, "a"), value("b")), await first(value("a"), never(log, "b"))

    assert run(main) == ((1, "b"), (0, "a"))
    assert log == ["a unwound", "b unwound"]


def test_a_counts_as_first_when_both_end_in_the_same_turn() -> None:
    """Two sides done together: a wins, and b's task is finished, not left behind."""

    async def main() -> Any:
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        done.set_result("future")
        return await first(value("a"), value("b")), await first(done, value("b"))

    assert run(main) == ((0, "a"), (0, "future"))


def test_the_winners_exception_propagates() -> None:
    """A side that raises first makes first() raise that error, after the loser unwound."""
    log: list[str] = []

    async def fails() -> None:
        await asyncio.sleep(0)
        raise ValueError("the work failed")

    async def main() -> Any:
        return await first(fails(), never(log, "b"))

    with pytest.raises(ValueError, match="the work failed"):
        run(main)
    assert log == ["b unwound"]


def test_an_error_of_the_other_side_is_not_lost() -> None:
    """A loser that fails while it unwinds, or in the same turn as the winner, is raised."""

    async def fails_on_cancel() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            raise RuntimeError("cleanup failed")

    async def fails_at_once() -> None:
        raise KeyError("b")

    async def main1() -> Any:
        return await first(value("a", turns=1), fails_on_cancel())

    async def main2() -> Any:
        return await first(value("a"), fails_at_once())

    with pytest.raises(RuntimeError, match="cleanup failed"):
        run(main1)
    with pytest.raises(KeyError, match="b"):
        run(main2)


def test_a_future_passed_in_is_the_callers_and_never_cancelled() -> None:
    """A shared future (a child's exit) that loses stays pending; one that wins gives its value."""

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        shared: asyncio.Future[int] = loop.create_future()
        won = await first(value("ready", turns=1), shared)
        assert not shared.cancelled() and not shared.done()
        loop.call_soon(shared.set_result, 3)
        log: list[str] = []
        return won, await first(never(log, "a"), shared), log

    assert run(main) == ((0, "ready"), (1, 3), ["a unwound"])


def test_a_deadline_cancels_and_awaits_both_sides() -> None:
    """Under asyncio.timeout, neither side ending raises TimeoutError once both have unwound."""
    log: list[str] = []

    async def main() -> None:
        async with asyncio.timeout(0.05):
            await first(never(log, "a"), never(log, "b"))

    with pytest.raises(TimeoutError):
        run(main)
    assert sorted(log) == ["a unwound", "b unwound"]


def test_cancelling_the_caller_unwinds_its_own_sides_first() -> None:
    """A task cancelled inside first() ends only after both of first's tasks have ended."""
    log: list[str] = []

    async def main() -> list[str]:
        waiter = asyncio.ensure_future(first(never(log, "a"), never(log, "b")))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        return sorted(log)

    assert run(main) == ["a unwound", "b unwound"]


def test_a_second_cancellation_while_unwinding_still_waits_for_the_losers() -> None:
    """Cancelled again while its losers unwind, first() still outlives them, then is cancelled."""
    log: list[str] = []

    async def main() -> list[str]:
        waiter = asyncio.ensure_future(first(never(log, "a"), never(log, "b")))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.sleep(0)  # first() is now waiting for the losers to unwind
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        return sorted(log)

    assert run(main) == ["a unwound", "b unwound"]
