"""gc.freeze once the app has started: on by default in both modes, off with --no-gc-freeze."""

from __future__ import annotations

import signal

import pytest

from proc import get, tether


@pytest.mark.parametrize("workers", ["0", "1"])
@pytest.mark.parametrize("flag", [None, "--no-gc-freeze"])
def test_startup_objects_are_frozen_unless_asked_not_to(workers: str, flag: str | None) -> None:
    """The serving process has frozen what its startup made; the flag reaches workers too.

    The garbage startup left behind is collected first, not frozen for the process's life.
    """
    extra = [flag] if flag else []
    with tether("gcinfo:app", "--workers", workers, *extra) as t:
        t.ready()
        frozen, collected = get(t.port, "/")[1].split()
        t.signal(signal.SIGTERM)
        assert t.wait() == 0
    if flag:
        assert frozen == "0"
    else:
        assert int(frozen) > 10_000  # the interpreter, uvicorn and the app: tens of thousands
        assert collected == "True"
