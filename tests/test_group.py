"""Group: run together, stop together, collect every error, never hang."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tether import ConfigError, ShutdownAbandoned
from tether.group import Group, MemberExitedEarly, StopToken


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def wait_for_stop(stop: StopToken) -> str:
    return await stop


def test_member_returning_normally_stops_the_others() -> None:
    """A member that simply returns stops every other member (TaskGroup would not)."""
    seen: list[str] = []

    async def quits(stop: StopToken) -> None:
        await asyncio.sleep(0.01)

    async def waits(stop: StopToken) -> None:
        seen.append(await stop)

    async def main() -> None:
        async with Group(graceful_timeout=5) as group:
            group.add(quits, name="quits")
            group.add(waits, name="waits")

    run(main())
    assert seen == ["member 'quits' returned"]


def test_member_raising_stops_the_others_and_error_is_collected() -> None:
    """A failing member stops the rest, and its error comes back named."""

    async def fails(stop: StopToken) -> None:
        raise ValueError("boom")

    async def main() -> None:
        async with Group(graceful_timeout=5) as group:
            group.add(wait_for_stop, name="waits")
            group.add(fails, name="fails")

    with pytest.raises(ExceptionGroup) as info:
        run(main())
    (error,) = info.value.exceptions
    assert isinstance(error, ValueError)
    assert error.__notes__ == ["in member 'fails' of group 'group'"]


def test_every_error_is_collected_not_only_the_first() -> None:
    """Two members failing during the stop are both reported."""

    async def fails_first(stop: StopToken) -> None:
        raise KeyError("first")

    async def fails_on_stop(stop: StopToken) -> None:
        await stop
        raise RuntimeError("second")

    async def main() -> None:
        group = Group()
        group.add(fails_on_stop, name="b")
        group.add(fails_first, name="a")
        await group.wait()

    with pytest.raises(ExceptionGroup) as info:
        run(main())
    assert sorted(type(e).__name__ for e in info.value.exceptions) == ["KeyError", "RuntimeError"]
    assert "failed members: a, b" in str(info.value)


def test_stop_from_outside_sticks_and_keeps_first_reason() -> None:
    """stop() ends the group; a later stop does not change the reason."""

    async def main() -> str:
        group = Group()
        token = group.add(wait_for_stop, name="m")
        group.stop("first")
        group.stop("second")
        report = await group.wait()
        assert token.reason == "first"
        return report.reason or ""

    assert run(main()) == "first"


def test_stop_before_a_member_starts_sticks() -> None:
    """A member added after stop() sees the stop at once instead of running forever."""

    async def main() -> bool:
        group = Group()
        group.stop("early")
        token = group.add(wait_for_stop, name="late")
        await group.wait()
        return token.is_set()

    assert run(main()) is True


def test_member_ignoring_stop_is_cancelled_at_the_deadline() -> None:
    """A member that ignores the token is cancelled after graceful_timeout and reported."""

    async def stubborn(stop: StopToken) -> None:
        await asyncio.sleep(3600)

    async def main() -> float:
        group = Group(graceful_timeout=0.1, cancel_timeout=1)
        group.add(stubborn, name="stubborn")
        started = time.monotonic()
        group.stop("test")
        with pytest.raises(ExceptionGroup) as info:
            await group.wait()
        (abandoned,) = info.value.exceptions
        assert isinstance(abandoned, ShutdownAbandoned)
        assert [i.name for i in abandoned.items] == ["stubborn"]
        assert abandoned.items[0].detail == "cancelled at the deadline"
        # Where it was stuck, taken before the cancellation unwound it; not the group's wrapper.
        assert "in stubborn" in abandoned.items[0].stack
        assert "sleep" in abandoned.items[0].stack
        assert "_run_member" not in abandoned.items[0].stack
        return time.monotonic() - started

    assert run(main()) < 1.0


def test_member_ignoring_cancellation_is_abandoned_not_awaited_forever() -> None:
    """A member that swallows cancellation is reported with its stack by the hard deadline."""
    release = asyncio.Event

    async def main() -> None:
        done = release()

        async def immortal(stop: StopToken) -> None:
            while not done.is_set():
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    continue

        group = Group(graceful_timeout=0.05, cancel_timeout=0.1)
        group.add(immortal, name="immortal")
        group.stop("test")
        started = time.monotonic()
        with pytest.raises(ExceptionGroup) as info:
            await group.wait()
        assert time.monotonic() - started < 1.0
        (abandoned,) = info.value.exceptions
        assert isinstance(abandoned, ShutdownAbandoned)
        item = abandoned.items[0]
        assert (item.name, item.detail) == ("immortal", "ignored cancellation")
        assert "in immortal" in item.stack
        done.set()
        for task in group.tasks().values():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(main())


def test_forced_stop_cancels_at_once() -> None:
    """stop(force=True) after a graceful stop skips the rest of the graceful period."""

    async def slow_to_stop(stop: StopToken) -> None:
        await stop
        await asyncio.sleep(3600)

    async def main() -> float:
        group = Group(graceful_timeout=60)
        group.add(slow_to_stop)
        group.stop("graceful")
        await asyncio.sleep(0.01)
        started = time.monotonic()
        group.stop("again", force=True)
        with pytest.raises(ExceptionGroup):
            await group.wait()
        return time.monotonic() - started

    assert run(main()) < 1.0


def test_start_returns_the_ready_value() -> None:
    """start() returns only once the member calls ready(), with its value."""
    order: list[str] = []

    async def server(stop: StopToken) -> None:
        await asyncio.sleep(0.05)
        order.append("listening")
        stop.ready(8080)
        await stop

    async def main() -> Any:
        async with Group() as group:
            port = await group.start(server, name="server")
            order.append("start returned")
            group.stop("done")
        return port

    assert run(main()) == 8080
    assert order == ["listening", "start returned"]


def test_start_raises_when_member_fails_before_ready() -> None:
    """A member failing during startup makes start() raise its error."""

    async def broken(stop: StopToken) -> None:
        raise OSError("cannot listen")

    async def main() -> None:
        group = Group()
        with pytest.raises(OSError, match="cannot listen"):
            await group.start(broken, name="broken")
        with pytest.raises(ExceptionGroup):
            await group.wait()

    run(main())


def test_start_raises_when_member_returns_before_ready() -> None:
    """A member that returns without calling ready() is a clear error."""

    async def forgetful(stop: StopToken) -> None:
        return None

    async def main() -> None:
        group = Group()
        with pytest.raises(MemberExitedEarly, match="'forgetful' returned before it was ready"):
            await group.start(forgetful)
        await group.wait()

    run(main())


def test_negative_timeouts_are_refused() -> None:
    """A negative graceful timeout is a configuration error that names the option."""
    with pytest.raises(ConfigError, match="graceful_timeout must be a number of seconds >= 0"):
        Group(graceful_timeout=-1)


def test_cancelling_the_waiter_takes_members_down() -> None:
    """When the task waiting on the group is cancelled, the members are cancelled too."""

    async def main() -> bool:
        group = Group()
        group.add(wait_for_stop, name="a")
        waiter = asyncio.create_task(group.wait())
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.sleep(0.01)
        return all(t.done() for t in group.tasks().values())

    assert run(main()) is True


def test_token_reports_remaining_budget() -> None:
    """The token exposes the graceful deadline once stopping."""

    async def main() -> tuple[float | None, float | None]:
        group = Group(graceful_timeout=10)
        token = group.add(wait_for_stop)
        before = token.remaining()
        group.stop("x")
        after = token.remaining()
        await group.wait()
        return before, after

    before, after = run(main())
    assert before is None
    assert after is not None
    assert 9 < after <= 10


def test_a_stop_given_an_absolute_deadline_ends_the_graceful_period_then() -> None:
    """stop(deadline=) cancels a stubborn member at that moment, not graceful_timeout on."""

    async def stubborn(stop: StopToken) -> None:
        await asyncio.sleep(3600)

    async def main() -> tuple[float, float | None]:
        group = Group(graceful_timeout=30, cancel_timeout=1)
        token = group.add(stubborn, name="stubborn")
        began = time.monotonic()
        group.stop("a plan made earlier", deadline=began + 0.2)
        left = token.remaining()
        with pytest.raises(ExceptionGroup):
            await group.wait()
        return time.monotonic() - began, left

    took, left = run(main())
    assert left is not None and 0.1 < left <= 0.2
    assert 0.15 <= took < 1.0, took


def test_a_deadline_already_past_cancels_at_once_and_both_bounds_are_refused() -> None:
    """A plan whose deadline has gone leaves no graceful period; timeout and deadline: TypeError."""

    async def main() -> None:
        group = Group(graceful_timeout=30, cancel_timeout=1)
        token = group.add(wait_for_stop)
        with pytest.raises(TypeError, match="a timeout or a deadline, not both"):
            group.stop("x", timeout=1.0, deadline=time.monotonic())
        assert not group.stopping  # a refused call stops nothing
        group.stop("late", deadline=time.monotonic() - 5.0)
        assert token.remaining() == 0.0
        await group.wait()

    run(main())


def test_a_plans_deadline_reaches_the_members_on_its_own_clock_unchanged() -> None:
    """stop(deadline=) keeps the time.monotonic() value as given; one already past becomes now."""

    async def main() -> None:
        group = Group(graceful_timeout=30, cancel_timeout=1)
        token = group.add(wait_for_stop)
        assert token.monotonic_deadline is None and group.monotonic_deadline is None
        deadline = time.monotonic() + 5.0
        group.stop("a plan made earlier", deadline=deadline)
        assert token.monotonic_deadline == group.monotonic_deadline == deadline
        assert token.deadline is not None
        assert abs(token.deadline - asyncio.get_running_loop().time() - 5.0) < 0.1
        await group.wait()
        late = Group(graceful_timeout=30, cancel_timeout=1)
        late.add(wait_for_stop)
        before = time.monotonic()
        late.stop("a plan whose deadline has gone", deadline=before - 10.0)
        assert late.monotonic_deadline is not None and late.monotonic_deadline >= before
        await late.wait()

    run(main())
