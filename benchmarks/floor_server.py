"""A measuring instrument, not a server: the least an HTTP/1.1 protocol in Python can do.

It answers the benchmark's hello app over httptools on uvloop, as uvicorn
and tether do, with only what that takes: parse the request, build the ASGI
scope, run the app in a task, write the head and the body, keep the
connection alive or close it as the request says. No flow control, no
timeouts, no pipelining, no request bodies, no websockets, no drain, no
metrics, none of uvicorn's per-connection bookkeeping. What it costs per
request is the floor under any protocol written in Python on this event
loop; ``bench_conn.py --floor`` sets it beside uvicorn and tether, to show how much
of a ``Connection: close`` request is the protocol's own Python.

    python floor_server.py MODULE:ATTR PORT
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import socket
import sys
from email.utils import formatdate
from typing import Any

import httptools
import uvloop

_RUNNING: set[asyncio.Task[None]] = set()
_REASONS = {200: b"OK", 404: b"Not Found", 500: b"Internal Server Error"}


class _Exchange:
    """One request: its scope, and the app's receive and send."""

    __slots__ = ("complete", "keep_alive", "protocol", "scope", "started")

    def __init__(self, protocol: _Protocol, scope: dict[str, Any], keep_alive: bool) -> None:
        self.protocol = protocol
        self.scope = scope
        self.keep_alive = keep_alive
        self.started = False
        self.complete = False

    async def receive(self) -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(self, message: dict[str, Any]) -> None:
        transport = self.protocol.transport
        if not self.started:
            self.started = True
            status = message["status"]
            head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"")), _DATE[0]]
            for name, value in message.get("headers", ()):
                head += (name, b": ", value, b"\r\n")
            if not self.keep_alive:
                head.append(b"connection: close\r\n")
            head.append(b"\r\n")
            transport.write(b"".join(head))
        elif not self.complete:
            body = message.get("body", b"")
            if body:
                transport.write(body)
            if not message.get("more_body", False):
                self.complete = True
                if not self.keep_alive:
                    transport.close()

    async def run(self, app: Any) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except Exception:
            self.protocol.transport.close()


class _Protocol(asyncio.Protocol):
    def __init__(self, app: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.loop = loop
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.exchange: _Exchange | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n")
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        url = httptools.parse_url(self.url)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": self.parser.get_http_version(),
            "method": self.parser.get_method().decode("ascii"),
            "scheme": "http",
            "path": url.path.decode("ascii"),
            "raw_path": url.path,
            "query_string": url.query or b"",
            "root_path": "",
            "headers": self.headers,
        }
        self.exchange = _Exchange(self, scope, self.parser.should_keep_alive())

    def on_message_complete(self) -> None:
        assert self.exchange is not None
        task = self.loop.create_task(self.exchange.run(self.app))
        _RUNNING.add(task)  # held until done: the loop keeps only a weak reference
        task.add_done_callback(_RUNNING.discard)


_DATE = [b"date: " + formatdate(usegmt=True).encode() + b"\r\n"]


def _refresh_date(loop: asyncio.AbstractEventLoop) -> None:
    _DATE[0] = b"date: " + formatdate(usegmt=True).encode() + b"\r\n"
    loop.call_later(1.0, _refresh_date, loop)


def main() -> None:
    target, port = sys.argv[1], int(sys.argv[2])
    sys.path.insert(0, os.getcwd())  # the app's directory, as the servers' own commands do
    module, _, attr = target.partition(":")
    app = getattr(importlib.import_module(module), attr)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    loop.run_until_complete(loop.create_server(lambda: _Protocol(app, loop), sock=sock))
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    _refresh_date(loop)
    loop.run_forever()


if __name__ == "__main__":
    main()
