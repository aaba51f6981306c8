"""The keeper (tether._init) when it is itself killed outright: nothing stays behind.

`tether run` without a ``NOTIFY_SOCKET`` keeps the pid its parent started as
a small keeper and serves from a child. A user who `kill -9`s that pid (or a
supervisor that gives up on it) must not leave the service running with
nobody holding its pid: the kernel tells the child, which stops as on TERM.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest

from waiting import eventually

from proc import Tether


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state[state.rfind(b")") + 2 :].startswith(b"Z")  # exited, not yet reaped


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_killed_keeper_takes_its_service_down(workers: str) -> None:
    """SIGKILL to the pid a user started: the service it kept (and its workers) stop too."""
    t = Tether(["family:app", "--workers", workers, "--no-access-log", "--no-debug"])
    t.prefix = ["env", "-u", "NOTIFY_SOCKET"]  # nobody follows MAINPID=: a keeper forks
    t.args += ["--bind", f"127.0.0.1:{t.port}"]
    t.start()
    kept: list[int] = []
    try:
        assert t.proc is not None
        t.wait_for_log("serving family:app")
        (service,) = _children(t.proc.pid)
        below = _children(service)  # a master's workers (none with --workers 0)
        kept = [service, *below]
        assert len(below) == int(workers)
        os.kill(t.proc.pid, signal.SIGKILL)
        assert t.proc.wait(10) == -signal.SIGKILL
        eventually(lambda: all(map(_gone, kept)), "the service gone", 20)
        assert "stopped cleanly" in t.stderr()
    finally:
        for pid in kept:  # what the old keeper left behind: it holds the test's pipes
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        t.close()
