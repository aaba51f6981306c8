"""Run a framework app from tests/apps/frameworks under `tether run`, as its users would.

The app is copied into a temporary directory, so a test can deploy new code
by rewriting its ``VERSION``; it writes what it sees (lifespan startup and
shutdown, slow requests beginning) to a marks file, one ``EVENT PID`` a line.
Readiness is the process's own ``READY=1`` on ``NOTIFY_SOCKET``; every other
wait is on observable state (a response, a mark, a pid's exit) with a deadline.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from waiting import eventually

FRAMEWORK_APPS = Path(__file__).parent / "apps" / "frameworks"

#: `tether run` options for each process model.
MODES = {"single": ("--workers", "0"), "master": ("--workers", "1")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(
    port: int,
    path: str,
    *,
    method: str = "GET",
    body: bytes | Iterator[bytes] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, str]:
    """One request on its own connection: status and body. An iterator body goes chunked."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {}, encode_chunked=True)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def pid_exited(pid: int, within: float) -> bool:
    """Wait (on a pidfd) until ``pid`` has exited; False if it is still alive after ``within``."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], within)
        return bool(readable)
    finally:
        os.close(fd)


class Served:
    """One `tether run` of a framework app on free loopback ports."""

    def __init__(
        self, tmp_path: Path, target: str, mode: str, *extra: str, env: dict[str, str] | None = None
    ) -> None:
        self.dir = tmp_path / "app"
        self.dir.mkdir()
        self.module = target.partition(":")[0]
        for name in ("_marks.py", f"{self.module}.py"):
            shutil.copy(FRAMEWORK_APPS / name, self.dir / name)
        self.marks_path = tmp_path / "marks"
        self.log_path = tmp_path / "tether.log"
        self.port = free_port()
        self.debug_port = free_port()
        self.notify_path = str(tmp_path / "notify")
        self.argv = [
            sys.executable,
            "-m",
            "tether",
            "run",
            target,
            "--bind",
            f"127.0.0.1:{self.port}",
            "--debug-bind",
            f"127.0.0.1:{self.debug_port}",
            "--app-dir",
            str(self.dir),
            *MODES[mode],
            *extra,
        ]
        self.env = {
            **os.environ,
            "NOTIFY_SOCKET": self.notify_path,
            "FW_MARKS": str(self.marks_path),
            "FW_DB": str(tmp_path / "db.sqlite3"),
            # A rewritten module may keep its size and mtime second: never reuse bytecode.
            "PYTHONDONTWRITEBYTECODE": "1",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify: socket.socket | None = None

    def __enter__(self) -> Served:
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.dir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: every process it starts too
            )
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever is left: workers, successors
        self.proc.wait(10)
        if self.notify is not None:
            self.notify.close()

    # -- observing ------------------------------------------------------------------------

    def ready(self, within: float = 60.0) -> None:
        """Wait for ``READY=1`` on the notify socket; fail at once if the process exits."""
        assert self.notify is not None and self.proc is not None
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            self.notify.settimeout(0.2)
            try:
                data = self.notify.recv(4096)
            except TimeoutError:
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"tether exited with {self.proc.returncode}:\n{self.log()}"
                    ) from None
                continue
            if b"READY=1" in data.split(b"\n"):
                return
        raise AssertionError(f"not ready within {within}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def error_lines(self) -> list[str]:
        """Log lines at ERROR (in tether's format or a framework's own) and tracebacks."""
        return [
            line
            for line in self.log().splitlines()
            if re.search(r"\bERROR\b|Traceback|^tether: error", line)
        ]

    def marks(self, event: str, pid: int | None = None) -> list[str]:
        """The marks of ``event`` (by ``pid`` if given), in order."""
        if not self.marks_path.exists():
            return []
        lines = self.marks_path.read_text().splitlines()
        wanted = f"{event} {pid}" if pid is not None else None
        return [
            line
            for line in lines
            if (line == wanted if wanted else line.rpartition(" ")[0] == event)
        ]

    def wait_marks(self, event: str, count: int = 1, pid: int | None = None) -> None:
        eventually(
            lambda: len(self.marks(event, pid)) >= count,
            f"{count} x {event!r} (pid {pid}) in the marks; log:\n{self.log()}",
        )

    def get(self, path: str = "/") -> tuple[int, str]:
        return request(self.port, path)

    def serving(self) -> tuple[str, int]:
        """The version and pid that answer ``GET /`` now."""
        status, body = self.get("/")
        assert status == 200, body
        version, pid = body.split()
        return version, int(pid)

    # -- acting ---------------------------------------------------------------------------

    def deploy(self, version: str) -> None:
        """New code on disk: the app's ``VERSION`` becomes ``version``."""
        path = self.dir / f"{self.module}.py"
        source = path.read_text()
        new = re.sub(r'^VERSION = "[^"]*"$', f'VERSION = "{version}"', source, flags=re.M)
        assert new != source
        path.write_text(new)

    def signal(self, sig: int, pid: int | None = None) -> None:
        """Send ``sig`` to ``pid``, by default the process this test started."""
        assert self.proc is not None
        os.kill(pid if pid is not None else self.proc.pid, sig)

    def wait(self, within: float = 60.0) -> int:
        """The exit code of the process this test started."""
        assert self.proc is not None
        try:
            return self.proc.wait(within)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {within}s:\n{self.log()}") from None


__all__ = [
    "FRAMEWORK_APPS",
    "MODES",
    "Served",
    "eventually",
    "free_port",
    "pid_exited",
    "request",
]
