"""Signals reach the event loop, the table says what each means, the previous handlers come back."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import pytest

from tether.signals import (
    HELD_WHILE_STARTING,
    IGNORE,
    MODES,
    SIGNALS,
    STOPPING,
    Mode,
    defer_stops,
    handle_signals,
    install,
    signum_for,
)


def test_signal_runs_callback_on_the_loop_and_restores_previous_handler() -> None:
    """USR2 during the block calls our callback on the loop; afterwards the old handler is back."""
    seen: list[str] = []

    def previous(signum: int, frame: FrameType | None) -> None:
        seen.append("previous")

    old = signal.signal(signal.SIGUSR2, previous)
    try:

        async def main() -> None:
            loop = asyncio.get_running_loop()
            got = loop.create_future()
            immediate: list[int] = []
            with handle_signals(loop, {signal.SIGUSR2: got.set_result}, immediate=immediate.append):
                os.kill(os.getpid(), signal.SIGUSR2)
                assert await asyncio.wait_for(got, 5) == signal.SIGUSR2
            assert immediate == [signal.SIGUSR2]
            assert signal.getsignal(signal.SIGUSR2) is previous

        asyncio.run(main())
        os.kill(os.getpid(), signal.SIGUSR2)
        assert seen == ["previous"]
    finally:
        signal.signal(signal.SIGUSR2, old)


def test_handler_is_a_method_of_the_owner_given() -> None:
    """With ``owner``, code written for uvicorn finds ``should_exit`` where it looks for it."""
    from tether.serving import DrainSignal

    drain = DrainSignal()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        got = loop.create_future()
        with handle_signals(loop, {signal.SIGUSR2: got.set_result}, owner=drain):
            handler = signal.getsignal(signal.SIGUSR2)
            assert getattr(handler, "__self__", None) is drain  # sse-starlette's lookup
            assert drain.should_exit is False
            os.kill(os.getpid(), signal.SIGUSR2)
            assert await asyncio.wait_for(got, 5) == signal.SIGUSR2

    old = signal.getsignal(signal.SIGUSR2)
    asyncio.run(main())
    assert signal.getsignal(signal.SIGUSR2) is old


# -- the table -------------------------------------------------------------------------

DEPLOY_MD = (Path(__file__).parent.parent / "docs" / "deploy.md").read_text()
README = (Path(__file__).parent.parent / "README.md").read_text()


class Recorder:
    """A handler with every ``handle_<action>``: each call puts (action, signum) on ``got``."""

    def __init__(self) -> None:
        self.got: asyncio.Queue[tuple[str, int]] = asyncio.Queue()

    def __getattr__(self, name: str) -> Callable[[int], None]:
        if not name.startswith("handle_"):
            raise AttributeError(name)
        action = name.removeprefix("handle_")

        def handle(signum: int) -> None:
            self.got.put_nowait((action, signum))

        return handle


def _dispositions() -> dict[int, object]:
    return {s: signal.getsignal(s) for s in signal.Signals if s not in _UNCATCHABLE}


_UNCATCHABLE = {signal.SIGKILL, signal.SIGSTOP}


@pytest.mark.parametrize("mode", MODES)
def test_install_routes_each_row_of_the_mode_to_its_method(mode: Mode) -> None:
    """Each signal of the mode's column, really sent, calls handle_<action>; nothing else moves."""
    before = _dispositions()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        recorder = Recorder()
        with install(loop, recorder, mode):
            during = _dispositions()
            for row in SIGNALS:
                action = row.action(mode)
                if action is None:
                    assert during[row.signum] is before[row.signum], row.name
                elif action == IGNORE:
                    assert during[row.signum] is signal.SIG_IGN, row.name
                else:
                    assert during[row.signum] is not before[row.signum], row.name
                    os.kill(os.getpid(), row.signum)
                    got = await asyncio.wait_for(recorder.got.get(), 5)
                    assert got == (action, row.signum)
            others = {s for s in during if s not in {row.signum for row in SIGNALS}}
            assert {s: during[s] for s in others} == {s: before[s] for s in others}

    asyncio.run(main())
    assert _dispositions() == before


def test_a_stop_deferred_before_the_masters_loop_is_delivered_once_it_installs() -> None:
    """defer_stops(): a TERM before install() neither kills nor is lost; it reaches the master."""
    before = _dispositions()
    try:
        defer_stops()
        os.kill(os.getpid(), signal.SIGTERM)  # the default action would end this process

        async def main() -> tuple[str, int]:
            recorder = Recorder()
            with install(asyncio.get_running_loop(), recorder, "master"):
                return await asyncio.wait_for(recorder.got.get(), 5)

        action, signum = asyncio.run(main())
        assert signum == signal.SIGTERM
        (row,) = [row for row in SIGNALS if row.signum == signal.SIGTERM]
        assert action == row.action("master")
    finally:
        for signum, handler in before.items():
            if signal.getsignal(signum) is not handler:
                signal.signal(signum, handler)  # type: ignore[arg-type]


def test_every_action_has_its_method_on_each_mode_handler() -> None:
    """A row whose action the master or the Service has no handle_<action> for fails here."""
    from tether.master import Master
    from tether.runtime import Service

    handlers: dict[Mode, type] = {"master": Master, "single": Service, "worker": Service}
    missing = [
        f"{handlers[mode].__name__}.handle_{action} ({row.name}, {mode})"
        for row in SIGNALS
        for mode in MODES
        if (action := row.action(mode)) not in (None, IGNORE)
        and not callable(getattr(handlers[mode], f"handle_{action}", None))
    ]
    assert not missing, f"no method for: {missing}"


def test_a_missing_method_raises_before_anything_is_installed() -> None:
    """install() names the missing handle_<action> and leaves every handler as it was."""

    class OnlyStops:
        def handle_stop(self, signum: int) -> None:
            """Not reached."""

        def handle_fast_stop(self, signum: int) -> None:
            """Not reached."""

    before = _dispositions()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        missing = r"OnlyStops has no handle_reload\(signum\), which HUP"
        with pytest.raises(TypeError, match=missing), install(loop, OnlyStops(), "master"):
            pass

    asyncio.run(main())
    assert _dispositions() == before


def test_what_the_rest_of_tether_reads_from_the_table() -> None:
    """Stops, the signals held while starting, the keeper's forwarding, the worker's resume."""
    from tether._init import FORWARDED
    from tether.worker import RESUME_SIGNAL

    assert {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT} == STOPPING
    # A starting process dies of a stop, and of nothing else in the table.
    assert not STOPPING & set(HELD_WHILE_STARTING)
    assert set(HELD_WHILE_STARTING) == {
        row.signum for row in SIGNALS if not row.stops and row.signum != signal.SIGCONT
    }
    assert not [row.name for row in SIGNALS if row.signum not in FORWARDED]
    assert signum_for("worker", "resume") == RESUME_SIGNAL
    # What a master sends its workers, and a --workers 0 process its successor.
    assert signum_for("worker", "stop") == signal.SIGTERM
    assert signum_for("worker", "fast_stop") == signal.SIGQUIT
    assert signum_for("worker", "dump") == signal.SIGUSR1
    assert signum_for("single", "stop") == signal.SIGTERM
    assert signum_for("single", "reload") == signal.SIGHUP
    with pytest.raises(LookupError, match="no signal asks 'upgrade' of a worker process"):
        signum_for("worker", "upgrade")


def _table_signals(text: str, heading: str) -> set[str]:
    """The signal names in the first column of the table under ``heading``."""
    section = text.split(heading, 1)[1]
    table = re.match(r"\s*((?:\|.*\n)+)", section)
    assert table is not None, f"no table under {heading}"
    rows = table.group(1).splitlines()[2:]  # past the header and the |---| line
    return {name for row in rows for name in re.findall(r"`([A-Z0-9]+)`", row.split("|")[1])}


def test_docs_deploy_signal_table_lists_every_row() -> None:
    """docs/deploy.md's signal table has a line for each row of SIGNALS, and no other signal."""
    documented = _table_signals(DEPLOY_MD, "### Signals and what they never do")
    assert documented == {row.name for row in SIGNALS}


def test_readme_signal_table_names_only_rows() -> None:
    """The README's shorter table names no signal the table does not handle."""
    documented = _table_signals(README, "### Signals\n")
    assert documented <= {row.name for row in SIGNALS}
