"""Tests for tether.tracker: tracked work, drain at shutdown, the process tracker, adoption."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.errors import AbandonedWork, ConfigError, TetherError
from tether.tracker import (
    REQUEST_SCOPE,
    REQUESTS,
    BaseExceptionInWork,
    NoCurrentTracker,
    Tracker,
    TrackerClosed,
    TrackerFull,
    TrackerReport,
    current_origin,
    current_tracker,
    install_adoption,
    no_adoption,
    no_adoption_for,
    origin_label,
    request_scope,
    set_current_tracker,
    spawn,
)


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``main()`` on a fresh event loop."""

    async def wrapper() -> Any:
        return await main()

    return asyncio.run(wrapper())


async def wait_for_event(event: asyncio.Event) -> None:
    await event.wait()


async def noop() -> None:
    pass


async def nap(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "rested"


def assert_closed(coro: Coroutine[Any, Any, Any]) -> None:
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


def assert_invariant(tracker: Tracker) -> None:
    s = tracker.stats()
    assert s.spawned == s.running + s.completed + s.failed + s.cancelled + s.abandoned


# -- spawning ------------------------------------------------------------------------------


def test_spawn_runs_work_and_counts_it() -> None:
    """A spawned task runs to completion and is counted as spawned then completed."""

    async def main() -> None:
        tracker = Tracker()
        task = await tracker.spawn(nap(0))
        assert tracker.stats().running == 1
        assert await task == "rested"
        await asyncio.sleep(0)  # let the done callback run
        stats = tracker.stats()
        assert (stats.spawned, stats.running, stats.completed, stats.failed) == (1, 0, 1, 0)
        assert_invariant(tracker)

    run(main)


def test_spawn_keeps_a_strong_reference() -> None:
    """Work whose task the caller drops is still referenced by the tracker and completes."""
    done: list[str] = []

    async def work(release: asyncio.Event) -> None:
        await release.wait()
        done.append("yes")

    async def main() -> None:
        tracker = Tracker()
        release = asyncio.Event()
        tracker.try_spawn(work(release))
        for _ in range(3):  # past the settling of the first step: now in the running set
            await asyncio.sleep(0)
        [task] = tracker.tasks()
        assert task in tracker._tasks
        release.set()
        report = await tracker.shutdown(5)
        assert report.completed == 1

    run(main)
    assert done == ["yes"]


def test_task_name_defaults_to_the_coroutine_name() -> None:
    """A task is named after its coroutine's qualified name unless a name is given."""

    async def main() -> None:
        tracker = Tracker()
        default = await tracker.spawn(nap(0))
        named = tracker.try_spawn(nap(0), name="send-event")
        assert default.get_name() == "nap"
        assert named.get_name() == "send-event"
        await tracker.shutdown(5)

    run(main)


def test_non_coroutine_is_a_type_error() -> None:
    """Spawning something that is not a coroutine raises TypeError saying what to pass."""

    async def main() -> None:
        tracker = Tracker()
        with pytest.raises(TypeError) as info:
            await tracker.spawn(nap)  # type: ignore[arg-type]
        assert str(info.value) == (
            "spawn() takes a coroutine object, got the callable nap; call it: nap(...)"
        )
        with pytest.raises(TypeError) as info:
            tracker.try_spawn(42)  # type: ignore[arg-type]
        assert str(info.value) == (
            "spawn() takes a coroutine object (what calling an `async def` function returns), "
            "got int: 42"
        )
        assert tracker.stats().spawned == 0

    run(main)


@pytest.mark.parametrize("limit", [-1, 0, True, 2.5])
def test_bad_limit_is_a_config_error(limit: Any) -> None:
    """A limit that is not a whole number >= 1 is refused with ConfigError."""
    with pytest.raises(ConfigError) as info:
        Tracker(limit)
    assert str(info.value) == (
        f"tracker limit must be a whole number >= 1, or None for no limit; got {limit!r}"
    )


def test_bad_when_closed_is_a_config_error() -> None:
    """An unknown when_closed option is refused with ConfigError."""
    with pytest.raises(ConfigError, match='when_closed must be "refuse" or "inline"'):
        Tracker(when_closed="drop")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout": -1}, "shutdown timeout must be a number of seconds >= 0, got -1"),
        (
            {"timeout": 1, "cancel_timeout": -0.5},
            "shutdown cancel_timeout must be a number of seconds >= 0, got -0.5",
        ),
        ({"timeout": float("nan")}, "shutdown timeout must be a number of seconds >= 0, got nan"),
    ],
)
def test_bad_shutdown_timeout_is_a_config_error(kwargs: dict[str, Any], message: str) -> None:
    """A negative or non-finite shutdown timeout is refused with ConfigError, work untouched."""

    async def main() -> None:
        tracker = Tracker()
        with pytest.raises(ConfigError) as info:
            await tracker.shutdown(**kwargs)
        assert str(info.value) == message
        assert not tracker.closed

    run(main)


def test_errors_belong_to_the_hierarchy() -> None:
    """The tracker's errors are TetherErrors, and RuntimeErrors where misuse is the cause."""
    for cls in (TrackerClosed, TrackerFull, NoCurrentTracker):
        assert issubclass(cls, TetherError)
        assert issubclass(cls, RuntimeError)
    assert issubclass(BaseExceptionInWork, TetherError)


# -- limit and backpressure -----------------------------------------------------------------


def test_spawn_waits_for_a_free_slot() -> None:
    """With the limit reached, spawn waits until a running task finishes, then starts the work."""

    async def main() -> None:
        tracker = Tracker(limit=2)
        release = asyncio.Event()
        await tracker.spawn(wait_for_event(release))
        await tracker.spawn(wait_for_event(release))
        third = asyncio.create_task(tracker.spawn(nap(0), name="third"))
        await asyncio.sleep(0)
        assert not third.done()
        assert tracker.stats().waiting == 1
        assert tracker.stats().running == 2
        release.set()
        task = await asyncio.wait_for(third, 5)
        assert task.get_name() == "third"
        assert tracker.stats().waiting == 0
        report = await tracker.shutdown(5)
        assert report.completed == 3

    run(main)


def test_try_spawn_refuses_when_full() -> None:
    """try_spawn raises TrackerFull at the limit, closes the coroutine, and starts nothing."""

    async def main() -> None:
        tracker = Tracker(limit=1, name="events")
        release = asyncio.Event()
        tracker.try_spawn(wait_for_event(release))
        coro = nap(0)
        with pytest.raises(TrackerFull) as info:
            tracker.try_spawn(coro)
        assert str(info.value) == (
            "tracker 'events' is full (1 tasks running) and refused 'nap'; "
            "use `await tracker.spawn(...)` to wait for a free slot, or raise the limit"
        )
        assert (info.value.limit, info.value.work) == (1, "nap")
        assert_closed(coro)
        assert tracker.stats().spawned == 1
        release.set()
        await tracker.shutdown(5)

    run(main)


def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    """A spawn cancelled while waiting for a slot gives up its place; slots stay accounted."""

    async def main() -> None:
        tracker = Tracker(limit=1)
        release = asyncio.Event()
        await tracker.spawn(wait_for_event(release))
        coro = nap(0)
        waiting = asyncio.create_task(tracker.spawn(coro))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert_closed(coro)
        assert tracker.stats().waiting == 0
        release.set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        tracker.try_spawn(nap(0))  # the slot is free again
        report = await tracker.shutdown(5)
        assert report.completed == 2

    run(main)


# -- refusal after shutdown ------------------------------------------------------------------


def test_work_offered_after_shutdown_is_refused() -> None:
    """Once shutdown began, spawn and try_spawn raise TrackerClosed and close the coroutine."""

    async def main() -> None:
        tracker = Tracker(name="events")
        await tracker.shutdown(0)
        coro = nap(0)
        with pytest.raises(TrackerClosed) as info:
            await tracker.spawn(coro, name="late")
        assert str(info.value) == (
            "tracker 'events' is shutting down and refused new work 'late'; start work before "
            'shutdown begins, or create the tracker with when_closed="inline" to run late '
            "work in the caller"
        )
        assert_closed(coro)
        coro = nap(0)
        with pytest.raises(TrackerClosed):
            tracker.try_spawn(coro)
        assert_closed(coro)
        assert tracker.stats().spawned == 0

    run(main)


def test_spawn_waiting_for_a_slot_is_refused_when_shutdown_begins() -> None:
    """A spawn waiting for a slot when shutdown begins raises TrackerClosed instead of waiting."""

    async def main() -> None:
        tracker = Tracker(limit=1)
        await tracker.spawn(nap(0.01))
        waiting = asyncio.create_task(tracker.spawn(nap(0), name="queued"))
        await asyncio.sleep(0)
        report = await tracker.shutdown(5)
        with pytest.raises(TrackerClosed, match="refused new work 'queued'"):
            await waiting
        assert report.completed == 1

    run(main)


def test_inline_option_runs_late_work_in_the_caller() -> None:
    """With when_closed="inline", spawn after shutdown returns only once the work is done."""

    async def main() -> None:
        tracker = Tracker(when_closed="inline")
        await tracker.shutdown(0)
        task = await tracker.spawn(nap(0.01))
        assert task.done()
        assert task.result() == "rested"
        assert tracker.stats().completed == 1
        with pytest.raises(TrackerClosed):  # the non-waiting variant cannot run it inline
            tracker.try_spawn(noop())
        assert_invariant(tracker)

    run(main)


def test_inline_option_runs_waiting_spawns_when_shutdown_begins() -> None:
    """A spawn waiting for a slot when shutdown begins runs its work inline under that option."""

    async def main() -> None:
        tracker = Tracker(limit=1, when_closed="inline")
        await tracker.spawn(nap(0.01))
        waiting = asyncio.create_task(tracker.spawn(nap(0)))
        await asyncio.sleep(0)
        await tracker.shutdown(5)
        task = await waiting
        assert task.result() == "rested"
        assert tracker.stats().completed == 2

    run(main)


# -- shutdown and the report -----------------------------------------------------------------


def test_shutdown_waits_for_work_to_finish() -> None:
    """Work that finishes within the timeout completes and the report is clean."""
    recorded: list[int] = []

    async def event(n: int) -> None:
        await asyncio.sleep(0.05)
        recorded.append(n)

    async def main() -> TrackerReport:
        tracker = Tracker()
        for n in range(100):
            await tracker.spawn(event(n))
        return await tracker.shutdown(5)

    report = run(main)
    assert sorted(recorded) == list(range(100))
    assert report.clean
    assert (report.completed, report.failed, report.cancelled, report.abandoned) == (100, 0, 0, ())


def test_shutdown_waits_for_work_spawned_by_work_during_the_drain() -> None:
    """Adopted work that appears while the drain runs is waited for too."""
    recorded: list[str] = []

    async def child() -> None:
        await asyncio.sleep(0.02)
        recorded.append("child")

    async def parent() -> None:
        await asyncio.sleep(0.02)
        asyncio.create_task(child())  # noqa: RUF006 - adopted

    async def main() -> None:
        tracker = Tracker()
        with install_adoption(tracker):
            with request_scope("GET /"):
                asyncio.create_task(parent())  # noqa: RUF006 - adopted
            report = await tracker.shutdown(5)
        assert report.completed == 2

    run(main)
    assert recorded == ["child"]


def test_report_names_abandoned_work_with_its_stack() -> None:
    """Work still running at the deadline is cancelled and reported with its name and stack."""

    async def stuck_forever(event: asyncio.Event) -> None:
        await event.wait()

    async def main() -> tuple[TrackerReport, asyncio.Task[None]]:
        tracker = Tracker()
        task = await tracker.spawn(stuck_forever(asyncio.Event()), name="send-event")
        await tracker.spawn(nap(0))
        report = await tracker.shutdown(0.05, cancel_timeout=1)
        assert tracker.stats().abandoned == 1
        assert_invariant(tracker)
        return report, task

    report, task = run(main)
    assert task.cancelled()
    assert report.completed == 1
    [item] = report.abandoned
    assert item.name == "send-event"
    assert not item.ignored_cancellation
    assert item.origin is None
    assert "in stuck_forever" in item.stack
    assert "await event.wait()" in item.stack
    assert "in wait" in item.stack  # the await chain goes down into asyncio.Event.wait
    assert "_guarded" not in item.stack
    assert report.summary().startswith("1 completed, 0 failed, 0 cancelled, 1 abandoned in ")
    assert report.summary().endswith(": 'send-event'")
    [work] = report.abandoned_work()
    assert work == AbandonedWork(
        kind="task", name="send-event", stack=item.stack, detail="cancelled"
    )


def test_work_that_ignores_cancellation_still_yields_a_report() -> None:
    """Work that swallows cancellation is reported by the hard deadline and stays referenced."""

    async def stubborn(release: asyncio.Event) -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    async def main() -> None:
        tracker = Tracker()
        release = asyncio.Event()
        task = await tracker.spawn(stubborn(release))
        started = time.monotonic()
        report = await tracker.shutdown(0.05, cancel_timeout=0.1)
        elapsed = time.monotonic() - started
        assert elapsed < 2
        [item] = report.abandoned
        assert item.ignored_cancellation
        assert item.to_abandoned_work().detail == "ignored cancellation"
        assert not task.done()
        assert task in tracker._stragglers  # still referenced
        release.set()
        await task
        assert not tracker._stragglers

    run(main)


def test_second_shutdown_brings_the_deadline_forward() -> None:
    """A shutdown(0) during a long shutdown cancels the work at once; both get one report."""

    async def main() -> None:
        tracker = Tracker()
        await tracker.spawn(wait_for_event(asyncio.Event()), name="slow")
        first = asyncio.create_task(tracker.shutdown(60))
        await asyncio.sleep(0.01)
        started = time.monotonic()
        second = await tracker.shutdown(0)
        assert time.monotonic() - started < 5
        assert await first is second
        assert [item.name for item in second.abandoned] == ["slow"]
        assert await tracker.shutdown(60) is second  # after it finished: the same report

    run(main)


def test_cancelling_shutdown_cancels_the_remaining_work() -> None:
    """Cancelling the task that awaits shutdown cancels the tracked work at once."""

    async def main() -> None:
        tracker = Tracker()
        task = await tracker.spawn(wait_for_event(asyncio.Event()))
        shutting = asyncio.create_task(tracker.shutdown(60))
        await asyncio.sleep(0.01)
        shutting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await shutting
        await asyncio.sleep(0)
        assert task.cancelled()

    run(main)


def test_work_finished_but_not_yet_settled_is_not_abandoned() -> None:
    """Work that finished just before the deadline counts as completed, not abandoned."""

    async def main() -> None:
        tracker = Tracker()
        with install_adoption(tracker):
            with request_scope():
                asyncio.create_task(noop())  # noqa: RUF006
            report = await tracker.shutdown(0)
        assert (report.completed, report.abandoned) == (1, ())

    run(main)


def test_a_tracker_belongs_to_one_loop() -> None:
    """Spawning on a second running loop while the first is open is refused with a clear error."""

    async def main() -> None:
        tracker = Tracker()
        await tracker.spawn(noop())
        coro = noop()

        async def elsewhere() -> None:
            await tracker.spawn(coro)

        with pytest.raises(RuntimeError, match="already runs work on another event loop"):
            await asyncio.to_thread(asyncio.run, elsewhere())
        assert_closed(coro)
        await tracker.shutdown(5)

    run(main)


# -- failures --------------------------------------------------------------------------------


def test_failure_is_logged_at_once(caplog: pytest.LogCaptureFixture) -> None:
    """A failure in tracked work is logged with its traceback when it happens, not at shutdown."""

    async def broken() -> None:
        raise ValueError("no such user")

    async def main() -> None:
        tracker = Tracker()
        task = await tracker.spawn(broken())
        await asyncio.wait([task])
        await asyncio.sleep(0)
        [record] = [r for r in caplog.records if r.name == "tether.tracker"]
        assert record.levelno == logging.ERROR
        assert (
            record.getMessage()
            == "tracked task 'test_failure_is_logged_at_once.<locals>.broken' failed"
        )
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], ValueError)
        assert "raise ValueError" in caplog.text
        assert tracker.stats().failed == 1
        report = await tracker.shutdown(1)
        assert report.failed == 1

    with caplog.at_level(logging.INFO, logger="tether.tracker"):
        run(main)


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_exit_in_work_is_a_failure_not_a_crash(
    exc_type: type[BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    """SystemExit or KeyboardInterrupt in tracked work is a logged failure; the loop keeps going."""

    async def leave() -> None:
        raise exc_type(3) if exc_type is SystemExit else exc_type()

    async def main() -> None:
        tracker = Tracker()
        task = await tracker.spawn(leave(), name="leaver")
        await tracker.spawn(nap(0.01))
        report = await tracker.shutdown(5)
        assert (report.failed, report.completed) == (1, 1)
        exc = task.exception()
        assert isinstance(exc, BaseExceptionInWork)
        assert isinstance(exc.__cause__, exc_type)
        assert str(exc).startswith(f"tracked work 'leaver' raised {exc.original!r};")

    with caplog.at_level(logging.ERROR, logger="tether.tracker"):
        run(main)
    assert "tracked task 'leaver' failed" in caplog.text


def test_other_base_exceptions_are_failures() -> None:
    """A custom BaseException subclass raised in work is counted as a failure."""

    class Custom(BaseException):
        pass

    async def odd() -> None:
        raise Custom

    async def main() -> None:
        tracker = Tracker()
        await tracker.spawn(odd())
        report = await tracker.shutdown(5)
        assert report.failed == 1

    logging.getLogger("tether.tracker").disabled = True
    try:
        run(main)
    finally:
        logging.getLogger("tether.tracker").disabled = False


def test_work_cancelled_by_its_owner_is_counted_as_cancelled() -> None:
    """Work cancelled before shutdown is neither a failure nor abandoned."""

    async def main() -> None:
        tracker = Tracker()
        task = await tracker.spawn(wait_for_event(asyncio.Event()))
        await asyncio.sleep(0)
        task.cancel()
        report = await tracker.shutdown(5)
        assert (report.cancelled, report.failed, report.abandoned) == (1, 0, ())
        assert_invariant(tracker)

    run(main)


OUTCOME = {
    "instant": "completed",
    "yields": "completed",
    "fails": "failed",
    "cancels_itself": "cancelled",
    "hangs": "abandoned",
}


async def behave(kind: str) -> None:
    if kind == "yields":
        await asyncio.sleep(0)
    elif kind == "fails":
        raise ValueError(kind)
    elif kind == "cancels_itself":
        raise asyncio.CancelledError
    elif kind == "hangs":
        await asyncio.Event().wait()


@settings(max_examples=40, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(sorted(OUTCOME)), max_size=12),
    limit=st.sampled_from([None, 1, 3]),
)
def test_every_accepted_task_is_accounted_for(kinds: list[str], limit: int | None) -> None:
    """Whatever the mix of work and limit, each accepted task ends in exactly one counter."""
    accepted: list[str] = []

    async def spawner(tracker: Tracker) -> None:
        for kind in kinds:
            try:
                await tracker.spawn(behave(kind))
            except TrackerClosed:
                return
            accepted.append(kind)

    async def main() -> TrackerReport:
        tracker = Tracker(limit)
        feeding = asyncio.create_task(spawner(tracker))
        await asyncio.sleep(0.01)
        report = await tracker.shutdown(0.05, cancel_timeout=1)
        await feeding
        stats = tracker.stats()
        assert stats.running == 0
        assert stats.spawned == len(accepted)
        assert_invariant(tracker)
        return report

    logging.getLogger("tether.tracker").disabled = True
    try:
        report = run(main)
    finally:
        logging.getLogger("tether.tracker").disabled = False
    expected = {outcome: 0 for outcome in OUTCOME.values()}
    for kind in accepted:
        expected[OUTCOME[kind]] += 1
    got = {
        "completed": report.completed,
        "failed": report.failed,
        "cancelled": report.cancelled,
        "abandoned": len(report.abandoned),
    }
    assert got == expected


# -- the process's tracker -------------------------------------------------------------------


def test_module_spawn_without_a_tracker_says_how_to_fix_it() -> None:
    """tether.spawn outside `tether run` raises NoCurrentTracker naming the fix."""

    async def main() -> None:
        coro = nap(0)
        with pytest.raises(NoCurrentTracker) as info:
            spawn(coro)
        assert str(info.value) == (
            "tether.spawn(nap(...)) needs the process's tracker, and none is installed; "
            "run the app with `tether run`, or in a script or test install one with "
            "`tether.tracker.set_current_tracker(tether.Tracker())` and shut it down at the end"
        )
        assert_closed(coro)
        with pytest.raises(NoCurrentTracker, match=r"^tether\.current_tracker\(\) needs"):
            current_tracker()

    run(main)


def test_module_spawn_uses_the_installed_tracker() -> None:
    """tether.spawn starts tracked work on the installed tracker, without waiting."""

    async def main() -> None:
        tracker = Tracker(limit=1)
        previous = set_current_tracker(tracker)
        try:
            assert current_tracker() is tracker
            task = spawn(nap(0), name="fire-and-forget")
            assert task in tracker.tasks()
            with pytest.raises(TrackerFull):
                spawn(noop())
            report = await tracker.shutdown(5)
            assert report.completed == 1
        finally:
            assert set_current_tracker(previous) is tracker

    run(main)


# -- adoption --------------------------------------------------------------------------------


def test_tasks_created_in_a_request_scope_are_adopted() -> None:
    """Plain create_task in a request, and the tasks those tasks create, are tracked."""
    recorded: list[str] = []

    async def grandchild() -> None:
        await asyncio.sleep(0.02)
        recorded.append("grandchild")

    async def child() -> None:
        asyncio.get_running_loop().create_task(grandchild())
        await asyncio.sleep(0.02)
        recorded.append("child")

    async def handler() -> None:
        with request_scope("GET /events"):
            asyncio.create_task(child())  # noqa: RUF006 - the point: nobody keeps it

    async def main() -> None:
        tracker = Tracker()
        with install_adoption(tracker):
            await handler()
            await asyncio.sleep(0)
            assert tracker.stats().adopted == 2
            report = await tracker.shutdown(5)
        assert report.completed == 2
        assert tracker.stats().spawned == 2

    run(main)
    assert sorted(recorded) == ["child", "grandchild"]


def test_tasks_a_served_request_creates_are_adopted() -> None:
    """Through tether's server on a socket: the request's task, not its context, marks it.

    uvicorn keeps the tasks running requests in the set tether gives it
    (REQUESTS); a task one of them creates is adopted with the request's scope
    as its origin, and carries it in its context, so what that creates is
    adopted too; no_adoption() still opts out. The handler's own context is
    left alone (a context change per request made the garbage collector run a
    hundred times a second under load).
    """
    import socket

    from tether.group import Group
    from tether.serving import DrainHooks, HttpServer, ServeOptions

    seen: dict[str, Any] = {}

    async def grandchild() -> None:
        seen["grandchild"] = current_origin()

    async def child() -> None:
        seen["child"] = REQUEST_SCOPE.get()
        asyncio.create_task(grandchild())  # noqa: RUF006 - the point: nobody keeps it

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen["scope"] = scope
        seen["handler"] = current_origin()
        seen["handler's context"] = REQUEST_SCOPE.get()
        asyncio.create_task(child())  # noqa: RUF006
        with no_adoption():
            seen["lazy"] = asyncio.create_task(asyncio.sleep(0))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def main() -> None:
        tracker = Tracker()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        server = HttpServer(
            app, [sock], ServeOptions(lifespan="off"), DrainHooks(requests=REQUESTS)
        )
        group = Group("test", graceful_timeout=5, cancel_timeout=1)
        with install_adoption(tracker):
            await group.start(server.run, name="http")
            reader, writer = await asyncio.open_connection(*sock.getsockname())
            writer.write(b"GET /events HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            assert (await reader.read(-1)).startswith(b"HTTP/1.1 204")
            writer.close()
            group.stop("test over")
            await group.wait()
            assert not REQUESTS  # uvicorn discards each request's task when it ends
            assert tracker.stats().adopted == 2
            assert seen["lazy"] not in tracker.tasks()
            assert (await tracker.shutdown(5)).completed == 2
        scope = seen["scope"]
        assert seen["handler"] is seen["child"] is seen["grandchild"] is scope
        assert origin_label(scope) == "GET /events"
        assert seen["handler's context"] is None

    run(main)


def test_tasks_created_outside_a_request_are_not_adopted() -> None:
    """Lifespan-like tasks, created with no request scope, are left alone."""

    async def main() -> None:
        tracker = Tracker()
        stop = asyncio.Event()
        with install_adoption(tracker):
            background = asyncio.create_task(wait_for_event(stop))  # like a lifespan loop
            with request_scope(), no_adoption():
                lazy = asyncio.create_task(wait_for_event(stop))  # a lazily started loop
            await asyncio.sleep(0)
            assert tracker.stats().spawned == 0
            report = await tracker.shutdown(0)
        assert report.clean
        stop.set()
        await asyncio.gather(background, lazy)

    run(main)


def test_adoption_reads_the_context_the_task_is_given() -> None:
    """A task created with an explicit context is adopted if that context is in a request."""

    async def main() -> None:
        tracker = Tracker()
        with request_scope("POST /x"):
            ctx = contextvars.copy_context()
        with install_adoption(tracker):
            loop = asyncio.get_running_loop()
            loop.create_task(nap(0), context=ctx)  # noqa: RUF006
            with request_scope():
                loop.create_task(nap(0), context=contextvars.Context())  # noqa: RUF006
            assert tracker.stats().adopted == 1
            await tracker.shutdown(5)

    run(main)


def test_tasks_of_opted_out_modules_are_not_adopted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A library's lazily started loop is left alone once its module is opted out."""
    monkeypatch.setattr("tether._adoption._opted_out", ())
    no_adoption_for(__name__.rpartition(".")[0] or __name__)  # this test module: the "library"

    async def main() -> None:
        tracker = Tracker()
        stop = asyncio.Event()
        with install_adoption(tracker), request_scope("GET /sse"):
            watcher = asyncio.create_task(wait_for_event(stop))  # defined here: not adopted
            asyncio.create_task(asyncio.sleep(0))  # noqa: RUF006 - asyncio's: adopted
            await asyncio.sleep(0)
            assert tracker.stats().adopted == 1
            assert watcher not in tracker.tasks()
        assert (await tracker.shutdown(5)).clean
        stop.set()
        await watcher

    run(main)


@pytest.mark.parametrize("bad", ["", ".relative", 3])
def test_opt_out_takes_module_names(bad: Any) -> None:
    """Something that is not a module name is refused, saying what is expected."""
    with pytest.raises(ValueError, match="takes module names such as 'sse_starlette'"):
        no_adoption_for(bad)


def test_spawn_in_a_request_scope_is_not_counted_twice() -> None:
    """Work spawned explicitly from a request is tracked once, not also adopted."""

    async def main() -> None:
        tracker = Tracker()
        with install_adoption(tracker), request_scope():
            await tracker.spawn(nap(0))
            tracker.try_spawn(nap(0))
        stats = tracker.stats()
        assert (stats.spawned, stats.adopted, stats.running) == (2, 0, 2)
        await tracker.shutdown(5)

    run(main)


def test_adopted_exception_its_creator_handles_is_not_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A request helper whose exception the handler retrieves (Django's disconnect listener)."""

    class Aborted(Exception):
        pass

    async def listen_for_disconnect() -> None:
        raise Aborted

    async def handler() -> None:
        # Django's ASGIHandler.handle, in short: wait for the first task, read its result.
        with request_scope("GET /hits"):
            tasks = [asyncio.create_task(listen_for_disconnect()), asyncio.create_task(nap(0.05))]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done():
                with contextlib.suppress(Aborted):
                    task.result()
            else:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def main() -> None:
        tracker = Tracker()
        with install_adoption(tracker):
            await asyncio.gather(*(handler() for _ in range(20)))
            report = await tracker.shutdown(5)
        assert (report.failed, report.completed + report.cancelled) == (0, 40)
        assert_invariant(tracker)

    with caplog.at_level(logging.INFO, logger="tether.tracker"):
        run(main)
    assert "failed" not in caplog.text.replace("0 failed", "")


def test_adopted_exception_nobody_retrieves_is_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    """A fire-and-forget task from a request that raises is logged once, naming its request."""

    async def send_event() -> None:
        raise ValueError("the broker is down")

    async def main() -> None:
        tracker = Tracker()
        with install_adoption(tracker):
            with request_scope("POST /order"):
                asyncio.create_task(send_event(), name="send-event")  # noqa: RUF006
            while tracker.stats().failed == 0:
                await asyncio.sleep(0)
            assert_invariant(tracker)
            report = await tracker.shutdown(5)
        assert report.failed == 1

    with caplog.at_level(logging.ERROR):
        run(main)
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.name == "tether.tracker"
    assert record.getMessage() == "tracked task 'send-event' (started by POST /order) failed"


def test_abandoned_adopted_work_names_its_request() -> None:
    """An adopted task abandoned at the deadline is reported with the request that started it."""

    async def main() -> None:
        tracker = Tracker()
        with install_adoption(tracker):
            with request_scope("GET /slow"):
                asyncio.create_task(wait_for_event(asyncio.Event()), name="slow-event")  # noqa: RUF006
            report = await tracker.shutdown(0.01)
        [item] = report.abandoned
        assert (item.name, item.origin) == ("slow-event", "GET /slow")
        assert item.to_abandoned_work().detail == "cancelled; started by GET /slow"

    run(main)


def test_task_adopted_during_the_cancel_phase_is_cancelled_and_reported() -> None:
    """A task that cancelled work starts while unwinding is cancelled too, and reported."""

    async def unwinding() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            asyncio.create_task(noop(), name="cleanup-child")  # noqa: RUF006
            raise

    async def main() -> None:
        tracker = Tracker()
        with install_adoption(tracker):
            with request_scope():
                asyncio.create_task(unwinding(), name="unwinding")  # noqa: RUF006
            report = await tracker.shutdown(0.01)
        names = sorted(item.name for item in report.abandoned)
        assert names == ["cleanup-child", "unwinding"]
        assert_invariant(tracker)

    run(main)


def test_adoption_chains_to_the_previous_factory() -> None:
    """A factory installed before adoption still sees every task, and is restored afterwards."""
    seen: list[str] = []

    def recording_factory(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
    ) -> asyncio.Task[Any]:
        seen.append(getattr(coro, "__qualname__", "?"))
        return asyncio.Task(coro, loop=loop, **kwargs)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(recording_factory)  # type: ignore[arg-type]
        tracker = Tracker()
        adoption = install_adoption(tracker)
        with request_scope():
            asyncio.create_task(noop())  # noqa: RUF006
        asyncio.create_task(nap(0))  # noqa: RUF006
        await tracker.spawn(nap(0))
        assert tracker.stats().spawned == 2
        adoption.uninstall()
        assert loop.get_task_factory() is recording_factory
        adoption.uninstall()  # twice is harmless
        await tracker.shutdown(5)
        loop.set_task_factory(None)

    run(main)
    assert seen == ["noop", "nap", "_guarded"]


def test_uninstall_under_a_later_factory_keeps_the_chain() -> None:
    """Uninstalling adoption that a later factory chains to stops adopting, keeps that factory."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        tracker = Tracker()
        adoption = install_adoption(tracker)
        below = loop.get_task_factory()
        assert below is not None

        def later(
            loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
        ) -> asyncio.Future[Any]:
            return below(loop, coro, **kwargs)

        loop.set_task_factory(later)  # type: ignore[arg-type]
        adoption.uninstall()
        assert loop.get_task_factory() is later
        with request_scope():
            await asyncio.create_task(noop())
        assert tracker.stats().spawned == 0
        loop.set_task_factory(None)

    run(main)


@pytest.mark.parametrize("adoption_first", [True, False])
def test_adoption_chains_with_leak_detection(adoption_first: bool) -> None:
    """Adoption and tether.leaks' creation tracking chain in either order, and unwind."""
    from tether import leaks

    async def main() -> None:
        loop = asyncio.get_running_loop()
        before = loop.get_task_factory()  # tether's pytest plugin may have installed one
        tracker = Tracker()
        if adoption_first:
            adoption = install_adoption(tracker)
            leaks.install_creation_tracking()
        else:
            leaks.install_creation_tracking()
            adoption = install_adoption(tracker)
        with request_scope():
            await asyncio.create_task(nap(0))
        assert tracker.stats().adopted == 1
        if adoption_first:
            leaks.uninstall_creation_tracking()
            adoption.uninstall()
        else:
            adoption.uninstall()
            leaks.uninstall_creation_tracking()
        if before is None:  # no plugin's recorder left in place: everything unwound
            assert loop.get_task_factory() is None
        with request_scope():
            assert await asyncio.create_task(nap(0)) == "rested"
        assert tracker.stats().adopted == 1  # no longer adopting
        await tracker.shutdown(5)

    run(main)


def test_adoption_works_on_uvloop() -> None:
    """Adoption works on uvloop, the loop tether serves on."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        tracker = Tracker()
        with install_adoption(tracker):
            with request_scope():
                asyncio.create_task(nap(0.01))  # noqa: RUF006
            asyncio.create_task(noop())  # noqa: RUF006
            report = await tracker.shutdown(5)
        assert (report.completed, tracker.stats().adopted) == (1, 1)

    uvloop.run(main())


def test_request_scope_resets_the_variable() -> None:
    """request_scope sets REQUEST_SCOPE to its label only inside the block."""
    assert REQUEST_SCOPE.get() is None
    with request_scope("GET /a"):
        assert REQUEST_SCOPE.get() == "GET /a"
        with no_adoption():
            assert REQUEST_SCOPE.get() is None
    assert REQUEST_SCOPE.get() is None


def test_shutdown_by_an_absolute_deadline_cancels_at_that_moment() -> None:
    """shutdown(deadline=monotonic): stuck work is cancelled then, whatever came before the call."""

    async def stuck(event: asyncio.Event) -> None:
        await event.wait()

    async def main() -> tuple[float, TrackerReport]:
        tracker = Tracker()
        never = asyncio.Event()
        await tracker.spawn(stuck(never), name="stuck")
        began = time.monotonic()
        report = await tracker.shutdown(deadline=began + 0.2, cancel_timeout=1.0)
        return time.monotonic() - began, report

    took, report = run(main)
    assert 0.15 <= took < 1.0, took
    assert [a.name for a in report.abandoned] == ["stuck"]


def test_shutdown_takes_a_timeout_or_a_deadline() -> None:
    """Both, or neither: a TypeError that says so, and the tracker still takes work."""

    async def main() -> None:
        tracker = Tracker()
        with pytest.raises(TypeError, match="a timeout or a deadline, not both"):
            await tracker.shutdown(1.0, deadline=time.monotonic())
        with pytest.raises(TypeError, match="needs a timeout or a deadline"):
            await tracker.shutdown()
        assert not tracker.closed
        assert (await tracker.shutdown(deadline=time.monotonic() - 1.0)).completed == 0

    run(main)
