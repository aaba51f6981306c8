"""Tests for tether.notify: the NOTIFY_SOCKET sender and receiver."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tether.notify import (
    Notifier,
    NotifyMessage,
    NotifyReceiver,
    parse_message,
    watchdog_interval,
)


def test_from_env_is_none_without_notify_socket() -> None:
    """No NOTIFY_SOCKET (or an empty one) means no notifier."""
    assert Notifier.from_env({}) is None
    assert Notifier.from_env({"NOTIFY_SOCKET": ""}) is None


def test_from_env_rejects_unusable_addresses(caplog: pytest.LogCaptureFixture) -> None:
    """A NOTIFY_SOCKET that is neither a path nor @abstract is ignored with a warning."""
    assert Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1"}) is None
    assert "not a path or an @abstract name" in caplog.text


def test_send_to_a_vanished_receiver_returns_false(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Sending to a socket that is gone logs and returns False, never raises."""
    with Notifier(str(tmp_path / "gone.sock")) as notifier:
        assert notifier.send("READY=1") is False
        assert notifier.send("READY=1") is False
    assert caplog.text.count("cannot notify") == 1
    assert notifier.send("READY=1") is False  # closed


def test_parse_message_reads_assignments() -> None:
    """KEY=VALUE lines become a dict; junk lines are skipped; values may hold '='."""
    assert parse_message(b"READY=1\nSTATUS=a=b\njunk\n=x\n") == {"READY": "1", "STATUS": "a=b"}


def test_receiver_reports_sender_pid_from_the_kernel() -> None:
    """Messages arrive with the pid of the process that sent them."""

    async def main() -> NotifyMessage:
        async with NotifyReceiver() as rx:
            with Notifier(rx.path) as notifier:
                assert notifier.send("READY=1", "STATUS=serving")
                return await asyncio.wait_for(rx.get(), 5)

    message = asyncio.run(main())
    assert message.pid == os.getpid()
    assert message.uid == os.getuid()
    assert message.fields == {"READY": "1", "STATUS": "serving"}


def test_receiver_knows_a_child_by_its_pid() -> None:
    """A child process's message carries the child's pid, whatever it claims."""
    code = (
        "from tether.notify import Notifier; "
        "n = Notifier.from_env(); assert n is not None; n.send('READY=1', 'MAINPID=1')"
    )

    async def main() -> tuple[int, NotifyMessage]:
        async with NotifyReceiver() as rx:
            env = dict(os.environ, NOTIFY_SOCKET=rx.path)
            proc = subprocess.Popen([sys.executable, "-c", code], env=env)
            try:
                message = await asyncio.wait_for(rx.get(), 10)
            finally:
                assert proc.wait(timeout=10) == 0
            return proc.pid, message

    pid, message = asyncio.run(main())
    assert message.pid == pid
    assert message.fields == {"READY": "1", "MAINPID": "1"}


def test_abstract_socket_names_work() -> None:
    """An '@name' NOTIFY_SOCKET is a Linux abstract socket."""
    name = f"tether-test-{uuid.uuid4().hex}"

    async def main() -> NotifyMessage:
        rx = NotifyReceiver.__new__(NotifyReceiver)
        # Bind the abstract name by hand: the receiver's own paths are filesystem paths.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.setblocking(False)
        sock.bind(b"\0" + name.encode())
        rx._dir = None
        rx.path = "@" + name
        rx._sock = sock
        rx._queue = asyncio.Queue()
        rx._loop = None
        async with rx:
            notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
            assert notifier is not None
            with notifier:
                notifier.send("WATCHDOG=1")
            return await asyncio.wait_for(rx.get(), 5)

    assert asyncio.run(main()).fields == {"WATCHDOG": "1"}


def test_receiver_close_removes_its_directory() -> None:
    """Closing the receiver removes its private socket and directory."""

    async def main() -> str:
        async with NotifyReceiver() as rx:
            assert os.path.exists(rx.path)
            assert os.stat(os.path.dirname(rx.path)).st_mode & 0o077 == 0
            return rx.path

    path = asyncio.run(main())
    assert not os.path.exists(os.path.dirname(path))


def test_receiver_closes_passed_fds() -> None:
    """File descriptors sent along with a message are closed, not leaked."""

    async def main() -> NotifyMessage:
        async with NotifyReceiver() as rx:
            r, w = os.pipe()
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, r.to_bytes(4, sys.byteorder))]
                s.sendmsg([b"FDSTORE=1"], rights, 0, rx.path)
            os.close(r)
            before = set(os.listdir("/proc/self/fd"))
            message = await asyncio.wait_for(rx.get(), 5)
            after = set(os.listdir("/proc/self/fd"))
            os.close(w)
            assert after <= before
            return message

    assert asyncio.run(main()).fields == {"FDSTORE": "1"}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "50"}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "51"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout(env: dict[str, str], expected: float | None) -> None:
    """Heartbeats go at half of WATCHDOG_USEC, only for the named pid."""
    assert watchdog_interval(env, pid=50) == expected
