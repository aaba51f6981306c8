"""A small asyncio stream server for the master's control socket.

The control socket speaks JSON lines, not HTTP, so no HTTP server fits (see
``_control``). This base keeps a handle on every conversation, so that
closing the server ends them within a bound, and a writer that is always
closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

__all__ = ["StreamServer"]


class StreamServer:
    """Accepts on ``sock`` and runs :meth:`handle` for each connection.

    Resource handling: owns ``sock``; :meth:`close` stops accepting, cancels
    the conversations still running (waiting at most two seconds) and closes
    the socket (a unix socket's file is left alone).
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start accepting on the running loop."""
        if self._sock.family == socket.AF_UNIX:
            self._server = await asyncio.start_unix_server(self._converse, sock=self._sock)
        else:
            self._server = await asyncio.start_server(self._converse, sock=self._sock)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One conversation; the writer is closed afterwards whatever happens."""
        raise NotImplementedError

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handle(reader, writer)
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def close(self) -> None:
        """Stop accepting and end every open conversation."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        self._sock.close()
