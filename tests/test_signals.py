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
