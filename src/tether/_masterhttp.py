"""The master's debug listener, and the client that asks workers for their dumps.

Written by hand rather than served by uvicorn: the master must not import the
app or anything heavy, must keep answering while it reloads, and must not
hand its signals to a server library. It answers a handful of GET requests,
one per connection (``Connection: close``), from loopback tooling.

Endpoints (the routes come from :mod:`tether._masterapi`): ``/healthz`` (the
master's loop answers), ``/readyz`` (200 when a generation serves and the
master is not stopping), ``/metrics``, ``/debug/workers`` (the same JSON as
``tether ctl status``), ``/debug/tasks`` (every worker's task dump, fetched
from its private debug socket; ``?format=json``), ``/debug/threads`` (the
master's own threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

from tether._streamserver import StreamServer

__all__ = ["DebugServer", "fetch_unix"]

log = logging.getLogger("tether.master")

Route = Callable[[dict[str, list[str]]], Awaitable[tuple[int, str, bytes]]]

_REASONS = {200: "OK", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed"}
_REASONS |= {400: "Bad Request", 503: "Service Unavailable"}


class DebugServer(StreamServer):
    """Serves ``routes`` (path → coroutine returning status, content type, body) on ``sock``."""

    def __init__(self, sock: socket.socket, routes: dict[str, Route], token: str | None) -> None:
        super().__init__(sock)
        self._routes = routes
        self._token = token

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(30):
                status, ctype, body = await self._answer(reader)
                head = (
                    f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\n"
                    f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\nCache-Control: no-store\r\n\r\n"
                )
                writer.write(head.encode() + body)
                await writer.drain()
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            pass

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return 400, "text/plain", b"bad request\n"
        method, target, _ = parts
        headers = {}
        for line in lines[1:]:
            key, sep, value = line.partition(":")
            if sep:
                headers[key.strip().lower()] = value.strip()
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET\n"
        url = urlsplit(target)
        query = parse_qs(url.query)
        route = self._routes.get(url.path.rstrip("/") or "/")
        if route is None:
            return 404, "text/plain", b"not found; try /healthz, /readyz, /debug/\n"
        if url.path.startswith("/debug") and self._token is not None:
            given = headers.get("authorization", "").removeprefix("Bearer ").strip()
            given = given or (query.get("token") or [""])[0]
            if not hmac.compare_digest(given.encode(), self._token.encode()):
                return 401, "text/plain", b"a token is required: Authorization: Bearer TOKEN\n"
        return await route(query)


async def fetch_unix(path: str, target: str, limit: float = 5.0) -> tuple[int, bytes]:
    """GET ``target`` from the HTTP server on the unix socket ``path`` within ``limit`` seconds."""
    async with asyncio.timeout(limit):
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            request = f"GET {target} HTTP/1.1\r\nHost: worker\r\nConnection: close\r\n\r\n"
            writer.write(request.encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {}
            for line in lines[1:]:
                key, sep, value = line.partition(":")
                if sep:
                    headers[key.strip().lower()] = value.strip().lower()
            if headers.get("transfer-encoding") == "chunked":
                body = await _read_chunked(reader)
            elif "content-length" in headers:
                body = await reader.readexactly(int(headers["content-length"]))
            else:
                body = await reader.read()
            return status, body
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readline()


def json_body(data: object) -> bytes:
    """Indented JSON and a newline, for humans with curl."""
    return json.dumps(data, indent=2).encode() + b"\n"
