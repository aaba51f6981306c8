"""Tests for tether.serving: the drain signal, and the app's shutdown after the drain deadline.

An ASGI app served in this process on a loopback socket, stopped through its
Group; the framework matrix (tests/test_frameworks.py) covers the same under
`tether run` with real frameworks.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import pytest

from tether.group import Group
from tether.serving import (
    DrainHooks,
    HttpServer,
    ServeOptions,
    app_shutdown_reserve,
    drain_signal,
)


def listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    return sock


class StreamingApp:
    """Lifespan, and ``GET /`` streaming one chunk every 10 ms: until the drain signal, or ever."""

    def __init__(self, *, observe_drain: bool) -> None:
        self.observe_drain = observe_drain
        self.events: list[str] = []
        self.streaming = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    self.events.append("lifespan shutdown")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        self.streaming.set()
        drain = drain_signal()
        while not (self.observe_drain and drain.should_exit):
            await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
            await asyncio.sleep(0.01)
        self.events.append("stream ended on the drain signal")


async def read_until_closed(port: int, version: str = "1.1") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/%s\r\nHost: test\r\n\r\n" % version.encode())
    try:
        return await reader.read(-1)
    finally:
        writer.close()
        await writer.wait_closed()


async def serve_and_stop(
    app: StreamingApp, graceful_timeout: float, version: str = "1.1"
) -> tuple[bytes, DrainHooks]:
    """Serve ``app``, open a stream, stop the group; what the client got, and the hooks."""
    sock = listening()
    port = sock.getsockname()[1]
    hooks = DrainHooks()
    server = HttpServer(app, [sock], hooks=hooks)
    group = Group("test", graceful_timeout=graceful_timeout, cancel_timeout=1)
    outside = drain_signal()
    await group.start(server.run, name="http")
    assert drain_signal() is hooks.drain is not outside
    client = asyncio.create_task(read_until_closed(port, version))
    await asyncio.wait_for(app.streaming.wait(), 10)
    assert not hooks.drain.should_exit
    group.stop("test over")
    await group.wait()
    assert drain_signal() is outside  # a server's signal is current only while it runs
    return await asyncio.wait_for(client, 10), hooks


def test_a_stream_that_watches_the_drain_signal_ends_cleanly() -> None:
    """The drain sets the signal; a stream that ends on it gets a proper last chunk."""

    async def main() -> None:
        app = StreamingApp(observe_drain=True)
        received, hooks = await serve_and_stop(app, graceful_timeout=10)
        assert hooks.drain.should_exit and not hooks.drain.force_exit
        assert received.endswith(b"\r\n0\r\n\r\n")  # chunked encoding's end, not a cut
        assert app.events == ["stream ended on the drain signal", "lifespan shutdown"]
        assert hooks.abandoned == []

    asyncio.run(main())


def test_a_close_delimited_stream_that_watches_the_drain_signal_ends_cleanly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An HTTP/1.0 client's stream (no chunks) ends on the drain signal without an app error."""

    async def main() -> None:
        app = StreamingApp(observe_drain=True)
        received, hooks = await serve_and_stop(app, graceful_timeout=10, version="1.0")
        head, body = received.split(b"\r\n\r\n", 1)
        assert b"transfer-encoding" not in head.lower() and body.endswith(b"tick\n")
        assert set(body.split(b"\n")) == {b"tick", b""}  # nothing but the app's bytes
        assert app.events == ["stream ended on the drain signal", "lifespan shutdown"]
        assert hooks.abandoned == []

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_an_endless_stream_is_cut_at_the_drain_deadline_and_lifespan_shutdown_runs() -> None:
    """The drain leaves lifespan shutdown its slice: the stream is named and cut, then it runs."""

    async def main() -> None:
        app = StreamingApp(observe_drain=False)
        loop = asyncio.get_running_loop()
        started = loop.time()
        received, hooks = await serve_and_stop(app, graceful_timeout=2)
        assert 1.0 <= loop.time() - started < 2.0  # 2 s budget, 1 s kept for the shutdown
        assert b"tick" in received and not received.endswith(b"\r\n0\r\n\r\n")
        assert app.events == ["lifespan shutdown"]
        [item] = hooks.abandoned
        assert (item.kind, item.name) == ("request", "GET /")
        assert item.detail == (
            "still running at the drain deadline; cancelled so that the app's shutdown could run"
        )

    asyncio.run(main())


@pytest.mark.parametrize(
    ("budget", "reserve"), [(30.0, 3.0), (100.0, 10.0), (5.0, 1.0), (1.0, 0.5), (0.0, 0.0)]
)
def test_app_shutdown_reserve(budget: float, reserve: float) -> None:
    """A tenth of the budget, at least a second, at most half of it."""
    assert app_shutdown_reserve(budget) == reserve


class RecordingTransport:
    """A connection that records each write the server makes (one per system call)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_a_response_is_written_in_one_call() -> None:
    """Head and body of a small response leave in one write, not two (one syscall saved).

    Streamed chunks sent in later steps are written as they come, in order, and
    a connection closed after its response gets the response first.
    """

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"text/plain")]
        if scope["path"] != "/stream":
            headers.append((b"content-length", b"6"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if scope["path"] == "/stream":
            for chunk in (b"one\n", b"two\n"):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await asyncio.sleep(0)  # the next chunk comes in a later loop step
            await send({"type": "http.response.body", "body": b""})
        else:
            await send({"type": "http.response.body", "body": b"hello\n"})

    async def main() -> None:
        server = HttpServer(app, [], ServeOptions(lifespan="off"))
        accepted = server.protocol_factory({}, asyncio.get_running_loop())  # per connection
        answered = asyncio.Event()

        async def serve(request: bytes) -> RecordingTransport:
            transport = RecordingTransport()
            protocol: Any = accepted()
            protocol.connection_made(transport)
            complete = protocol.on_response_complete

            def on_response_complete() -> None:
                complete()
                answered.set()

            protocol.on_response_complete = on_response_complete
            answered.clear()
            protocol.data_received(request)
            await asyncio.wait_for(answered.wait(), 5)
            await asyncio.sleep(0)  # the step in which held writes go out
            return transport

        plain = await serve(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert len(plain.writes) == 1
        assert plain.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
        assert plain.writes[0].endswith(b"\r\n\r\nhello\n")

        streamed = await serve(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        body = b"".join(streamed.writes)
        assert body.startswith(b"HTTP/1.1 200 OK\r\n")
        assert body.endswith(b"4\r\none\n\r\n4\r\ntwo\n\r\n0\r\n\r\n")
        assert len(streamed.writes) <= 3  # head with the first chunk; never one per message

        closing = await serve(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert closing.closed and closing.writes[0].endswith(b"hello\n")

    asyncio.run(main())


async def lifespan_app(scope: Any, receive: Any, send: Any) -> None:
    """Takes part in the lifespan protocol, so its shutdown has a reserve; serves nothing."""
    while scope["type"] == "lifespan":
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


@pytest.mark.parametrize(("lifespan", "reserve"), [("off", 0.0), ("on", 1.0)])
def test_phase_5_is_given_the_plans_deadline_less_the_apps_shutdown_reserve(
    lifespan: str, reserve: float
) -> None:
    """The background hook gets an absolute time.monotonic() deadline, not seconds left."""
    given: list[float] = []

    async def background(deadline: float) -> list[Any]:
        given.append(deadline)
        return []

    async def main() -> float:
        options = ServeOptions(lifespan=lifespan)  # type: ignore[arg-type]
        server = HttpServer(lifespan_app, [listening()], options, DrainHooks(background=background))
        group = Group("test", graceful_timeout=30, cancel_timeout=1)
        await group.start(server.run, name="http")
        deadline = time.monotonic() + 5.0  # a plan's: made before the stop reaches the server
        group.stop("test over", deadline=deadline)
        await group.wait()
        return deadline

    deadline = asyncio.run(main())
    # 5 s left: the app's shutdown keeps app_shutdown_reserve(5) = 1 s of it.
    assert given == [deadline - reserve]
