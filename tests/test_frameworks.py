"""Real frameworks under `tether run`, in both process models, as their users run them.

The matrix: FastAPI (with sse-starlette, BackgroundTasks, a websocket),
Starlette, Django (ASGI and WSGI, a view on sqlite), Flask and Litestar. Each
is served, reloaded with HUP under load (new code, no failed request), and
stopped with SIGTERM while requests are in flight (all finish, exit 0); the
app's lifespan startup and shutdown are seen where the framework has one, and
ordinary traffic leaves no ERROR line in the log.

Then the cases where a framework met tether's lifecycle and lost: an open
event stream (sse-starlette) holding up every stop, an endless stream making
the app's shutdown never run, a chunked upload reaching Flask empty, and a
WSGI thread pool that could not be sized.

One process (and its reload successor) per framework and mode: each check of
the matrix runs on it in turn.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from fwproc import MODES, Served, eventually, pid_exited, request
from loadclient import Load, LoadStats

# -- what each framework's ordinary traffic looks like ----------------------------------------


def fastapi_traffic(s: Served) -> None:
    """An event stream to its end, a BackgroundTasks job, a websocket echo."""
    status, body = s.get("/sse?count=3")
    assert (status, body.count("data: v1 ")) == (200, 3), body
    assert s.get("/background?n=7") == (200, "queued")
    s.wait_marks("background-7")
    with connect(f"ws://127.0.0.1:{s.port}/ws") as ws:
        ws.send("hello")
        assert ws.recv(timeout=10) == "v1 hello"


def starlette_traffic(s: Served) -> None:
    """A streamed response and a background task."""
    assert s.get("/stream?count=3") == (200, "v1 0\nv1 1\nv1 2\n")
    assert s.get("/background?n=3") == (200, "queued")
    s.wait_marks("background-3")


def django_traffic(s: Served) -> None:
    """Twenty requests to a view that counts in sqlite (Django ASGI logged an ERROR for each)."""
    counts = [s.get("/hits") for _ in range(20)]
    assert counts == [(200, str(n)) for n in range(1, 21)]


def chunks(data: bytes, size: int = 65536) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def flask_traffic(s: Served) -> None:
    """A 5 MiB upload sent chunked (no Content-Length) reaches the app whole."""
    data = os.urandom(5 * 1024 * 1024)
    status, body = request(s.port, "/upload", method="POST", body=chunks(data))
    assert (status, body) == (200, f"{len(data)} {hashlib.sha256(data).hexdigest()}")


def litestar_traffic(s: Served) -> None:
    """A JSON route with a typed path parameter."""
    status, body = s.get("/items/3")
    assert (status, json.loads(body)) == (200, {"id": 3, "version": "v1"})


@dataclass(frozen=True)
class Framework:
    name: str
    target: str
    #: The app takes part in the ASGI lifespan protocol (WSGI and Django's ASGI do not).
    lifespan: bool
    traffic: Callable[[Served], None]


FRAMEWORKS = [
    Framework("fastapi", "fw_fastapi:app", True, fastapi_traffic),
    Framework("starlette", "fw_starlette:app", True, starlette_traffic),
    Framework("django-asgi", "fw_django:asgi", False, django_traffic),
    Framework("django-wsgi", "fw_django:wsgi", False, django_traffic),
    Framework("flask", "fw_flask:app", False, flask_traffic),
    Framework("litestar", "fw_litestar:app", True, litestar_traffic),
]


async def reload_under_load(s: Served) -> LoadStats:
    """Deploy v2 and send HUP while keep-alive clients hammer ``GET /``; what they saw."""
    async with Load(s.port, connections=2) as load:
        s.deploy("v2")
        s.signal(signal.SIGHUP)
        await asyncio.to_thread(eventually, lambda: s.serving()[0] == "v2", "v2 serving", 90)
        async with asyncio.timeout(30):
            while load.stats.versions["v2"] < 20:
                await asyncio.sleep(0.01)
    return load.stats


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fw", FRAMEWORKS, ids=lambda fw: fw.name)
def test_framework_serves_reloads_and_drains(fw: Framework, mode: str, tmp_path: Path) -> None:
    """Serve, reload on HUP with no failed request, drain on SIGTERM, exit 0, no ERROR logged."""
    with Served(tmp_path, fw.target, mode) as s:
        s.ready()
        version, first = s.serving()
        assert version == "v1"
        if fw.lifespan:
            s.wait_marks("startup", pid=first)
        fw.traffic(s)

        stats = asyncio.run(reload_under_load(s))
        assert stats.failed == 0, stats.errors
        version, second = s.serving()
        assert (version, second != first) == ("v2", True)
        if fw.lifespan:
            s.wait_marks("shutdown", pid=first)
        if mode == "single":
            assert s.wait() == 0  # the old process drained and stopped cleanly

        with ThreadPoolExecutor(3) as pool:
            slow = [pool.submit(request, s.port, "/slow?s=1") for _ in range(3)]
            s.wait_marks("slow-begin", 3, pid=second)
            s.signal(signal.SIGTERM, pid=second if mode == "single" else None)
            answers = [f.result() for f in slow]
        assert [status for status, _ in answers] == [200] * 3, answers
        if mode == "single":
            # The successor is not this test's child: its exit is seen on a pidfd, its
            # outcome in the log it shares with its predecessor.
            assert pid_exited(second, 60), s.log()
            assert s.log().count("stopped cleanly") == 2, s.log()
        else:
            assert s.wait() == 0
        if fw.lifespan:
            s.wait_marks("shutdown", pid=second)
    assert s.error_lines() == []


# -- what used to go wrong ----------------------------------------------------------------------


def read_until_closed(port: int, path: str) -> bytes:
    """``GET path`` and everything the server sends until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        received = bytearray()
        while data := sock.recv(65536):
            received += data
    return bytes(received)


@pytest.mark.parametrize("mode", MODES)
def test_open_event_streams_end_and_the_stop_is_prompt(mode: str, tmp_path: Path) -> None:
    """sse-starlette: on SIGTERM open streams end cleanly, stop < 2 s, lifespan shutdown runs."""
    with Served(tmp_path, "fw_fastapi:app", mode) as s:  # the default 30 s budget
        s.ready()
        _, pid = s.serving()
        # A finished stream first: the library starts its shutdown watcher in it.
        assert s.get("/sse?count=2")[0] == 200
        with ThreadPoolExecutor(1) as pool:
            stream = pool.submit(read_until_closed, s.port, "/sse")
            s.wait_marks("sse-begin", 2, pid)
            started = time.monotonic()
            s.signal(signal.SIGTERM)
            code = s.wait()
            elapsed = time.monotonic() - started
            received = stream.result()
        assert code == 0, s.log()
        assert elapsed < 2.0, s.log()
        assert received.startswith(b"HTTP/1.1 200")
        assert received.endswith(b"\r\n0\r\n\r\n"), received[-200:]  # the stream's proper end
        assert s.marks("shutdown", pid)
    assert s.error_lines() == []


@pytest.mark.parametrize("opted_out", [False, True], ids=["adopted", "opted-out"])
def test_a_library_loop_is_adopted_unless_its_module_is_opted_out(
    opted_out: bool, tmp_path: Path
) -> None:
    """sse-starlette's watcher outlives its request: tracked, unless the app opts it out."""
    env = {"FW_NO_ADOPTION_FOR": "sse_starlette"} if opted_out else {}
    with Served(tmp_path, "fw_fastapi:app", "single", env=env) as s:
        s.ready()
        assert s.get("/sse?count=2")[0] == 200  # finished; the library's watcher runs on
        expected = 0 if opted_out else 1
        eventually(lambda: background_running(s.debug_port) == expected, f"{expected} running")
        s.signal(signal.SIGTERM)
        assert s.wait() == 0
    assert s.error_lines() == []


def background_running(debug_port: int) -> int:
    """Tracked background tasks running now, from the debug server's metrics."""
    _, text = request(debug_port, "/metrics")
    [value] = [
        line.split()[1]
        for line in text.splitlines()
        if line.startswith("tether_background_running ")
    ]
    return int(float(value))


@pytest.mark.parametrize("mode", MODES)
def test_reload_ends_open_event_streams_and_the_old_code_stops_promptly(
    mode: str, tmp_path: Path
) -> None:
    """HUP with an event stream open: it ends properly; the old code's shutdown follows at once."""
    with Served(tmp_path, "fw_fastapi:app", mode) as s:  # the default 30 s budget
        s.ready()
        _, old = s.serving()
        with ThreadPoolExecutor(1) as pool:
            stream = pool.submit(read_until_closed, s.port, "/sse")
            s.wait_marks("sse-begin", 1, old)
            s.deploy("v2")
            s.signal(signal.SIGHUP)
            eventually(lambda: s.serving()[0] == "v2", "v2 serving", 90)
            new_code_serving = time.monotonic()
            s.wait_marks("shutdown", 1, old)
            old_code_stopped = time.monotonic() - new_code_serving
            received = stream.result()
        assert old_code_stopped < 2.0, s.log()
        assert received.endswith(b"\r\n0\r\n\r\n"), received[-200:]
        if mode == "single":
            assert s.wait() == 0  # the old process
            _, new = s.serving()
            s.signal(signal.SIGTERM, pid=new)
            assert pid_exited(new, 30), s.log()
        else:
            s.signal(signal.SIGTERM)
            assert s.wait() == 0
    assert s.error_lines() == []


@pytest.mark.parametrize("mode", MODES)
def test_open_websocket_is_closed_with_service_restart_on_sigterm(
    mode: str, tmp_path: Path
) -> None:
    """FastAPI websocket open at SIGTERM: close frame 1012, prompt exit 0, lifespan shutdown."""
    with Served(tmp_path, "fw_fastapi:app", mode) as s:
        s.ready()
        _, pid = s.serving()
        with connect(f"ws://127.0.0.1:{s.port}/ws") as ws:
            ws.send("ping")
            assert ws.recv(timeout=10) == "v1 ping"
            started = time.monotonic()
            s.signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        assert s.wait() == 0
        assert time.monotonic() - started < 5.0
        assert s.marks("shutdown", pid)
    assert s.error_lines() == []


@pytest.mark.parametrize("mode", MODES)
def test_drain_deadline_cuts_an_endless_stream_then_runs_lifespan_shutdown(
    mode: str, tmp_path: Path
) -> None:
    """An endless stream at the deadline: named and cut, the app's shutdown runs, exit 4."""
    with Served(tmp_path, "fw_fastapi:app", mode, "--graceful-timeout", "3") as s:
        s.ready()
        _, pid = s.serving()
        with ThreadPoolExecutor(1) as pool:
            stream = pool.submit(read_until_closed, s.port, "/stream")
            s.wait_marks("stream-begin", 1, pid)
            started = time.monotonic()
            s.signal(signal.SIGTERM)
            code = s.wait()
            elapsed = time.monotonic() - started
            assert b"tick" in stream.result()
        assert code == 4, s.log()
        assert 2.0 < elapsed < 8.0, s.log()
        assert s.marks("shutdown", pid), s.log()
        log = s.log()
        assert "abandoned at the deadline: request 'GET /stream'" in log
        assert "Exception in ASGI application" not in log


@pytest.mark.parametrize("mode", MODES)
def test_threads_option_runs_that_many_wsgi_requests_at_once(mode: str, tmp_path: Path) -> None:
    """`--threads 32`: 32 parallel 1 s Flask requests take about 1 s (10 threads: 4 s)."""
    with Served(tmp_path, "fw_flask:app", mode, "--threads", "32") as s:
        s.ready()
        with ThreadPoolExecutor(32) as pool:
            started = time.monotonic()
            answers = list(pool.map(lambda _: request(s.port, "/slow?s=1"), range(32)))
            elapsed = time.monotonic() - started
        assert answers == [(200, "slept 1.0")] * 32
        assert elapsed < 2.5
        s.signal(signal.SIGTERM)
        assert s.wait() == 0


def test_threads_must_be_a_whole_number_of_at_least_one() -> None:
    """`--threads 0` is a usage error that says what the option is."""
    proc = subprocess.run(
        [sys.executable, "-m", "tether", "run", "fw_flask:app", "--threads", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "tether: error: --threads must be a whole number >= 1, got 0; "
        "it is how many WSGI requests one process runs at once"
    )
