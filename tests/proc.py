"""Run `tether run` as a real process, wait for real readiness, send real signals.

Readiness comes from the NOTIFY_SOCKET protocol (the process says READY=1
after lifespan startup and listening), never from sleeping and hoping.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import json
import os
import pty
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from waiting import eventually

APPS = Path(__file__).parent / "apps"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Tether:
    """One `tether run` process."""

    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    debug_port: int = field(default_factory=free_port)
    cwd: Path = APPS
    #: A command that runs `tether run` (for example `unshare --pid --fork`), if any.
    prefix: list[str] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    notify: socket.socket | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None
    #: stderr as read so far: a reader thread keeps the pipe from filling up (an access
    #: line per request fills 64 KiB quickly), which would block the server's writes.
    _err: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None
    #: Notified by the reader at every line it appends, and when the stream ends.
    _line: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> Tether:
        self._tmp = tempfile.TemporaryDirectory(prefix="tether-test-")
        path = os.path.join(self._tmp.name, "notify")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(path)
        env = {**os.environ, "NOTIFY_SOCKET": path, **self.env}
        argv = [*self.prefix, sys.executable, "-m", "tether", "run", *self.args]
        self.proc = subprocess.Popen(
            argv,
            cwd=self.cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group, as a shell gives a job
        )
        stream = self.proc.stderr
        assert stream is not None
        self._reader = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._reader.start()
        return self

    def wait_for(self, key: str, timeout: float = 60.0) -> dict[str, str]:
        """Wait for a notify message with ``key`` (READY, STOPPING...)."""
        assert self.notify is not None and self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.notify.settimeout(0.2)
            try:
                data = self.notify.recv(4096)
            except TimeoutError:
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"tether exited with {self.proc.returncode}: {self.stderr()}"
                    ) from None
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            if key in fields:
                return fields
        raise AssertionError(f"no {key} within {timeout}s")

    def ready(self) -> Tether:
        self.wait_for("READY")
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def ctrl_c(self) -> None:
        """What a terminal does on Ctrl-C: SIGINT to the whole process group."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGINT)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def _drain(self, stream: Any) -> None:
        with contextlib.suppress(ValueError, OSError):  # closed under us by close()
            for line in iter(stream.readline, ""):
                with self._line:
                    self._err.append(line)
                    self._line.notify_all()
        with self._line:
            self._line.notify_all()  # the end of the stream: a waiter looks at the exit

    def output(self) -> str:
        """What the service has written to stderr so far (it may still be running)."""
        return "".join(self._err)

    def wait_for_log(self, text: str, timeout: float = 60.0) -> None:
        """Wait until the service has written ``text`` to stderr; fail if it exits first."""
        assert self.proc is not None and self._reader is not None
        deadline = time.monotonic() + timeout
        with self._line:
            while text not in "".join(self._err):
                left = deadline - time.monotonic()
                if not self._reader.is_alive():
                    raise AssertionError(f"stderr ended ({self.proc.poll()}): {self.output()}")
                if left <= 0:
                    raise AssertionError(f"no {text!r} within {timeout}s: {self.output()[-3000:]}")
                self._line.wait(left)

    def stderr(self) -> str:
        assert self.proc is not None
        if self.proc.poll() is None:
            return "(still running)"
        if self._reader is not None:
            self._reader.join(10)
        return "".join(self._err)

    def close(self) -> None:
        if self.proc is not None:
            # The whole group: workers, and successors of a process that has already left.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(10)
        if self.proc is not None:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()
        if self.notify is not None:
            self.notify.close()
        if self._tmp is not None:
            self._tmp.cleanup()


@contextlib.contextmanager
def tether(target: str, *extra: str, debug: bool = True, **env: str) -> Iterator[Tether]:
    """A started `tether run target` on free loopback ports; killed if still alive at the end.

    One process (``--workers 0``) unless ``extra`` chooses ``--workers``.
    """
    t = Tether([])
    if "--workers" not in extra:
        extra = ("--workers", "0", *extra)
    binds = ["--bind", f"127.0.0.1:{t.port}"]
    dbg = ["--debug-bind", f"127.0.0.1:{t.debug_port}"] if debug else ["--no-debug"]
    t.args = [target, *binds, *dbg, *extra]
    t.env = env
    t.start()
    try:
        yield t
    finally:
        t.close()


def get(port: int, path: str = "/", timeout: float = 10.0) -> tuple[int, str, dict[str, str]]:
    """One GET on its own connection: status, body, headers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def in_flight(debug_port: int) -> float:
    """The in-flight gauge on a debug server's /metrics (a master's sums its workers').

    0 when it is not shown: a master leaves out a worker that was too slow to answer it.
    """
    lines = get(debug_port, "/metrics", 30)[1].splitlines()
    prefixes = ("tether_http_requests_in_flight ", "tether_http_requests_in_flight{")
    return sum(float(line.rsplit(None, 1)[1]) for line in lines if line.startswith(prefixes))


def until_in_flight(t: Tether, count: int, within: float = 60.0) -> None:
    """Wait until ``count`` requests are in flight in ``t``: a scenario's requests have arrived.

    A client thread that has sent a request has not made the server read it yet; on a
    loaded machine that can take seconds, so a signal sent after a fixed pause may find
    none of them in flight.
    """
    eventually(lambda: in_flight(t.debug_port) >= count, f"{count} requests in flight", within)


@contextlib.contextmanager
def running(args: list[str], **env: str) -> Iterator[Tether]:
    """`tether run ARGS` (exactly these), ready; killed at the end if still alive."""
    env.setdefault("TETHER_DEBUG_BIND", f"127.0.0.1:{free_port()}")
    t = Tether(args, env=env)
    t.start()
    try:
        t.ready()
        yield t
    finally:
        t.close()


def fetch(
    port: int, path: str = "/", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """GET on its own connection: status, the echo app's JSON, response headers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        data = json.loads(body) if resp.getheader("content-type") == "application/json" else {}
        return resp.status, data, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def run_cli(
    *args: str, timeout: float = 30.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`tether ARGS...` to completion (``env``: variables to set over this process's)."""
    return subprocess.run(
        [sys.executable, "-m", "tether", *args],
        cwd=APPS,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


__all__ = [
    "APPS",
    "Tether",
    "fetch",
    "free_port",
    "get",
    "in_flight",
    "run_cli",
    "running",
    "signal",
    "tether",
    "until_in_flight",
]


@contextlib.contextmanager
def on_a_terminal(
    argv: list[str], env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``argv`` as a terminal's job (its own session, a pty as its controlling terminal).

    Yields the process, its stderr readable as text, and the pty's controller end, where a
    test writes what a person types (``\\x03`` is Ctrl-C, ``\\x1a`` Ctrl-Z). Whatever is
    left is killed, and the pty closed, when the block ends.
    """
    controller, terminal = pty.openpty()

    def take_terminal() -> None:  # in the child, after setsid: the pty becomes its terminal
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        argv,
        cwd=APPS,
        env=env,
        stdin=terminal,
        stdout=terminal,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=take_terminal,
    )
    os.close(terminal)
    try:
        yield proc, controller
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()
        os.close(controller)
