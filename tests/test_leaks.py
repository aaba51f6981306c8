"""tether.leaks: what is found, what is not, how it is reported, what is ignored."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tether import _creation, _leakscan, leaks
from tether.errors import TetherError
from tether.leaks import Leak, LeakError, LeakOptions

QUICK = LeakOptions(timeout=0.05)


@pytest.fixture
def tracking() -> Iterator[None]:
    """Record creation sites for the test, whether or not the pytest plugin already does."""
    _creation._track_new_loops()
    try:
        yield
    finally:
        _creation._untrack_new_loops()


def only(found: list[Leak], kind: str) -> Leak:
    """The single leak of ``kind`` in ``found``."""
    matching = [leak for leak in found if leak.kind == kind]
    assert len(matching) == 1, found
    return matching[0]


def functions(leak: Leak) -> list[str]:
    """The qualified function names of the leak's stack, outermost first."""
    return [frame.function for frame in leak.stack]


async def consume(queue: asyncio.Queue[int]) -> None:
    """The note's leak: wait for an item nobody will put."""
    await queue.get()


# -- the note's leak and the other kinds ---------------------------------------


def test_task_blocked_on_queue_get_is_reported_with_its_stack(tracking: None) -> None:
    """A task blocked forever on Queue.get() is reported, its stack ending in Queue.get."""

    async def main() -> None:
        queue: asyncio.Queue[int] = asyncio.Queue()
        since = leaks.snapshot()
        task = asyncio.create_task(consume(queue), name="consumer")
        with pytest.raises(LeakError) as caught:
            await leaks.averify_none(since, QUICK)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

        leak = only(caught.value.leaks, "task")
        assert (leak.name, leak.target) == ("consumer", "consume()")
        assert functions(leak) == ["test_leaks.consume", "asyncio.queues.Queue.get"]
        assert leak.stack[0].line == "await queue.get()"
        assert leak.waiting_on.startswith("<Future pending")
        assert leak.created_at is not None
        assert leak.created_at.function.endswith("with_its_stack.<locals>.main")
        assert "asyncio.create_task(consume(queue)" in leak.created_at.line
        message = str(caught.value)
        assert message.startswith("the checked code leaked 1 task:\n\ntask 'consumer': consume()")
        assert "in asyncio.queues.Queue.get\n      await getter" in message

    asyncio.run(main())


def test_thread_leak_is_reported() -> None:
    """A thread still running is reported with its target and where it blocks."""
    stop = threading.Event()
    since = leaks.snapshot()
    thread = threading.Thread(target=stop.wait, name="stuck")
    thread.start()
    try:
        found = leaks.find(since, QUICK)
    finally:
        stop.set()
        thread.join()
    leak = only(found, "thread")
    assert (leak.name, leak.target) == ("stuck", "threading.Event.wait")
    assert functions(leak)[-2:] == ["threading.Event.wait", "threading.Condition.wait"]
    assert leak.detail.startswith("non-daemon, native id ")
    assert leaks.find(since, QUICK) == []


def test_subprocess_leak_is_reported(tracking: None) -> None:
    """A child process still running is reported with its command line and creation site."""
    since = leaks.snapshot()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        leak = only(leaks.find(since, QUICK), "process")
    finally:
        child.kill()
        child.wait()
    assert leak.name == str(child.pid)
    assert leak.target == f"{sys.executable} -c 'import time; time.sleep(60)'"
    assert leak.waiting_on in ("sleeping", "running")
    assert leak.created_at is not None
    assert leak.created_at.function == "test_leaks.test_subprocess_leak_is_reported"
    assert leaks.find(since, QUICK) == []


def test_child_never_waited_for_is_reported_as_a_zombie() -> None:
    """A child that exited but was never waited for is still reported, as a zombie."""
    since = leaks.snapshot()
    child = subprocess.Popen(["true"])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
    try:
        leak = only(leaks.find(since, QUICK), "process")
    finally:
        child.wait()
    assert leak.waiting_on == "zombie: exited, never waited for"
    assert leak.target == "[true]"


def test_socket_leak_is_reported_with_its_address(tracking: None) -> None:
    """A listening socket left open is reported as an fd with its address and creation site."""
    since = leaks.snapshot()
    server = socket.socket()
    try:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        leak = only(leaks.find(since, QUICK), "fd")
    finally:
        server.close()
    assert leak.detail == "socket"
    assert leak.target == f"tcp 127.0.0.1:{port} LISTEN"
    assert leak.created_at is not None
    assert leak.created_at.line == "server = socket.socket()"
    assert leaks.find(since, QUICK) == []


def test_pipe_and_file_leaks_are_reported_by_kind(tmp_path: Any) -> None:
    """Both ends of a pipe and an open file are reported, each with its kind."""
    path = tmp_path / "data.txt"
    path.write_text("x")
    since = leaks.snapshot()
    read_end, write_end = os.pipe()
    file = path.open()
    file_fd = file.fileno()
    try:
        found = leaks.find(since, QUICK)
    finally:
        os.close(read_end)
        os.close(write_end)
        file.close()
    assert sorted((leak.detail, int(leak.name)) for leak in found) == [
        ("file", file_fd),
        ("pipe", read_end),
        ("pipe", write_end),
    ]
    assert [leak.target for leak in found if leak.detail == "file"] == [str(path)]
    assert str(LeakError(found)).startswith("the checked code leaked 3 fds:")


# -- not a leak -----------------------------------------------------------------


def test_task_finishing_50ms_after_the_body_is_not_reported() -> None:
    """Work that ends within the retry window is not a leak, and the check ends when it does."""

    async def main() -> float:
        since = leaks.snapshot()
        task = asyncio.create_task(asyncio.sleep(0.05))
        start = time.monotonic()
        await leaks.averify_none(since)
        assert task.done()
        return time.monotonic() - start

    assert asyncio.run(main()) < 0.4


def test_thread_finishing_50ms_after_the_body_is_not_reported() -> None:
    """A thread that ends 50 ms later is waited for, not reported."""
    since = leaks.snapshot()
    thread = threading.Thread(target=time.sleep, args=(0.05,))
    thread.start()
    leaks.verify_none(since)
    assert not thread.is_alive()


def test_what_existed_at_the_snapshot_is_not_reported() -> None:
    """A thread that was already running at the snapshot is not a leak."""
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        since = leaks.snapshot()
        assert leaks.find(since, QUICK) == []
    finally:
        stop.set()
        thread.join()


def test_a_clean_check_returns_without_waiting() -> None:
    """With nothing leaked, find() returns after one scan, not after the timeout."""
    since = leaks.snapshot()
    start = time.monotonic()
    assert leaks.find(since, LeakOptions(timeout=5)) == []
    assert time.monotonic() - start < 1


# -- every event loop -----------------------------------------------------------


def test_task_on_a_loop_in_another_thread_is_reported() -> None:
    """A task leaked on an event loop running in another thread is found from this one."""
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, name="other-loop")
    runner.start()
    stop = asyncio.Event()
    since = leaks.snapshot()
    asyncio.run_coroutine_threadsafe(_start_waiting(stop), loop).result(5)
    try:
        found = leaks.find(since, QUICK)
    finally:
        loop.call_soon_threadsafe(stop.set)
        loop.call_soon_threadsafe(loop.stop)
        runner.join()
        loop.close()
    leak = only(found, "task")
    assert leak.target == "Event.wait()"
    assert leak.detail == f"loop 0x{id(loop):x}, running in thread 'other-loop'"
    assert functions(leak) == ["asyncio.locks.Event.wait"]


async def _start_waiting(stop: asyncio.Event) -> None:
    """Start a task that waits for ``stop``, and let it reach its wait."""
    asyncio.get_running_loop().create_task(stop.wait())
    await asyncio.sleep(0)


def test_tasks_are_found_by_asking_each_loop_too() -> None:
    """The fallback used where Python has no process-wide task registry finds other loops' tasks."""
    loop = asyncio.new_event_loop()
    try:
        task = loop.create_task(asyncio.sleep(10))
        assert task in _leakscan._tasks_from_loops()
        task.cancel()
        loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
    finally:
        loop.close()


def test_a_task_awaiting_another_shows_both_stacks() -> None:
    """The await chain goes through an awaited task down to what that task waits on."""

    async def inner(queue: asyncio.Queue[int]) -> None:
        await queue.get()

    async def outer(queue: asyncio.Queue[int]) -> None:
        await asyncio.create_task(inner(queue), name="inner")

    async def main() -> list[Leak]:
        queue: asyncio.Queue[int] = asyncio.Queue()
        since = leaks.snapshot()
        task = asyncio.create_task(outer(queue), name="outer")
        found = await leaks.afind(since, QUICK)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return found

    found = {leak.name: leak for leak in asyncio.run(main())}
    assert [frame.function.rsplit(".", 1)[-1] for frame in found["outer"].stack] == [
        "outer",
        "awaiting task 'inner'",
        "inner",
        "get",
    ]
    assert "    ... awaiting task 'inner'" in found["outer"].describe()


# -- ignore options ---------------------------------------------------------------


async def _leak_a_consumer() -> tuple[leaks.Snapshot, asyncio.Task[None]]:
    """Start the note's leak and let it reach its wait (an unstarted task waits nowhere)."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    since = leaks.snapshot()
    task = asyncio.create_task(consume(queue))
    await asyncio.sleep(0)
    return since, task


@pytest.mark.parametrize(
    "options",
    [
        LeakOptions(ignore_top=(asyncio.Queue.get,)),
        LeakOptions(ignore_top=("Queue.get",)),
        LeakOptions(ignore_any=(consume,)),
        LeakOptions(ignore_any=("test_leaks.consume",)),
        LeakOptions(ignore_any=("asyncio",)),
        LeakOptions(ignore_creators=(_leak_a_consumer,)),
        LeakOptions(ignore=(lambda leak: leak.target == "consume()",)),
        LeakOptions(kinds=frozenset({"thread", "fd"})),
    ],
    ids=[
        "top-function",
        "top-name",
        "any-function",
        "any-name",
        "any-module",
        "creator",
        "predicate",
        "kinds",
    ],
)
def test_ignore_options_hide_the_queue_leak(tracking: None, options: LeakOptions) -> None:
    """Each ignore option, by function, name, module, creator, predicate or kind, hides the leak."""

    async def main() -> tuple[list[Leak], list[Leak]]:
        since, task = await _leak_a_consumer()
        ignored = await leaks.afind(since, options.replace(timeout=0.05))
        seen = await leaks.afind(since, QUICK)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return ignored, seen

    ignored, seen = asyncio.run(main())
    assert ignored == []
    assert [leak.target for leak in seen] == ["consume()"]


def test_ignore_top_does_not_match_outer_frames() -> None:
    """ignore_top looks at the innermost frame only; an outer function does not match."""

    async def main() -> list[Leak]:
        since, task = await _leak_a_consumer()
        found = await leaks.afind(since, timeout=0.05, ignore_top=(consume,))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return found

    assert len(asyncio.run(main())) == 1


def test_bad_options_are_rejected_with_the_fix() -> None:
    """A negative timeout or an unknown kind is refused, naming what is allowed."""
    with pytest.raises(ValueError, match=r"timeout must be seconds >= 0, got -1"):
        LeakOptions(timeout=-1)
    with pytest.raises(ValueError, match=r"unknown kinds \['coroutine'\]; pick from fd, process"):
        LeakOptions(kinds=frozenset({"coroutine"}))
    # A lone name where a tuple belongs is accepted rather than iterated letter by letter.
    lone: Any = "Queue.get"
    assert LeakOptions(ignore_top=lone).ignore_top == ("Queue.get",)


# -- verify_none, no_leaks --------------------------------------------------------


def test_leak_error_is_a_tether_error_and_an_assertion_error() -> None:
    """LeakError is caught as TetherError or AssertionError, and carries the leaks."""
    stop = threading.Event()
    since = leaks.snapshot()
    thread = threading.Thread(target=stop.wait, name="stuck")
    thread.start()
    try:
        with pytest.raises(TetherError) as caught:
            leaks.verify_none(since, QUICK, subject="the handler")
    finally:
        stop.set()
        thread.join()
    assert isinstance(caught.value, AssertionError)
    assert isinstance(caught.value, LeakError)
    assert [leak.name for leak in caught.value.leaks] == ["stuck"]
    assert str(caught.value).startswith("the handler leaked 1 thread:\n\nthread 'stuck'")
    assert str(caught.value).endswith("or ignore it on purpose with LeakOptions")


def test_verify_none_refuses_to_block_a_running_loop() -> None:
    """Inside a coroutine, the blocking verify_none points to averify_none."""

    async def main() -> None:
        with pytest.raises(RuntimeError, match=r"use `await afind\(...\)` or `await averify"):
            leaks.verify_none(leaks.snapshot())

    asyncio.run(main())


def test_no_leaks_as_a_context_manager() -> None:
    """`with no_leaks()` raises for a thread left running in the block."""
    stop = threading.Event()
    try:
        with pytest.raises(LeakError, match=r"^the block leaked 1 thread"), leaks.no_leaks(QUICK):
            threading.Thread(target=stop.wait).start()
    finally:
        stop.set()


def test_no_leaks_does_not_check_a_block_that_raised() -> None:
    """When the block raises, its error propagates and no check replaces it."""
    stop = threading.Event()
    try:
        with pytest.raises(KeyError), leaks.no_leaks(QUICK):
            threading.Thread(target=stop.wait).start()
            raise KeyError("boom")
    finally:
        stop.set()


def test_no_leaks_as_an_async_context_manager_and_decorator() -> None:
    """`async with no_leaks()` and `@no_leaks()` on a coroutine function check inside the loop."""

    @leaks.no_leaks(QUICK)
    async def leaky(queue: asyncio.Queue[int]) -> None:
        asyncio.get_running_loop().create_task(consume(queue))

    async def main() -> None:
        queue: asyncio.Queue[int] = asyncio.Queue()
        with pytest.raises(LeakError, match=r"leaky\(\) leaked 1 task"):
            await leaky(queue)
        with pytest.raises(LeakError, match=r"^the block leaked 1 task"):
            async with leaks.no_leaks(QUICK):
                asyncio.get_running_loop().create_task(consume(queue))
        async with leaks.no_leaks():
            asyncio.get_running_loop().create_task(asyncio.sleep(0.05))
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()

    asyncio.run(main())


def test_no_leaks_decorates_a_plain_function() -> None:
    """`@no_leaks()` on a plain function returns its result when nothing leaks."""

    @leaks.no_leaks(timeout=0.05)
    def tidy(x: int) -> int:
        thread = threading.Thread(target=lambda: None)
        thread.start()
        thread.join()
        return x * 2

    assert tidy(21) == 42


# -- creation tracking ----------------------------------------------------------


def test_creation_tracking_chains_to_the_previous_factory_and_restores_it() -> None:
    """Tasks go through the factory installed before; uninstalling gives it back."""
    made: list[str] = []

    def previous(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        made.append("previous")
        return asyncio.Task(coro, loop=loop, **kwargs)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        leaks.uninstall_creation_tracking(loop)  # the plugin's, if any
        loop.set_task_factory(previous)
        with leaks.creation_tracking(loop):
            task = asyncio.create_task(asyncio.sleep(0), name="chained")
            assert task.get_name() == "chained"
            assert made == ["previous"]
            site = _creation.task_site(task)
            assert site is not None
            assert site[0].co_name == "main"
            await task
        assert loop.get_task_factory() is previous

    asyncio.run(main())


def test_a_factory_installed_after_tracking_still_gets_the_right_site() -> None:
    """A factory chained on top of ours (as the Tracker's) does not become the creation site."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        leaks.install_creation_tracking(loop)
        ours = loop.get_task_factory()
        assert ours is not None

        def outer(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
            return ours(loop, coro, **kwargs)

        loop.set_task_factory(outer)
        task = asyncio.create_task(asyncio.sleep(0))
        leaks.uninstall_creation_tracking(loop)
        assert loop.get_task_factory() is outer  # ours stays in the chain, passing through
        site = _creation.task_site(task)
        assert site is not None
        assert site[0].co_name == "main"
        await task
        untracked = asyncio.create_task(asyncio.sleep(0))
        assert _creation.task_site(untracked) is None
        await untracked
        loop.set_task_factory(None)

    asyncio.run(main())
