"""A pool with fake children: the spawn seam of tether.master.pool, for its policy tests.

Children here are :class:`FakeChild`: an exit future the test resolves, and a
record of the signals sent. Notifications are handed to the pool as the
master's reader would. The real-process tests (``test_master*.py``,
``test_recycling.py``) show the same behaviour end to end.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any, cast

from tether._children import Child, describe_exit
from tether.config import RunConfig
from tether.master.pool import Pool, PoolHooks
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


async def starting(pool: Pool) -> asyncio.Future[None]:
    """Start the pool's first generation; the start, once its workers are spawned."""
    start = asyncio.ensure_future(pool.start())
    await settle()
    return start


async def serving(pool: Pool, fake: FakeOS) -> asyncio.Future[None]:
    """Start the pool's first generation, make it READY, and serve (the task serving)."""
    start = await starting(pool)
    ready(pool, *fake.children)
    await start
    return asyncio.ensure_future(pool.serve())


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())
