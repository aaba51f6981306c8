"""A keep-alive HTTP load client that counts every failed request.

Each connection sends ``GET /`` again as soon as the previous response is
complete, reusing the connection (HTTP/1.1 keep-alive) until the server says
``Connection: close``. A request fails if the connection cannot be opened, is
reset or closed before the whole response arrived, or the status is not 200:
exactly the failures a graceful reload must not cause.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from dataclasses import dataclass, field


@dataclass
class LoadStats:
    """What the load saw."""

    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    #: First word of each response body (the app's version) → count.
    versions: collections.Counter[str] = field(default_factory=collections.Counter)


class Load:
    """``connections`` keep-alive clients hammering ``GET /`` on 127.0.0.1:``port``.

    With ``pause``, each client waits that long between requests: steady traffic that
    leaves the host idle CPU (a saturating load starves what runs at a low priority).
    """

    def __init__(self, port: int, connections: int = 16, *, pause: float = 0.0) -> None:
        self.port = port
        self.connections = connections
        self.pause = pause
        self.stats = LoadStats()
        self._tasks: list[asyncio.Task[None]] = []
        self._first = asyncio.Event()

    async def __aenter__(self) -> Load:
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.connections)]
        await asyncio.wait_for(self._first.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _fail(self, why: str) -> None:
        self.stats.failed += 1
        if len(self.stats.errors) < 20:
            self.stats.errors.append(why)

    async def _client(self) -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError as exc:
                self._fail(f"connect: {exc!r}")
                await asyncio.sleep(0.05)  # do not spin on a refused port
                continue
            try:
                while await self._one(reader, writer):
                    if self.pause:
                        await asyncio.sleep(self.pause)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """One request; True if the connection may be reused."""
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {}
            for line in lines[1:]:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip().lower()
            if headers.get("transfer-encoding") == "chunked":
                body = await _chunked(reader)
            else:
                body = await reader.readexactly(int(headers.get("content-length", "0")))
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            self._fail(f"request: {exc!r}")
            return False
        if status != 200:
            self._fail(f"status {status}")
        else:
            self.stats.ok += 1
            self.stats.versions[body.decode().split(" ")[0]] += 1
            self._first.set()
        return headers.get("connection") != "close"


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        data = await reader.readexactly(size + 2)
        if size == 0:
            return b"".join(parts)
        parts.append(data[:-2])
