"""Run ``tether run --workers N`` as a real master, from asyncio tests.

The test stands in for systemd: the master's ``NOTIFY_SOCKET`` is a
:class:`tether.notify.NotifyReceiver` here, so the test waits for the
master's own ``READY=1`` / ``RELOADING=1`` / ``STATUS=`` messages instead of
sleeping. Every process is stopped on the way out, and the test checks that
none of the master's workers outlived it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tether._control import request
from tether.notify import NotifyReceiver

APP = """\
import os

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "version.txt")) as f:
    VERSION = f.read().strip()


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = f"{VERSION} {os.getpid()}\\n".encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_app(directory: Path, version: str) -> None:
    """The versioned hello app: its responses start with the version it imported."""
    (directory / "hello.py").write_text(APP)
    (directory / "version.txt").write_text(version + "\n")


def pids_gone(pids: list[int], within: float) -> list[int]:
    """Wait (on pidfds, no polling) until every pid has exited; return those still alive."""
    fds = {}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            fds[os.pidfd_open(pid)] = pid
    try:
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        loop_deadline = within
        import time

        end = time.monotonic() + loop_deadline
        alive = set(fds)
        while alive and (left := end - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                alive.discard(fd)
                poller.unregister(fd)
        return [fds[fd] for fd in alive]
    finally:
        for fd in fds:
            os.close(fd)


class MasterProc:
    """One master process under test."""

    def __init__(self, directory: Path, *args: str, workers: int = 2, debug: bool = False) -> None:
        self.dir = directory
        self.port = free_port()
        #: The master's debug listener (with ``debug=True``), else 0.
        self.debug_port = free_port() if debug else 0
        self.control = str(directory / "control.sock")
        self.log_path = directory / "master.log"
        self.args = [
            "hello:app",
            "--workers",
            str(workers),
            "--bind",
            f"127.0.0.1:{self.port}",
            *(["--debug-bind", f"127.0.0.1:{self.debug_port}"] if debug else ["--no-debug"]),
            "--control",
            self.control,
            "--graceful-timeout",
            "10",
            *args,
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.rx: NotifyReceiver | None = None
        self.seen_workers: set[int] = set()

    async def __aenter__(self) -> MasterProc:
        self.rx = NotifyReceiver()
        self.rx.start()
        env = dict(os.environ, NOTIFY_SOCKET=self.rx.path, PYTHONDONTWRITEBYTECODE="1")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tether", "run", *self.args],
                cwd=self.dir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_for(self, key: str, limit: float = 30.0) -> dict[str, str]:
        """The next message from the master that has ``key``; fails if it exits first."""
        assert self.rx is not None and self.proc is not None
        async with asyncio.timeout(limit):
            while True:
                get = asyncio.ensure_future(self.rx.get())
                exited = asyncio.ensure_future(asyncio.to_thread(self.proc.wait))
                done, _ = await asyncio.wait({get, exited}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    raise AssertionError(
                        f"master exited with {self.proc.returncode}:\n{self.log()}"
                    )
                exited.cancel()
                message = get.result()
                if message.pid == self.pid and key in message.fields:
                    return message.fields

    async def ctl(self, cmd: str, **extra: Any) -> dict[str, Any]:
        """Send a control command; the final reply."""
        final: dict[str, Any] = {}
        async for message in request(self.control, {"cmd": cmd, **extra}, 120):
            final = message
        return final

    async def worker_pids(self) -> list[int]:
        status = (await self.ctl("status"))["status"]
        pids = [w["pid"] for g in status["generations"] for w in g["workers"] if w["exit"] is None]
        self.seen_workers.update(pids)
        return pids

    async def stop(self, limit: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.to_thread(self.proc.wait), limit)
        except TimeoutError:
            self.proc.kill()
            raise

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        try:
            if self.proc.poll() is None:
                await self.stop()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            if self.rx is not None:
                self.rx.close()
            leftover = pids_gone(sorted(self.seen_workers), 30)
            for pid in leftover:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        assert not leftover, f"workers outlived the master: {leftover}"
