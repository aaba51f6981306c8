"""The ``NOTIFY_SOCKET`` protocol (systemd's ``sd_notify``), sender and receiver.

A process tells whoever started it how it is doing by sending datagrams of
``KEY=VALUE`` lines to the unix socket named in ``NOTIFY_SOCKET``:
``READY=1``, ``STOPPING=1``, ``RELOADING=1``, ``STATUS=...``, ``WATCHDOG=1``,
``MAINPID=...``. A tether worker speaks it to its master, a master to systemd
(or to the old master during an upgrade).

Invariants: the sender never raises and never blocks (a vanished or busy
receiver costs one log line, not the service); the receiver learns each
sender's pid from the kernel (``SCM_CREDENTIALS``), never from the message,
so a process cannot speak for another.

asyncio is imported only when a receiver starts reading: a master binds its notify
socket before its event loop exists, and spawns its first workers before it has
paid for asyncio (tether._opening).

Written by hand because the protocol is twenty lines and the libraries that
wrap ``sd_notify`` either need libsystemd or have no receiver side.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from tether.errors import RuntimeDirError

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "Notifier",
    "NotifyMessage",
    "NotifyReceiver",
    "parse_message",
    "private_dir",
    "runtime_base",
    "watchdog_interval",
]

log = logging.getLogger("tether.notify")

_MAX_DATAGRAM = 4096
_CREDS = struct.Struct("iII")  # struct ucred: pid, uid, gid
_QUEUE_LIMIT = 1024
#: Longest directory for private sockets: sun_path holds 107 bytes, names take up to 24.
_SOCKET_DIR_LIMIT = 107 - 24


#: The abstract name a keeper (tether._init) gives the notify socket of its service.
KEEPER_PREFIX = "@tether-init-"
#: What a keeper's service tells it once it has set up its logging, so that the
#: keeper's own lines look like the service's: ``[level, format, config file or "",
#: the app's directory]`` as JSON. Never passed on to a supervisor.
KEEPER_LOGGING = "TETHER_KEEPER_LOGGING"


def _socket_address(name: str) -> str | bytes | None:
    if name.startswith("@"):
        return b"\0" + os.fsencode(name[1:])  # Linux abstract namespace
    if name.startswith("/"):
        return name
    return None


class Notifier:
    """Sends notifications to the socket in ``NOTIFY_SOCKET``.

    Thread-safe; safe to call from a signal-free event loop callback.
    Resource handling: owns one datagram socket, closed by :meth:`close`.
    Error handling: :meth:`send` never raises; it returns False and logs.
    """

    def __init__(self, address: str) -> None:
        target = _socket_address(address)
        if target is None:
            msg = f"NOTIFY_SOCKET {address!r} is not a path or an @abstract name"
            raise ValueError(msg)
        self.address = address
        self._target = target
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._lock = threading.Lock()
        self._warned = False

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, unset: bool = False
    ) -> Notifier | None:
        """A notifier for ``NOTIFY_SOCKET``, or None when it is not set (or unusable).

        With ``unset``, the variable is removed from ``os.environ`` so that
        children the application starts do not report in this process's name.
        """
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if unset and environ is None:
            os.environ.pop("NOTIFY_SOCKET", None)
        if not address:
            return None
        try:
            return cls(address)
        except ValueError as exc:
            log.warning("%s; not sending notifications", exc)
            return None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; True if it was delivered."""
        payload = "\n".join(assignments).encode()
        with self._lock:
            if self._sock.fileno() < 0:
                return False
            try:
                self._sock.sendto(payload, self._target)
            except BlockingIOError:
                log.debug("notify socket %s is busy; dropped %r", self.address, assignments)
                return False
            except OSError as exc:
                # Receiver gone (ENOENT, ECONNREFUSED) or restarting: tell once, keep serving.
                level = logging.DEBUG if self._warned else logging.WARNING
                self._warned = True
                log.log(level, "cannot notify %s: %s", self.address, exc.strerror or exc)
                return False
        return True

    def close(self) -> None:
        """Close the socket; later sends return False."""
        with self._lock:
            self._sock.close()

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def parse_message(data: bytes) -> dict[str, str]:
    """``KEY=VALUE`` lines to a dict; lines without ``=`` are ignored, the last value wins."""
    fields: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and key:
            fields[key] = value
    return fields


@dataclass(frozen=True)
class NotifyMessage:
    """One notification: who sent it (from the kernel) and what it says."""

    pid: int
    uid: int
    fields: dict[str, str]


class NotifyReceiver:
    """Receives notifications on a private unix socket, with each sender's pid.

    ``path`` is the value to give children as ``NOTIFY_SOCKET``. By default
    the socket lives in a fresh directory only this user can enter.

    Use as ``async with NotifyReceiver() as rx: async for msg in rx: ...``, or
    ``await rx.get()``. Messages from other users, or without credentials,
    are dropped; fds sent along (``FDSTORE``) are closed.

    Resource handling: :meth:`close` (or leaving the ``async with``) closes
    the socket and removes the directory.
    """

    def __init__(self, path: str | None = None) -> None:
        self._dir: str | None = None
        #: Made when reading begins (start, pending): asyncio is not imported before.
        self._queue: asyncio.Queue[NotifyMessage] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            if path is None:
                self._dir = private_dir("tether-notify-")
                path = os.path.join(self._dir, "notify.sock")
            self.path = path
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            self._sock.setblocking(False)
            try:
                self._sock.bind(path)
            except OSError as exc:
                raise RuntimeDirError(os.path.dirname(path), exc) from exc
        except BaseException:
            self.close()
            raise

    def start(self) -> None:
        """Start reading in the running event loop (done by ``async with``)."""
        if self._loop is None:
            import asyncio

            self._loop = asyncio.get_running_loop()
            self._messages()
            self._loop.add_reader(self._sock.fileno(), self._on_readable)

    def _messages(self) -> asyncio.Queue[NotifyMessage]:
        if self._queue is None:
            import asyncio

            self._queue = asyncio.Queue()
        return self._queue

    def _on_readable(self) -> None:
        fd_space = socket.CMSG_SPACE(253 * 4)
        space = socket.CMSG_SPACE(_CREDS.size) + fd_space
        while True:
            try:
                data, ancdata, _flags, _addr = self._sock.recvmsg(_MAX_DATAGRAM, space)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("notify socket receive failed: %s", exc)
                return
            pid = uid = -1
            for level, kind, blob in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid, uid, _gid = _CREDS.unpack(blob[: _CREDS.size])
                elif level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    usable = len(blob) - len(blob) % 4
                    for fd in struct.unpack(f"{usable // 4}i", blob[:usable]):
                        with contextlib.suppress(OSError):
                            os.close(fd)
            if pid <= 0:
                log.debug("dropping a notification without credentials")
                continue
            if uid not in (os.getuid(), 0):
                log.warning("dropping a notification from pid %d of another user (%d)", pid, uid)
                continue
            queue = self._messages()
            if queue.qsize() >= _QUEUE_LIMIT:
                log.warning("notification queue full; dropping a message from pid %d", pid)
                continue
            queue.put_nowait(NotifyMessage(pid, uid, parse_message(data)))

    def pending(self) -> list[NotifyMessage]:
        """Every message that has arrived and was not yet taken, at once (no waiting).

        Reads the socket first, so datagrams the kernel holds for us count too:
        a caller about to judge a sender by its silence looks here first.
        """
        if self._sock.fileno() >= 0:
            self._on_readable()
        taken = []
        queue = self._messages()
        while not queue.empty():
            taken.append(queue.get_nowait())
        return taken

    async def get(self) -> NotifyMessage:
        """The next message (starts reading if needed)."""
        self.start()
        return await self._messages().get()

    def __aiter__(self) -> AsyncIterator[NotifyMessage]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[NotifyMessage]:
        while True:
            yield await self.get()

    def close(self) -> None:
        """Stop reading, close the socket, remove the private directory."""
        if self._loop is not None and self._sock.fileno() >= 0:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sock.fileno())
        self._loop = None
        self._sock.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    async def __aenter__(self) -> NotifyReceiver:
        self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def runtime_base() -> str:
    """Where tether's private directories go: $XDG_RUNTIME_DIR, else $TMPDIR, else /tmp.

    A ``$TMPDIR`` the user chose is used or refused with the reason, never
    silently swapped for another directory (as :func:`tempfile.gettempdir` would).
    """
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg and os.path.isabs(xdg) and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK):
        return xdg
    return os.environ.get("TMPDIR", "") or tempfile.gettempdir()


def private_dir(prefix: str) -> str:
    """A fresh directory only this user can enter, for private sockets.

    Under ``$XDG_RUNTIME_DIR`` when it is set (systemd's per-user runtime
    directory, or ``RuntimeDirectory=``), else under the temporary directory.
    Raises :class:`~tether.errors.RuntimeDirError` naming the place and the fix.
    """
    parent = runtime_base()
    try:
        path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    except OSError as exc:
        raise RuntimeDirError(parent, exc) from exc
    # A unix socket path must fit in sun_path (108 bytes), with room for its name.
    if len(os.fsencode(path)) > _SOCKET_DIR_LIMIT:
        os.rmdir(path)
        raise RuntimeDirError(parent, OSError(errno.ENAMETOOLONG, "path too long for a socket"))
    return path


def watchdog_interval(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Seconds between ``WATCHDOG=1`` heartbeats, or None when no watchdog is asked for.

    ``WATCHDOG_USEC`` is the timeout after which the supervisor kills the
    process; heartbeats go at half of it (systemd's advice), so one late
    heartbeat is not fatal. ``WATCHDOG_PID``, when set, must be this process.
    """
    env = os.environ if environ is None else environ
    usec_text = env.get("WATCHDOG_USEC", "")
    if not usec_text:
        return None
    watchdog_pid = env.get("WATCHDOG_PID", "")
    me = os.getpid() if pid is None else pid
    if watchdog_pid and watchdog_pid.strip() != str(me):
        return None
    try:
        usec = int(usec_text)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a number of microseconds", usec_text)
        return None
    if usec <= 0:
        return None
    return usec / 2_000_000
