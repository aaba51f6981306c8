"""The master keeps the service up under operator-grade faults: a query of death, a stalled
master, a final stop with clients still arriving. Real processes, real signals, loopback only."""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from masterproc import MasterProc
from test_master_faults import pids_of, settled, started_workers, until

from proc import tether

#: /crash kills its worker at once (a query of death); /log writes a line to stderr first.
APP = """\
import asyncio
import logging
import os

log = logging.getLogger("app")

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/crash":
        os._exit(70)
    if scope["path"] == "/slow":  # the head first, so the client knows it is in flight
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"started ", "more_body": True})
        await asyncio.sleep(3)
        await send({"type": "http.response.body", "body": b"done"})
        return
    if scope["path"] == "/log":
        log.warning("request %s served by %d %s", scope["path"], os.getpid(), "x" * 200)
    body = f"v1 {os.getpid()}\\n".encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
"""


def ok(port: int, path: str = "/", timeout: float = 5.0) -> bool:
    """One GET on a new connection answered 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return int(resp.status) == 200
    except OSError:
        return False


def test_a_query_of_death_never_takes_the_service_down(tmp_path: Path) -> None:
    """/crash up to 2/s for 10 s: another client loses at most one request per crash, then none."""
    (tmp_path / "hello.py").write_text(APP)

    async def scenario() -> None:
        async with MasterProc(tmp_path, workers=2) as master:
            await master.wait_for("READY")
            stop = threading.Event()
            outcomes: list[bool] = []

            def client() -> None:
                while not stop.is_set():
                    outcomes.append(ok(master.port))
                    time.sleep(0.02)

            def restarted(status: dict[str, Any], crashes: int) -> bool:
                workers = status["generations"][0]["workers"]
                return settled(status, 2) and sum(w["restarts"] for w in workers) >= crashes

            async def attack() -> int:
                crashes = 0
                end = time.monotonic() + 10
                while time.monotonic() < end:
                    # Until the worker that took it is gone (its connection is reset then).
                    await asyncio.to_thread(ok, master.port, "/crash", 30)
                    crashes += 1
                    # The next one once the slot is filled again: a replacement on a loaded
                    # machine takes longer than the pace, and two queries of death in a row
                    # would leave no worker at all, which no master can help.
                    await until(master, lambda s, n=crashes: restarted(s, n))
                    await asyncio.sleep(0.5)
                return crashes

            serving = threading.Thread(target=client)
            serving.start()
            try:
                crashes = await attack()
            finally:
                stop.set()
                await asyncio.to_thread(serving.join)
            # The client has one request at a time: a crash cuts at most that one (it was on
            # the worker that died); any other failure is the service being down.
            failed = outcomes.count(False)
            assert failed <= crashes, (failed, crashes, len(outcomes))
            assert crashes >= 2 and len(outcomes) > crashes, (crashes, len(outcomes))
            await asyncio.sleep(1)
            after = [await asyncio.to_thread(ok, master.port) for _ in range(20)]
            assert all(after), after
            log = master.log()
            assert "exited with code 70 while serving; replacing it" in log
            master.seen_workers.update(started_workers(log))

    asyncio.run(scenario())


def test_a_stopped_master_never_blocks_workers_that_log(tmp_path: Path) -> None:
    """SIGSTOP the master: 1,000 requests that each log a line are all served meanwhile."""
    (tmp_path / "hello.py").write_text(APP)

    async def scenario() -> None:
        async with MasterProc(tmp_path, workers=2) as master:
            await master.wait_for("READY")
            master.seen_workers.update(await master.worker_pids())
            os.kill(master.pid, signal.SIGSTOP)
            try:
                results = await asyncio.to_thread(
                    lambda: [ok(master.port, "/log", timeout=10) for _ in range(1000)]
                )
            finally:
                os.kill(master.pid, signal.SIGCONT)
            assert all(results), results.count(False)
            assert master.log().count("request /log served by") == 1000

    asyncio.run(scenario())


def test_a_master_stalled_past_the_watchdog_kills_no_healthy_worker(tmp_path: Path) -> None:
    """SIGSTOP the master for twice --watchdog-timeout: on SIGCONT every worker serves on."""
    (tmp_path / "hello.py").write_text(APP)

    async def scenario() -> None:
        async with MasterProc(tmp_path, "--watchdog-timeout", "2", workers=2) as master:
            await master.wait_for("READY")
            before = sorted(await master.worker_pids())
            os.kill(master.pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(4)  # the stall itself is the scenario
            finally:
                os.kill(master.pid, signal.SIGCONT)
            await asyncio.sleep(3)  # more than a watchdog period after the resume
            status = await until(master, lambda s: settled(s, 2))
            assert sorted(pids_of(status)) == before, master.log()
            assert status["master"]["restarts"] == 0
            assert "sent no heartbeat" not in master.log()

    asyncio.run(scenario())


def connect_errno(port: int) -> int:
    """0 if a new connection is accepted by the kernel, else the errno (ECONNREFUSED...)."""
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port))


@pytest.mark.parametrize("workers", ["0", "2"], ids=["one-process", "master"])
def test_a_new_connection_during_a_final_stop_is_refused_at_once(
    tmp_path: Path, workers: str
) -> None:
    """0.4 s into a final stop (a request still draining), a new connection is refused."""
    (tmp_path / "hello.py").write_text(APP)
    flags = ("--workers", workers, "--graceful-timeout", "10", "--app-dir", str(tmp_path))
    with tether("hello:app", *flags, debug=False) as t:
        t.ready()
        slow = socket.create_connection(("127.0.0.1", t.port))
        try:
            slow.sendall(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            assert slow.recv(1000).startswith(b"HTTP/1.1 200")  # in flight: the head is out
            t.signal(signal.SIGTERM)
            t.wait_for("STOPPING")
            time.sleep(0.4)  # the scenario: a client arriving 0.4 s into the stop
            assert connect_errno(t.port) == errno.ECONNREFUSED
            rest = b""
            while b"done" not in rest and (chunk := slow.recv(1000)):
                rest += chunk
            assert b"done" in rest  # the in-flight request still finishes
        finally:
            slow.close()
        assert t.wait() == 0, t.stderr()


MALFORMED = {
    "unknown version": b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
    "header without colon": b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n",
    "NUL in a header": b"GET /healthz HTTP/1.1\r\nHost: x\x00y\r\n\r\n",
    "obs-fold": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  b\r\n\r\n",
    "TLS hello": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",
}


def first_line(port: int, data: bytes) -> bytes:
    """Send ``data`` on a new connection; the first line of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        answer = b""
        while b"\r\n" not in answer and (chunk := s.recv(1000)):
            answer += chunk
        return answer.split(b"\r\n")[0]


def test_malformed_requests_to_the_master_debug_port_get_400_or_431(tmp_path: Path) -> None:
    """Broken heads get 400, a 70 KB head 431; nothing logs a traceback; the port serves on."""
    (tmp_path / "hello.py").write_text(APP)

    async def scenario() -> None:
        async with MasterProc(tmp_path, workers=1, debug=True) as master:
            await master.wait_for("READY")
            port = master.debug_port
            for name, data in MALFORMED.items():
                line = await asyncio.to_thread(first_line, port, data)
                assert line == b"HTTP/1.1 400 Bad Request", (name, line)
            huge = b"GET /healthz HTTP/1.1\r\nX-A: " + b"a" * 70_000 + b"\r\n\r\n"
            line = await asyncio.to_thread(first_line, port, huge)
            assert line == b"HTTP/1.1 431 Request Header Fields Too Large", line
            assert await asyncio.to_thread(ok, port, "/healthz")
            master.seen_workers.update(await master.worker_pids())
        assert "Traceback" not in master.log(), master.log()

    asyncio.run(scenario())


def test_idle_connections_cannot_exhaust_the_master(tmp_path: Path) -> None:
    """300 idle connections to the debug port: a reload still works, and the port recovers."""
    (tmp_path / "hello.py").write_text(APP)

    async def scenario() -> None:
        async with MasterProc(tmp_path, workers=1, debug=True) as master:
            await master.wait_for("READY")
            soft, hard = resource.prlimit(master.pid, resource.RLIMIT_NOFILE)
            # A small fd limit, as in a container: without a cap 300 connections exhaust it.
            resource.prlimit(master.pid, resource.RLIMIT_NOFILE, (256, hard))
            idle = []
            try:
                for _ in range(300):
                    idle.append(socket.create_connection(("127.0.0.1", master.debug_port)))
                assert (await master.ctl("reload"))["ok"]
                assert await asyncio.to_thread(ok, master.port)
                # Idle ones are closed after the keep-alive timeout; then the port answers.
                async with asyncio.timeout(30):
                    while not await asyncio.to_thread(ok, master.debug_port, "/healthz", 2):
                        await asyncio.sleep(0.2)
            finally:
                for s in idle:
                    s.close()
                resource.prlimit(master.pid, resource.RLIMIT_NOFILE, (soft, hard))
            master.seen_workers.update(started_workers(master.log()))
        assert "Traceback" not in master.log(), master.log()

    asyncio.run(scenario())
