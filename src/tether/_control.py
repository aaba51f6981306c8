"""The control socket: a unix socket only the owner can use, JSON lines both ways.

A client sends one request line (``{"cmd": "status"}``, ``{"cmd": "scale",
"n": 3}``...) and reads reply lines until one carries ``"done": true``. Long
operations (reload, upgrade) send ``{"progress": "..."}`` lines first, so
``tether ctl reload`` can show what happens and exit non-zero if it failed.

Mutating operations live here and only here (not on the HTTP debug listener):
file permissions are the access control, and nothing here is reachable from
the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from tether._streamserver import StreamServer
from tether.errors import BindError, ConfigError
from tether.sockets import bind, parse_address

__all__ = ["ControlServer", "bind_control", "request"]

log = logging.getLogger("tether.master")

Reply = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[dict[str, Any], Reply], Awaitable[dict[str, Any]]]

_MAX_REQUEST = 64 * 1024


def bind_control(path: str) -> socket.socket:
    """Bind the control socket at ``path`` with mode 0600.

    Refuses (ConfigError, one line) an existing path that is not a socket, a
    live socket (another master), a missing or unwritable directory.
    """
    address = parse_address(f"unix:{path}", flag="--control")
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(directory) and not os.access(directory, os.W_OK | os.X_OK):
        msg = (
            f"cannot create --control {path}: directory {directory} is not writable; "
            "choose a path in a directory you own"
        )
        raise ConfigError(msg)
    try:
        return bind(address, backlog=64, flag="--control", mode=0o600)
    except BindError as exc:
        raise ConfigError(
            str(exc).replace("cannot bind unix:", "cannot create --control ")
        ) from exc


class ControlServer(StreamServer):
    """Serves the control socket; each request goes to ``handler``."""

    def __init__(self, sock: socket.socket, handler: Handler) -> None:
        super().__init__(sock)
        self._handler = handler

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            if len(line) > _MAX_REQUEST:
                return
            try:
                req = json.loads(line)
            except ValueError as exc:
                req = f"bad request: {exc}"
            if not isinstance(req, dict):
                error = req if isinstance(req, str) else "bad request: not a JSON object"
                await _send(writer, {"done": True, "ok": False, "error": error})
                return

            async def reply(message: dict[str, Any]) -> None:
                await _send(writer, message)

            result = await self._handler(req, reply)
            await _send(writer, {"done": True, **result})
        except (ConnectionError, TimeoutError):
            pass


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message).encode() + b"\n")
    await writer.drain()


async def request(path: str, req: dict[str, Any], limit: float) -> AsyncIterator[dict[str, Any]]:
    """Send ``req`` to the control socket at ``path``; yield reply lines until the last."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), 5)
    except FileNotFoundError:
        msg = f"no control socket at {path}; is the master running with --control {path}?"
        raise ConfigError(msg) from None
    except ConnectionRefusedError:
        msg = f"nothing listens on {path}; the master is not running (a stale socket file)"
        raise ConfigError(msg) from None
    except PermissionError:
        msg = f"permission denied on {path}; run as the user that runs the master"
        raise ConfigError(msg) from None
    try:
        writer.write(json.dumps(req).encode() + b"\n")
        await writer.drain()
        async with asyncio.timeout(limit):
            while True:
                line = await reader.readline()
                if not line:
                    yield {"done": True, "ok": False, "error": "the master closed the connection"}
                    return
                message = json.loads(line)
                yield message
                if message.get("done"):
                    return
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
