"""The master's pool and upgrader through a fake spawn seam: the policy, in milliseconds.

Children here are :class:`FakeChild`: an exit future the test resolves, and a
record of the signals sent. Notifications are handed to the pool as the
master's reader would. The real-process tests (``test_master*.py``) show the
same behaviour end to end.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest

from tether._children import Child, describe_exit
from tether.config import RunConfig
from tether.errors import ShutdownAbandoned, StartupError
from tether.master.pool import BACKOFF_MAX, Pool, PoolHooks
from tether.master.upgrade import Upgrader
from tether.notify import NotifyMessage

#: Fake pids above any real pid_max, so a renice or a signal could never hit a real process.
FIRST_PID = 10_000_000


class FakeChild:
    """A child whose life the test decides: TERM/QUIT end it cleanly unless ``stubborn``."""

    def __init__(self, pid: int, *, stubborn: bool = False) -> None:
        self.pid = pid
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.signals: list[int] = []
        self.stubborn = stubborn

    @property
    def alive(self) -> bool:
        return not self.exited.done()

    def exit(self, code: int) -> None:
        if not self.exited.done():
            self.exited.set_result(code)

    def signal(self, sig: int) -> bool:
        if not self.alive:
            return False
        self.signals.append(sig)
        if sig == signal.SIGKILL:
            asyncio.get_running_loop().call_soon(self.exit, -signal.SIGKILL)
        elif sig in (signal.SIGTERM, signal.SIGQUIT) and not self.stubborn:
            asyncio.get_running_loop().call_soon(self.exit, 0)
        return True

    def kill(self) -> bool:
        return self.signal(signal.SIGKILL)

    def describe_exit(self) -> str:
        return describe_exit(self.exited.result())

    async def wait(self, within: float | None = None) -> int | None:
        try:
            async with asyncio.timeout(within):
                return await asyncio.shield(self.exited)
        except TimeoutError:
            return None

    def close(self) -> None:
        pass


class FakeOS:
    """The spawn seam: every child started, and a switch to make the OS refuse."""

    def __init__(self) -> None:
        self.children: list[FakeChild] = []
        self.refuse: OSError | None = None
        self.stubborn = False

    def spawn(self, wid: int, generation: int) -> tuple[Child, str | None]:
        if self.refuse is not None:
            raise self.refuse
        child = FakeChild(FIRST_PID + len(self.children), stubborn=self.stubborn)
        self.children.append(child)
        return cast(Child, child), None

    def last(self, n: int = 1) -> list[FakeChild]:
        return self.children[-n:]


def make_pool(fake: FakeOS, workers: int = 2, **options: Any) -> Pool:
    config = RunConfig(app="x:app", workers=workers, **options)
    return Pool(config, fake.spawn, PoolHooks(prioritise=lambda pid, level: None))


def ready(pool: Pool, *children: FakeChild) -> None:
    for child in children:
        pool.on_notification(NotifyMessage(child.pid, 0, {"READY": "1"}))


def say(pool: Pool, child: FakeChild, **fields: str) -> None:
    pool.on_notification(NotifyMessage(child.pid, 0, fields))


async def settle() -> None:
    """Let every callback and task that is ready run (no time passes)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def serving(pool: Pool, fake: FakeOS) -> asyncio.Future[None]:
    """Start the pool's first generation, make it READY, and serve (the task serving)."""
    start = asyncio.ensure_future(pool.start())
    await settle()
    ready(pool, *fake.children)
    await start
    return asyncio.ensure_future(pool.serve())


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def test_a_generation_is_promoted_once_every_worker_is_ready() -> None:
    """start() returns when both workers said READY; the pool then serves generation 1."""

    async def scenario() -> None:
        fake = FakeOS()
        pool = make_pool(fake)
        start = asyncio.ensure_future(pool.start())
        await settle()
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
        start = asyncio.ensure_future(pool.start())
        await settle()
        first, second = fake.children
        say(pool, first, STATUS="failed: cannot import 'app'")
        first.exit(3)
        with pytest.raises(StartupError) as info:
            await start
        assert str(info.value).endswith("exited with code 3 before READY")
        assert second.signals == [signal.SIGKILL]
        await pool.close()

    run(scenario)


def test_a_sibling_failing_after_one_serves_is_replaced_not_fatal() -> None:
    """Worker 1 READY, worker 2 exits 3: the generation serves and slot 1 is restarted."""

    async def scenario() -> None:
        fake = FakeOS()
        pool = make_pool(fake)
        start = asyncio.ensure_future(pool.start())
        await settle()
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
        start = asyncio.ensure_future(pool.start())
        await settle()
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


def test_a_reload_starts_its_workers_at_a_low_priority_until_ready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """First generation: untouched. A reload's workers: idle class, then niced, then normal.

    A worker not ready after STARTING_IDLE_FOR is raised to "low" (a saturated host must
    not hold a reload back for ever); READY gives it "normal"; one that exits first is
    never touched again.
    """
    monkeypatch.setattr("tether.master.priority.STARTING_IDLE_FOR", 0.05)
    calls: list[tuple[int, str]] = []

    async def scenario() -> None:
        fake = FakeOS()
        config = RunConfig(app="x:app", workers=2)
        raised = asyncio.Event()

        def prioritise(pid: int, level: str) -> None:
            calls.append((pid, level))
            if level == "low":
                raised.set()

        hooks = PoolHooks(prioritise=prioritise)
        pool = Pool(config, fake.spawn, hooks)
        serve = await serving(pool, fake)
        assert calls == []  # the first generation takes the CPU it needs
        outcome = pool.request("reload")
        await settle()
        quick, slow = fake.last(2)
        assert calls == [(quick.pid, "idle"), (slow.pid, "idle")]
        ready(pool, quick)
        assert calls[-1] == (quick.pid, "normal")
        await asyncio.wait_for(raised.wait(), 5)
        assert calls[-1] == (slow.pid, "low")  # still starting after STARTING_IDLE_FOR
        ready(pool, slow)
        assert (await outcome)["ok"] is True
        assert calls[-1] == (slow.pid, "normal")
        calls.clear()
        outcome = pool.request("reload")
        await settle()
        broken, other = fake.last(2)
        broken.exit(3)
        await outcome
        await other.exited  # the failed reload kills its sibling too
        await settle()
        assert not pool.priority.pending()  # neither will be raised later: their timers are gone
        assert calls == [(broken.pid, "idle"), (other.pid, "idle")]
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
    monkeypatch.setattr("tether.master.pool.STACKS_GRACE", 0.01)
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


def test_a_heartbeat_waiting_in_the_socket_saves_the_worker() -> None:
    """The watchdog reads pending notifications first: a queued heartbeat re-arms it."""

    async def scenario() -> None:
        fake = FakeOS()
        pending: list[NotifyMessage] = []
        config = RunConfig(app="x:app", workers=1, watchdog_timeout=0.05)
        pool = Pool(config, fake.spawn, PoolHooks(pending=lambda: pending, prioritise=_no_priority))
        start = asyncio.ensure_future(pool.start())
        await settle()
        (child,) = fake.children
        ready(pool, child)
        await start
        pending.append(NotifyMessage(child.pid, 0, {"WATCHDOG": "1"}))
        await asyncio.sleep(0.08)  # the timer fires; the heartbeat was only in the socket
        assert child.signals == []
        pending.clear()
        await asyncio.sleep(0.2)  # now silence for real
        assert signal.SIGUSR1 in child.signals
        await pool.close()

    run(scenario)


def _no_priority(pid: int, level: str) -> None:
    pass


def test_a_stop_during_the_first_start_drains_the_worker_already_ready() -> None:
    """Stopped while worker 1 is READY and worker 2 starts: both get TERM, none SIGKILL."""

    async def scenario() -> None:
        fake = FakeOS()
        pool = make_pool(fake)
        start = asyncio.ensure_future(pool.start())
        await settle()
        first, second = fake.children
        ready(pool, first)
        await settle()
        start.cancel()
        with pytest.raises(asyncio.CancelledError):
            await start
        assert first.signals == [] and second.signals == []
        await pool.stop_workers(fast=False)
        assert first.signals == [signal.SIGTERM] and second.signals == [signal.SIGTERM]
        await pool.close()

    run(scenario)


def test_a_stop_during_a_reload_drains_the_new_workers_already_ready() -> None:
    """Stopped mid-reload with one new worker READY: it drains (TERM); none is killed."""

    async def scenario() -> None:
        fake = FakeOS()
        pool = make_pool(fake)
        serve = await serving(pool, fake)
        pool.request("reload")
        await settle()
        new_first, _starting = fake.last(2)
        ready(pool, new_first)
        await settle()
        serve.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serve
        await pool.stop_workers(fast=False)
        assert all(child.signals == [signal.SIGTERM] for child in fake.children)
        assert pool.active is not None and pool.active.number == 1
        await pool.close()

    run(scenario)


def test_a_stop_with_a_stuck_worker_reports_it_abandoned() -> None:
    """A worker that ignores TERM past the budget is killed and named in ShutdownAbandoned."""

    async def scenario() -> None:
        fake = FakeOS()
        fake.stubborn = True
        config = RunConfig(app="x:app", workers=1, graceful_timeout=0.0, cancel_timeout=0.0)
        pool = Pool(config, fake.spawn, PoolHooks(prioritise=_no_priority))
        start = asyncio.ensure_future(pool.start())
        await settle()
        ready(pool, *fake.children)
        await start
        with pytest.raises(ShutdownAbandoned) as info:
            await pool.stop_workers(fast=False)
        assert info.value.items[0].detail == "killed at the deadline"
        assert fake.children[0].signals == [signal.SIGTERM, signal.SIGKILL]
        await pool.close()

    run(scenario)


def test_the_upgrader_hands_over_only_to_a_ready_new_master() -> None:
    """One wait: READY from the new master's pid → its pid; its exit first → why, and no pid."""

    async def scenario() -> None:
        started: list[FakeChild] = []

        def start(*_args: Any, **_kwargs: Any) -> tuple[Child, list[int]]:
            child = FakeChild(FIRST_PID + len(started))
            started.append(child)
            return cast(Child, child), []

        upgrader = Upgrader(argv=["x"], cwd="/", env={}, sockets=list, timeout=5, start=start)
        attempt = asyncio.ensure_future(upgrader.upgrade())
        await settle()
        started[0].exit(1)
        assert await attempt == (None, f"the new master (pid {FIRST_PID}) exited with code 1")
        attempt = asyncio.ensure_future(upgrader.upgrade())
        await settle()
        assert not upgrader.on_notification(NotifyMessage(42, 0, {"READY": "1"}))
        assert upgrader.on_notification(NotifyMessage(started[1].pid, 0, {"READY": "1"}))
        assert await attempt == (started[1].pid, "")
        await upgrader.close()

    run(scenario)


def test_the_masters_own_stall_kills_no_worker() -> None:
    """A watchdog timer that fires late (this loop was blocked) gives the worker a new period."""

    async def scenario() -> None:
        fake = FakeOS()
        config = RunConfig(app="x:app", workers=1, watchdog_timeout=0.05)
        pool = Pool(config, fake.spawn, PoolHooks(prioritise=_no_priority))
        start = asyncio.ensure_future(pool.start())
        await settle()
        (child,) = fake.children
        ready(pool, child)
        await start
        time.sleep(1.2)  # the master itself does not run (the scenario, not a wait)
        await asyncio.sleep(0.01)  # the overdue timer fires now
        assert child.signals == []
        await asyncio.sleep(0.1)  # a whole period of real silence from the worker
        assert signal.SIGUSR1 in child.signals
        await pool.close()

    run(scenario)


def test_the_pool_tells_its_hooks_each_exit_restart_cause_and_reload() -> None:
    """What /metrics counts: a reload's outcome, every exit, restarts by cause (crash, watchdog)."""

    async def scenario() -> None:
        fake = FakeOS()
        exited: list[int] = []
        causes: list[str] = []
        reloads: list[dict[str, Any]] = []
        hooks = PoolHooks(
            prioritise=_no_priority,
            exited=lambda w: exited.append(w.pid),
            restarted=causes.append,
            reloaded=reloads.append,
        )
        pool = Pool(RunConfig(app="x:app", workers=1, watchdog_timeout=0.2), fake.spawn, hooks)
        serve = await serving(pool, fake)
        (first,) = fake.children
        outcome = pool.request("reload")
        await settle()
        (second,) = fake.last()
        ready(pool, second)
        assert (await outcome)["ok"]
        await settle()
        assert [r["generation"] for r in reloads] == [2] and reloads[0]["ok"]
        assert exited == [first.pid] and causes == []  # drained by the reload: no restart
        second.exit(1)  # a crash while serving
        await settle()
        (third,) = fake.last()
        assert causes == ["crash"] and exited == [first.pid, second.pid]
        ready(pool, third)  # then silent: the watchdog asks for stacks and kills it
        async with asyncio.timeout(10):
            await third.exited
        await settle()
        assert third.signals == [signal.SIGUSR1, signal.SIGKILL]
        assert causes == ["crash", "watchdog"] and exited[-1] == third.pid
        serve.cancel()
        await pool.close()

    run(scenario)


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
        start = asyncio.ensure_future(pool.start())
        await settle()
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
