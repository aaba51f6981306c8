"""What signals, reloads and an unusable temporary directory never do: take the service down.

Real processes and real signals. The last-resort hard stop fires
``graceful + 2 * cancel + 1`` seconds after a stop begins; with
``--graceful-timeout 0.5`` that is 5.5 s, so a service that is still serving
at twice that after a signal that is not a stop was never going to be ended by it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from masterproc import pids_gone
from waiting import eventually

from proc import Tether, get, tether, until_in_flight

GRACEFUL = 0.5
HARD_STOP = GRACEFUL + 2 * 2.0 + 1.0

VERSIONED = """
VERSION = {version!r}

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": VERSION.encode()}})
"""


def children(pid: int) -> set[int]:
    """The direct children of ``pid`` (a master's workers), from the kernel."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return {int(p) for p in f.read().split()}


def wait_for_status(t: Tether, text: str) -> None:
    while text not in t.wait_for("STATUS").get("STATUS", ""):
        pass


def test_usr1_and_a_failed_reload_never_end_the_service(tmp_path: Path) -> None:
    """USR1 (both modes) and HUP to a broken deploy: serving, same workers, at 2x the hard stop."""
    (tmp_path / "versioned.py").write_text(VERSIONED.format(version="v1"))
    grace = ("--graceful-timeout", str(GRACEFUL))
    with (
        tether("plain:app", *grace) as single,
        tether("plain:app", "--workers", "2", *grace) as master,
        tether("versioned:app", "--app-dir", str(tmp_path), *grace) as broken,
        ThreadPoolExecutor(2) as pool,
    ):
        for t in (single, master, broken):
            t.ready()
        assert master.proc is not None
        workers = children(master.proc.pid)
        # Requests in flight across the whole window: a hard stop would cut them.
        long = f"/slow?seconds={2 * HARD_STOP + 1}"
        slow = [pool.submit(get, t.port, long, 60) for t in (single, master)]
        until_in_flight(single, 1)
        (tmp_path / "versioned.py").write_text("def app(:\n")
        signalled = time.monotonic()
        single.signal(signal.SIGUSR1)
        master.signal(signal.SIGUSR1)
        broken.signal(signal.SIGHUP)
        wait_for_status(broken, "reload failed")
        for t in (single, master, broken):
            assert t.proc is not None
            left = max(0.0, signalled + 2 * HARD_STOP - time.monotonic())
            with pytest.raises(subprocess.TimeoutExpired):
                t.proc.wait(left)  # the event that must not happen: the process ending
        assert [f.result()[0] for f in slow] == [200, 200]
        assert children(master.proc.pid) == workers
        assert get(broken.port, "/")[:2] == (200, "v1")
        for t in (single, master, broken):
            t.signal(signal.SIGTERM)
        assert [t.wait() for t in (single, master, broken)] == [0, 0, 0]
        errors = {name: t.stderr() for name, t in [("single", single), ("master", master)]}
        errors["broken"] = broken.stderr()
    assert "task dump (SIGUSR1)" in errors["single"]
    assert "still serving with this one" in errors["broken"]
    for name, err in errors.items():
        assert "event loop does not answer" not in err, name
        assert "leaked" not in err, name


def test_term_after_a_reload_keeps_draining(tmp_path: Path) -> None:
    """--workers 0: one TERM during the drain a HUP began is not a second TERM; requests finish."""
    successor = 0
    with tether("plain:app") as t, ThreadPoolExecutor(5) as pool:
        first = int(t.wait_for("READY")["MAINPID"])
        # Long enough to outlast the successor's start on a loaded machine: the TERM must
        # reach the old process while it still drains them.
        slow = [pool.submit(get, t.port, "/slow?seconds=15", 60) for _ in range(5)]
        until_in_flight(t, 5)
        t.signal(signal.SIGHUP)
        try:
            successor = int(t.wait_for("READY")["MAINPID"])
            assert successor != first
            t.wait_for("STOPPING")  # the old process has begun the reload's drain
            t.signal(signal.SIGTERM)  # the operator's first TERM, while the old one drains
            assert [f.result()[0] for f in slow] == [200] * 5
            assert t.wait() == 0
            assert get(t.port, "/")[0] == 200  # the successor serves
        finally:
            if successor:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(successor, signal.SIGTERM)
                assert pids_gone([successor], 30) == []
        err = t.stderr()  # complete once the successor, which shares the pipe, is gone
    assert "SIGTERM received: already stopping" in err, err
    assert "abandoned at the deadline" not in err and "cancelling everything" not in err


@pytest.mark.parametrize("case", ["too long", "read-only"])
def test_unusable_runtime_dir_fails_a_reload_with_its_reason(tmp_path: Path, case: str) -> None:
    """--workers 0: a reload that cannot make its private socket says why and keeps serving."""
    if case == "too long":
        where = tmp_path / ("x" * 100)
        where.mkdir()
        env = {"TMPDIR": str(where)}
    else:
        where = Path("/sys")  # a directory nobody may create entries in, root included
        env = {"XDG_RUNTIME_DIR": str(where)}
    with tether("plain:app", **env) as t:  # type: ignore[arg-type]
        t.ready()
        t.signal(signal.SIGHUP)
        wait_for_status(t, "reload failed")
        assert get(t.port, "/")[0] == 200
        t.signal(signal.SIGTERM)
        assert t.wait() == 0
        err = t.stderr()
    assert "Traceback" not in err
    line = next(x for x in err.splitlines() if "reload failed" in x)
    _, _, message = line.partition(" ERROR tether.runtime: ")
    assert message.startswith(f"reload failed: cannot create tether's private sockets in {where}: ")
    assert message.endswith(
        "; point TMPDIR (or XDG_RUNTIME_DIR) at a short, writable directory; "
        "still serving with this one"
    ), line


@pytest.mark.parametrize("app", ["plain:app", "fastapi_sync:app", "import_thread:app"])
def test_clean_stops_report_no_leak(app: str) -> None:
    """Stopped cleanly again and again, a service reports nothing of tether's own as leaked.

    Nor what the app's import made for the life of the process (a logging thread).
    """
    for _ in range(3):
        with tether(app) as t:
            t.ready()
            assert get(t.port, "/")[0] == 200
            t.signal(signal.SIGTERM)
            assert t.wait() == 0
            err = t.stderr()
        assert "leaked" not in err, err
        assert "stopped cleanly" in err


def test_a_reload_reports_no_leak() -> None:
    """--workers 0: the process that handed over does not call its successor a leak."""
    successor = 0
    with tether("plain:app") as t:
        first = int(t.wait_for("READY")["MAINPID"])
        t.signal(signal.SIGHUP)
        try:
            successor = int(t.wait_for("READY")["MAINPID"])
            assert t.wait() == 0
        finally:
            if successor:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(successor, signal.SIGTERM)
                assert pids_gone([successor], 30) == []
        err = t.stderr()
    old = [line for line in err.splitlines() if f"[{first}]" in line]
    assert any("stopped cleanly" in line for line in old), err
    assert "leaked" not in err, err


@pytest.mark.parametrize("workers", ["0", "1"])
def test_signals_while_the_app_imports_do_not_end_it(tmp_path: Path, workers: str) -> None:
    """HUP, USR1, USR2, TTIN and TTOU that reach the importing process are harmless."""
    marker = tmp_path / "importing"
    env = {"SLOW_IMPORT_MARKER": str(marker), "SLOW_IMPORT_SECONDS": "60"}
    with tether("slow_import:app", "--workers", workers, **env) as t:  # type: ignore[arg-type]
        assert t.proc is not None
        # The app's import writes the marker and lasts until it is removed: signals sent
        # in between reach a process importing.
        proc = t.proc
        eventually(lambda: marker.exists() or proc.poll() is not None, "the import begun")
        assert proc.poll() is None, t.stderr()
        importing = int(marker.read_text())  # the worker, in master mode
        for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU):
            os.kill(importing, sig)
        marker.unlink()
        t.ready()
        assert get(t.port, "/")[:2] == (200, "ok")
        t.signal(signal.SIGTERM)
        assert t.wait() == 0
