"""A master's opening: its first workers start before its event loop, and none outlives it.

Real processes and sockets on loopback; the "workers" are plain Python processes that
wait to be killed, so the test sees what the opening itself does with them.
"""

from __future__ import annotations

import os
import sys
import threading

import pytest

from tether._opening import open_master
from tether.config import RunConfig
from waiting import eventually

#: A stand-in for a worker: it holds what it inherited until it is killed.
SLEEPER = (sys.executable, "-c", "import time; time.sleep(60)")


def _cmdline(pid: int) -> list[bytes]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().split(b"\0")


def _alive(pid: int) -> bool:
    """Whether ``pid`` is still a child of this process that has not been reaped."""
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return False


def test_workers_the_master_never_adopted_are_killed_when_the_opening_closes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """open_master spawns the first generation at once; close() kills, reaps, unbinds it all."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    config = RunConfig(app="hello:app", workers=2, binds=("127.0.0.1:0",))
    opening = open_master(config, program=SLEEPER)
    pids = dict(opening.first_workers)
    sockets = opening.app_socks
    try:
        assert sorted(pids) == [1, 2]
        assert all(_alive(pid) for pid in pids.values())
        assert os.path.isdir(opening.rundir)
        assert opening.adopt(1, 2) is None  # only the first generation was spawned here
    finally:
        opening.close()
    assert not any(_alive(pid) for pid in pids.values())
    assert opening.first_workers == {}
    assert not os.path.exists(opening.rundir)
    assert all(s.fileno() == -1 for s in sockets)


def test_without_a_program_the_opening_binds_but_spawns_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A master that spawns its workers itself (gunicorn hooks, tests) gets only the sockets."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    opening = open_master(RunConfig(app="hello:app", workers=1, binds=("127.0.0.1:0",)))
    try:
        assert opening.first_workers == {}
        assert opening.app_socks[0].getsockname()[1] > 0
    finally:
        opening.close()


def test_with_a_second_thread_running_the_first_workers_are_exec_d_not_forked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fork copies one thread (a lock another held stays held): then the program is run."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    config = RunConfig(app="hello:app", workers=1, binds=("127.0.0.1:0",))
    forked: list[RunConfig] = []
    release = threading.Event()
    other = threading.Thread(target=release.wait, name="a log handler's thread")
    other.start()
    try:
        opening = open_master(config, program=SLEEPER, forked=forked.append)
        try:
            (pid,) = opening.first_workers.values()
            # Exec'd through sockets.spawn's /bin/sh trampoline, which execs the program next.
            eventually(
                lambda: _cmdline(pid)[:2] == [os.fsencode(SLEEPER[0]), b"-c"],
                "the program exec'd",
                10,
            )
            assert forked == []
        finally:
            opening.close()
    finally:
        release.set()
        other.join()
