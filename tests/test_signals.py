"""Signals reach the event loop, and the previous handlers come back."""

from __future__ import annotations

import asyncio
import os
import signal
from types import FrameType

from tether.signals import handle_signals


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
