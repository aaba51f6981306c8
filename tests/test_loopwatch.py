"""LoopWatch: a blocked event loop is logged from a thread while it is blocked, once."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Iterator

import pytest

from tether._loopwatch import LoopWatch


class Records(logging.Handler):
    """The tether.runtime records, and an event per message kind as it arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []
        self.blocked = threading.Event()
        #: Resolved by the "unblocked" record, which the loop thread itself writes.
        self.unblocked: asyncio.Future[str] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.messages.append(message)
        if "loop blocked" in message:
            self.blocked.set()
        elif "unblocked" in message and self.unblocked and not self.unblocked.done():
            self.unblocked.set_result(message)


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("tether.runtime")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def hold_the_loop(until: threading.Event) -> None:
    """Blocks the calling (loop) thread until ``until`` is set, at most 10 s."""
    until.wait(10)


def watch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "tether-loop-watch"]


def test_a_block_is_reported_once_while_it_lasts_and_a_short_one_never(records: Records) -> None:
    """A 50 ms block under a 200 ms threshold says nothing; a long one, one line with its stack."""

    async def main() -> None:
        watch = LoopWatch(0.2)
        watch.enable()
        watch.traffic(True)
        try:
            time.sleep(0.05)  # shorter than the threshold
            await asyncio.sleep(0)
            records.unblocked = asyncio.get_running_loop().create_future()
            hold_the_loop(records.blocked)  # released by the report itself
            assert records.blocked.is_set(), "no report within 10 s"
            await asyncio.wait_for(records.unblocked, 5)
        finally:
            watch.close()

    asyncio.run(main())
    blocked = [m for m in records.messages if "loop blocked" in m]
    assert len(blocked) == 1, records.messages
    assert "in hold_the_loop" in blocked[0] and "until.wait(10)" in blocked[0]
    assert re.search(r"the loop thread ran \d+\.\d\ds on a CPU and waited", blocked[0])
    assert any(m.startswith("event loop unblocked after at least 0.") for m in records.messages)
    assert not watch_threads()


def test_no_thread_before_traffic_and_none_after_close(records: Records) -> None:
    """The thread starts with the first connection once enabled, and close joins it."""

    async def main() -> None:
        watch = LoopWatch(0.2)
        watch.traffic(True)  # before serving: not watched
        assert not watch_threads()
        watch.enable()  # serving, a connection is open: watched now
        assert len(watch_threads()) == 1
        watch.traffic(False)
        watch.close()

    asyncio.run(main())
    assert not watch_threads()
    assert records.messages == []
