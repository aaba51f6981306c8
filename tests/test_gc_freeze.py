"""The collector during a start and after it, in both modes.

Held off while the process starts (tether._startgc), caught up a second after
it serves: startup's garbage collected, what survived frozen (unless
--no-gc-freeze), the thresholds back.
"""

from __future__ import annotations

import gc
import signal

import pytest

from waiting import eventually

from proc import get, tether

DEFAULT_THRESHOLD = gc.get_threshold()[0]  # the pytest process never holds


@pytest.mark.parametrize("workers", ["0", "1"])
@pytest.mark.parametrize("flag", [None, "--no-gc-freeze"])
def test_startup_objects_are_frozen_unless_asked_not_to(workers: str, flag: str | None) -> None:
    """The serving process has frozen what its startup made; the flag reaches workers too.

    The garbage startup left behind is collected first, not frozen for the process's life;
    automatic collection was off while the app was imported and is back once caught up.
    """
    extra = [flag] if flag else []
    with tether("gcinfo:app", "--workers", workers, *extra) as t:
        t.ready()

        def caught_up() -> list[str] | None:
            state = get(t.port, "/")[1].split()
            return state if state[3] == str(DEFAULT_THRESHOLD) else None

        frozen, collected, at_import, _now = eventually(caught_up, "the collector caught up")
        t.signal(signal.SIGTERM)
        assert t.wait() == 0
    assert at_import == "0"  # held while the app was imported
    assert collected == "True"
    if flag:
        assert frozen == "0"
    else:
        assert int(frozen) > 10_000  # the interpreter, uvicorn and the app: tens of thousands
