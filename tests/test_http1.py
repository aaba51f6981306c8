"""What HTTP/1 clients get on the wire: pipelined requests through a drain, HTTP/1.0 framing.

Real `tether run` processes and raw loopback sockets, for both of uvicorn's
parsers: a client that pipelines gets every request it sent answered, in
order, when the server stops or reloads; an HTTP/1.0 client never gets
chunked coding; a response the connection closes after comes with its FIN,
in one segment.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from tether._http1 import closing_send, end_stream

from proc import tether

PARSERS = ["httptools", "h11"]
Response = tuple[bytes, dict[bytes, bytes], bytes]  # status line, headers, body


def parse(data: bytes) -> list[Response]:
    """The complete responses at the start of ``data``, each framed by its Content-Length."""
    out: list[Response] = []
    while b"\r\n\r\n" in data:
        head, rest = data.split(b"\r\n\r\n", 1)
        status, *lines = head.split(b"\r\n")
        headers = {}
        for line in lines:
            name, value = line.split(b":", 1)
            headers[name.strip().lower()] = value.strip()
        length = int(headers[b"content-length"])
        if len(rest) < length:
            break
        out.append((status, headers, rest[:length]))
        data = rest[length:]
    return out


def read(conn: socket.socket, done: Callable[[bytes], bool] | None = None) -> bytes:
    """What the server sends until ``done`` says so, or until it closes the connection."""
    data = b""
    deadline = time.monotonic() + 30
    while done is None or not done(data):
        conn.settimeout(max(0.0, deadline - time.monotonic()))
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    return data


PIPELINED = b"GET /answer?n=0 HTTP/1.1\r\nHost: t\r\n\r\n" + b"".join(
    # The rest wait for the drain, then take a while: the idle grace ends before the last.
    b"GET /answer?n=%d&after=drain&seconds=0.1 HTTP/1.1\r\nHost: t\r\n\r\n" % n
    for n in range(1, 10)
)


@pytest.mark.parametrize("http", PARSERS)
@pytest.mark.parametrize(
    ("workers", "sig"),
    [("0", signal.SIGTERM), ("0", signal.SIGHUP), ("2", signal.SIGTERM), ("1", signal.SIGHUP)],
    ids=["single-TERM", "single-HUP", "workers-TERM", "workers-HUP"],
)
def test_pipelined_requests_are_all_answered_through_a_drain(
    http: str, workers: str, sig: signal.Signals
) -> None:
    """Ten GETs in one write, then a stop or reload: ten answers in order, the last closes."""
    with tether("http1:app", "--workers", workers, "--http", http, debug=False) as t:
        t.ready()
        with socket.create_connection(("127.0.0.1", t.port), timeout=30) as conn:
            conn.sendall(PIPELINED)
            first = read(conn, lambda data: len(parse(data)) >= 1)  # the rest are queued
            t.signal(sig)
            received = first + read(conn)  # to the end: the server closes the connection
        answers = parse(received)
        assert [body for _, _, body in answers] == [b"%d" % n for n in range(10)], received
        assert all(status.endswith(b" 200 OK") for status, _, _ in answers)
        # Only the last says close; it was sent after the drain began, as all but the first.
        assert [h.get(b"connection", b"").lower() for _, h, _ in answers] == [b""] * 9 + [b"close"]
        if sig == signal.SIGTERM:
            assert t.wait() == 0, t.stderr()


def exchange(port: int, request: bytes) -> tuple[dict[bytes, bytes], bytes]:
    """One request on its own connection, read until the server closes it: headers, body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(request)
        data = read(conn)
    head, body = data.split(b"\r\n\r\n", 1)
    status, *lines = head.split(b"\r\n")
    assert status == b"HTTP/1.1 200 OK", data
    headers = dict(line.lower().split(b": ", 1) for line in lines)
    return headers, body


@pytest.mark.parametrize("http", PARSERS)
def test_an_http10_client_never_gets_chunked_coding(http: str) -> None:
    """HTTP/1.0: a body without a length ends at the close; HTTP/1.1 still gets chunks."""
    with tether("http1:app", "--http", http, debug=False) as t:
        t.ready()
        for path in (b"/stream", b"/stream?te=1"):  # the app names chunked coding itself
            headers, body = exchange(t.port, b"GET %s HTTP/1.0\r\n\r\n" % path)
            assert b"transfer-encoding" not in headers, headers
            assert headers[b"connection"] == b"close"
            assert body == b"one\ntwo\n"  # as written: no chunk sizes, ended by the close
        headers, body = exchange(t.port, b"HEAD /stream HTTP/1.0\r\n\r\n")
        assert b"transfer-encoding" not in headers and body == b""
        headers, body = exchange(t.port, b"GET /answer?n=7 HTTP/1.0\r\n\r\n")
        assert (headers[b"content-length"], headers[b"connection"], body) == (b"1", b"close", b"7")
        request = b"GET /stream HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        headers, body = exchange(t.port, request)
        assert headers[b"transfer-encoding"] == b"chunked"
        assert body == b"4\r\none\n\r\n4\r\ntwo\n\r\n0\r\n\r\n"


def segments_without_data(conn: socket.socket) -> int:
    """Segments ``conn`` received that carried no data (Linux's TCP_INFO: segs_in, data_segs_in).

    For a connection that sent one request and read to the close: the SYN-ACK, the
    server's ACK of the request, and the FIN if it did not come with the response.
    """
    info = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    (segs_in,) = struct.unpack_from("I", info, 140)
    (data_segs_in,) = struct.unpack_from("I", info, 152)
    return int(segs_in - data_segs_in)


@pytest.mark.skipif(sys.platform != "linux", reason="TCP_CORK and TCP_INFO are Linux's")
@pytest.mark.parametrize("http", PARSERS)
def test_a_response_the_connection_closes_after_comes_with_the_fin(http: str) -> None:
    """Connection: close: the response and the FIN arrive in one segment; a large one whole."""
    with tether("http1:app", "--http", http, debug=False) as t:
        t.ready()
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", t.port), timeout=30) as conn:
                conn.sendall(b"GET /answer?n=7 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                (answer,) = parse(read(conn))
                assert answer[2] == b"7"
                assert segments_without_data(conn) <= 2  # SYN-ACK, ACK: no FIN of its own
        # Larger than the socket's buffers: held back only until the close, sent whole.
        headers, body = exchange(
            t.port,
            b"GET /answer?n=7&times=8000000 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        assert headers[b"connection"] == b"close" and body == b"7" * 8_000_000


# -- the drain's sends, in this process ------------------------------------------------


class Cycle:
    """The parts of uvicorn's request cycle a drain's send reads; ``send`` is its method."""

    def __init__(self, *, chunked: bool = True, complete: bool = False) -> None:
        self.response_started = True
        self.chunked_encoding = chunked
        self.close_delimited = False
        self.response_complete = complete
        self.disconnected = False
        self.sent: list[dict[str, Any]] = []

    async def send(self, message: Any) -> None:
        self.sent.append(message)


def test_a_drains_send_says_close_on_the_last_requests_response_only_at_its_start() -> None:
    """closing_send adds Connection: close to the head, keeps the app's headers, not the body."""
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def main() -> None:
        closing = closing_send(send)  # not a uvicorn cycle's: its request is always the last
        head = {"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]}
        await closing(head)
        await closing({"type": "http.response.body", "body": b"hi"})

    asyncio.run(main())
    assert sent[0]["headers"] == [(b"x-app", b"1"), (b"connection", b"close")]
    assert sent[1] == {"type": "http.response.body", "body": b"hi"}


def test_a_stream_left_open_at_the_drain_is_ended_and_nothing_else_is_touched() -> None:
    """end_stream sends the last body of an unframed stream left open; not of a framed one."""

    async def main() -> list[list[dict[str, Any]]]:
        cycles = [Cycle(), Cycle(chunked=False), Cycle(complete=True)]
        for cycle in cycles:
            await end_stream(cycle.send)
        await end_stream(Cycle().sent.append)  # type: ignore[arg-type]  # no cycle behind it
        return [cycle.sent for cycle in cycles]

    last = {"type": "http.response.body", "body": b"", "more_body": False}
    assert asyncio.run(main()) == [[last], [], []]
