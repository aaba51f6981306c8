"""`tether run --workers 0`: HUP hands the sockets to a fresh copy of the process."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from masterproc import pids_gone

from proc import get, tether

APP = """
VERSION = {version!r}

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = VERSION.encode()
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": body}})
"""


def write_app(directory: Path, version: str) -> None:
    (directory / "versioned.py").write_text(APP.format(version=version))


def test_hup_hands_over_to_new_code_and_old_process_exits(tmp_path: Path) -> None:
    """After HUP the new process serves the new code on the same port; the old one exits 0."""
    write_app(tmp_path, "v1")
    successor = 0
    with tether("versioned:app", "--workers", "0", "--app-dir", str(tmp_path)) as t:
        first = t.wait_for("READY")
        assert get(t.port, "/")[1] == "v1"
        write_app(tmp_path, "v2")
        t.signal(signal.SIGHUP)
        try:
            second = t.wait_for("READY")
            successor = int(second["MAINPID"])
            assert successor != int(first["MAINPID"])
            assert t.wait() == 0
            assert get(t.port, "/")[1] == "v2"
            assert get(t.debug_port, "/readyz")[0] == 200
        finally:
            if successor:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(successor, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while successor and time.monotonic() < deadline:
        try:
            os.kill(successor, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)


def test_broken_deploy_keeps_the_old_process_serving(tmp_path: Path) -> None:
    """A HUP with a syntax error on disk: the copy fails, every request meanwhile succeeds."""
    write_app(tmp_path, "v1")
    with tether("versioned:app", "--workers", "0", "--app-dir", str(tmp_path)) as t:
        t.ready()
        (tmp_path / "versioned.py").write_text("def app(:\n")
        answers: list[tuple[int, str]] = []
        done = threading.Event()

        def load() -> None:
            while not done.is_set():
                answers.append(get(t.port, "/")[:2])

        with ThreadPoolExecutor(1) as pool:
            pool.submit(load)
            t.signal(signal.SIGHUP)
            while "reload failed" not in t.wait_for("STATUS").get("STATUS", ""):
                pass
            done.set()
        assert t.proc is not None and t.proc.poll() is None
        assert answers
        assert set(answers) == {(200, "v1")}
        assert get(t.debug_port, "/readyz")[0] == 200
        t.signal(signal.SIGTERM)
        assert t.wait() == 0
        err = t.stderr()
    assert "reload failed: the new process" in err
    assert "exited with code 3" in err
    assert "SyntaxError" in err


def test_a_stop_during_a_reload_reaches_the_new_process(tmp_path: Path) -> None:
    """HUP then TERM at once: the copy that was starting becomes ready, is stopped too, exits."""
    write_app(tmp_path, "v1")
    with tether("versioned:app", "--workers", "0", "--app-dir", str(tmp_path)) as t:
        first = int(t.wait_for("READY")["MAINPID"])
        t.signal(signal.SIGHUP)
        t.signal(signal.SIGTERM)
        # The copy says READY with its MAINPID: to a supervisor it is the main process now.
        successor = int(t.wait_for("MAINPID")["MAINPID"])
        assert successor != first
        assert t.wait(timeout=30) == 0
        assert pids_gone([successor], 30) == [], "the new process serves on after the stop"
        err = t.stderr()
    assert f"pid {successor} became ready while stopping: passing the stop on" in err
    assert f"[{successor}] INFO tether: stopped cleanly" in err
