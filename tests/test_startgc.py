"""tether._startgc: the collector held for a start, released by its thresholds only."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from tether import _startgc
from waiting import POLL


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    """This process's thresholds, put back (and the module's state cleared) afterwards."""
    before = gc.get_threshold()
    try:
        yield before
    finally:
        _startgc.release()
        gc.set_threshold(*before)


def test_hold_turns_automatic_collection_off_and_release_puts_it_back(
    thresholds: tuple[int, int, int],
) -> None:
    """Held: the first threshold is 0 (and a second hold changes nothing); released: as before."""
    _startgc.hold()
    _startgc.hold()
    assert gc.get_threshold() == (0, *thresholds[1:])
    assert gc.isenabled()  # held by the threshold, not gc.disable()
    _startgc.release()
    assert gc.get_threshold() == thresholds


def test_thresholds_the_app_set_while_held_are_kept(thresholds: tuple[int, int, int]) -> None:
    """Thresholds an app set during the start are kept; a collector it disabled stays off."""
    _startgc.hold()
    gc.set_threshold(5000, 20, 20)
    gc.disable()
    try:
        _startgc.release(collect=True)
        assert gc.get_threshold() == (5000, 20, 20)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_release_collects_what_the_start_left(thresholds: tuple[int, int, int]) -> None:
    """``collect=True`` frees a cycle made while held (nothing else would have)."""
    freed: list[bool] = []

    class Cycle:
        def __init__(self) -> None:
            self.me = self

        def __del__(self) -> None:
            freed.append(True)

    _startgc.hold()
    Cycle()
    kept: list[list[object]] = [[] for _ in range(2000)]  # past the first threshold
    assert not freed
    _startgc.release(collect=True)
    assert freed == [True]
    del kept


def test_a_process_that_never_held_is_left_alone(thresholds: tuple[int, int, int]) -> None:
    """Nothing to catch up: no timer, and a release changes no threshold."""
    loop = asyncio.new_event_loop()
    try:
        assert _startgc.catch_up(loop) is None
    finally:
        loop.close()
    gc.set_threshold(1234, *thresholds[1:])
    _startgc.release(collect=True)
    assert gc.get_threshold()[0] == 1234


def test_a_process_that_never_held_freezes_at_once(thresholds: tuple[int, int, int]) -> None:
    """Not held (``tether.cli.main`` called from Python): ``--gc-freeze`` happens right away."""
    loop = asyncio.new_event_loop()
    try:
        assert _startgc.catch_up(loop, freeze=True) is None
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        loop.close()


def test_catch_up_releases_after_its_delay(
    thresholds: tuple[int, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scheduled on the loop, not done at once: the process serves first, then collects."""
    monkeypatch.setattr(_startgc, "CATCH_UP_DELAY", 0.05)

    async def main() -> float:
        _startgc.hold()
        handle = _startgc.catch_up(asyncio.get_running_loop())
        assert handle is not None
        assert gc.get_threshold()[0] == 0  # not yet
        start = asyncio.get_running_loop().time()
        while gc.get_threshold()[0] == 0:
            await asyncio.sleep(POLL)
        return asyncio.get_running_loop().time() - start

    waited = asyncio.run(main())
    assert waited >= 0.04
    assert gc.get_threshold() == thresholds
