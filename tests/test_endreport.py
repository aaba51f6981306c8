"""What a stopped process reports (tether._endreport): one abandoned report, the leftovers."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from types import FrameType

import pytest

from tether import leaks
from tether._endreport import holding, raise_problems, report_leftovers
from tether.errors import AbandonedWork, ShutdownAbandoned


def test_every_abandoned_item_is_in_one_report_beside_the_errors() -> None:
    """The group's and the engine's items merge into one ShutdownAbandoned; errors kept."""
    told: list[list[AbandonedWork]] = []
    group_item = AbandonedWork("member", "consumer", detail="cancelled at the deadline")
    engine_item = AbandonedWork("request", "GET /slow")
    problems: list[Exception] = [ShutdownAbandoned([group_item]), ValueError("bad row")]
    with pytest.raises(ExceptionGroup) as info:
        raise_problems(problems, [engine_item], told=told.append)
    error, abandoned = info.value.exceptions
    assert isinstance(error, ValueError)
    assert isinstance(abandoned, ShutdownAbandoned)
    assert abandoned.items == [group_item, engine_item] and told == [[group_item, engine_item]]
    raise_problems([], [])  # a clean stop raises nothing


def test_a_thread_the_app_left_running_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A thread started after the snapshot and still alive is named; it changes no outcome."""
    since = leaks.snapshot()
    release = threading.Event()
    thread = threading.Thread(target=release.wait, name="app-poller", daemon=True)
    thread.start()
    try:
        with caplog.at_level(logging.WARNING, logger="tether.runtime"):
            asyncio.run(report_leftovers(since, successor=None))
    finally:
        release.set()
        thread.join(5.0)
    assert "app-poller" in caplog.text


def test_stop_signals_do_nothing_while_held_and_their_handlers_come_back() -> None:
    """holding(): a signal sent in the block is ignored; the previous handler is restored."""
    seen: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        seen.append(signum)

    previous = signal.signal(signal.SIGUSR2, handler)
    try:
        with holding([signal.SIGUSR2]):
            os.kill(os.getpid(), signal.SIGUSR2)
        assert seen == [] and signal.getsignal(signal.SIGUSR2) is handler
        os.kill(os.getpid(), signal.SIGUSR2)
        assert seen == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)
