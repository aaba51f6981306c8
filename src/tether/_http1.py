"""Three HTTP/1 rules uvicorn's protocol classes do not keep, kept for both of its parsers.

**A drain answers every request a connection has already delivered.** A
client may pipeline: send several requests before it reads the first
response. uvicorn queues them (httptools in a deque, h11 in its receive
buffer) and answers them in order. A drain that says ``Connection: close``
on the next response, or closes once the response in progress ends, loses
the requests queued behind it: the client sent them, the server read them,
and they get no answer. Here a connection that still holds received
requests is not closed, and only the response to the last request received
is told to close (the request's own answer then ends the connection):
:func:`closing_send` is the ``send`` a drain gives each request.

**An HTTP/1.0 client never gets chunked transfer coding** (RFC 9112 §6.1
forbids sending it to one). A response without ``Content-Length`` to an
HTTP/1.0 request is delimited by the close: ``Connection: close``, the body
as the app writes it, the end of the body where the connection ends. h11
does this itself; uvicorn's httptools protocol sends chunked, so its cycle
for an HTTP/1.0 request is given a ``send`` that frames the body by the
close. HTTP/1.0 connections are never kept alive (both protocols close
them), so keep-alive without a length cannot arise.

**A stream its app ends on the drain signal ends cleanly.** A response
without a length that the app leaves open when it sees the drain signal
(sse-starlette's streams do) is finished by :func:`end_stream`: the
last chunk, or the close, rather than a cut connection and an app error.

Invariant: on an HTTP/1.1 connection that is not draining, the only work
added per request is one comparison of the request's version (httptools);
everything else runs when a drain asks or an HTTP/1.0 request arrives.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, MutableMapping
from types import MethodType
from typing import Any

__all__ = ["adapt", "closing_send", "end_stream", "last_received", "requests_waiting"]

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]

_HTTPTOOLS = ("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol")
_H11 = ("uvicorn.protocols.http.h11_impl", "H11Protocol")


def _is(factory: type, where: tuple[str, str]) -> bool:
    # Looked up, not imported: a class derived from one of uvicorn's protocols has its
    # module loaded already, and the other parser (h11: ~10 ms) need not be.
    module = sys.modules.get(where[0])
    return module is not None and issubclass(factory, getattr(module, where[1]))


def adapt(factory: type) -> type:
    """uvicorn's HTTP/1 protocol class, answering every received request through a drain.

    The class returned has ``requests_waiting()``, and its ``shutdown()`` (what
    a drain calls once the idle grace is over) leaves a connection with
    received requests queued open, so they are answered; with httptools, an
    HTTP/1.0 request's response is never chunked.
    """
    if _is(factory, _HTTPTOOLS):
        return _httptools(factory)
    if _is(factory, _H11):
        return _h11(factory)
    return factory


def _httptools(factory: Any) -> type:
    # Its shutdown() is right as it is: it marks the last request parsed, queued or not.
    headers_complete = factory.on_headers_complete

    class HttpTools(factory):  # type: ignore[misc]
        def on_headers_complete(self) -> None:
            headers_complete(self)
            # The parser leaves "1.1" alone and writes any other version into the scope.
            if self.scope["http_version"] == "1.0":
                cycle = self.cycle
                # None or an older cycle when the request was an upgrade to a websocket.
                if cycle is not None and cycle.scope is self.scope:
                    cycle.send = MethodType(_send_http10, cycle)

        def requests_waiting(self) -> bool:
            """True while requests read after the one in progress wait for their turn."""
            return bool(self.pipeline)

    return HttpTools


def _h11(factory: Any) -> type:
    import h11

    base_shutdown = factory.shutdown

    class H11(factory):  # type: ignore[misc]
        def requests_waiting(self) -> bool:
            """True while bytes of the next request wait in h11's buffer behind this one."""
            conn = self.conn
            # While the current request's body still arrives, what is buffered is its own.
            return conn.their_state is h11.DONE and bool(conn.trailing_data[0])

        def shutdown(self) -> None:
            # uvicorn's marks the request in progress, the last one h11 has parsed; the
            # ones buffered behind it would be lost. Left alone, the last one's response
            # says Connection: close (a drain's send asks last_received). A request that
            # never completes is closed by the keep-alive timeout armed after each response.
            if not self.requests_waiting():
                base_shutdown(self)

    return H11


def requests_waiting(protocol: Any) -> bool:
    """True if ``protocol`` holds received requests behind the one it answers now."""
    waiting: Callable[[], bool] | None = getattr(protocol, "requests_waiting", None)
    return waiting is not None and waiting()


def last_received(send: Callable[[Message], Awaitable[None]]) -> Callable[[], bool]:
    """For a request's ``send`` (uvicorn's cycle method): is it its connection's last one?

    The answer is asked when the response starts, so requests that arrive while
    the app works count. A ``send`` that is not a uvicorn cycle's is always last.
    """
    cycle: Any = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    get_protocol = getattr(transport, "get_protocol", None)
    if get_protocol is None:
        return _always
    protocol = get_protocol()
    return lambda: not requests_waiting(protocol)


def _always() -> bool:
    return True


def closing_send(send: Send) -> Send:
    """``send`` that says ``Connection: close`` if its request is its connection's last.

    Asked when the response starts: requests the client pipelined behind this
    one are answered first, and the last one's response ends the connection.
    """
    last = last_received(send)

    async def send_closing(message: Message) -> None:
        if message["type"] == "http.response.start" and last():
            headers = list(message.get("headers", ()))
            headers.append((b"connection", b"close"))
            message = {**message, "headers": headers}
        await send(message)

    return send_closing


async def end_stream(send: Send) -> None:
    """Finish a response without a length that its app left open when the drain signal came.

    A stream that ends on the drain signal (sse-starlette's) returns without
    the last body message; the client gets a clean end of the stream rather
    than a cut connection (an event stream then reconnects, to the next
    generation in a reload), and the server does not log an app error. A
    ``send`` that is not a uvicorn cycle's, or a response already complete,
    framed by its length or disconnected, is left alone.
    """
    cycle: Any = getattr(send, "__self__", None)  # uvicorn's request cycle, whose method it is
    if (
        cycle is not None
        and getattr(cycle, "response_started", False)
        and (getattr(cycle, "chunked_encoding", False) or getattr(cycle, "close_delimited", False))
        and not cycle.response_complete
        and not cycle.disconnected
    ):
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _send_http10(cycle: Any, message: Message) -> None:
    """``send`` of httptools' cycle for an HTTP/1.0 request: no chunks, the close ends the body.

    uvicorn's cycle counts each body message against the length it expects; a
    close-delimited body has none, so each message is announced as exactly
    what remains. The cycle closes the connection after the last one, as it
    does for every HTTP/1.0 request.
    """
    kind = message["type"]
    if not cycle.response_started:
        if kind == "http.response.start":
            message = _close_delimited(cycle, message)
    elif kind == "http.response.body" and getattr(cycle, "close_delimited", False):
        cycle.expected_content_length = len(message.get("body", b""))
    await type(cycle).send(cycle, message)


def _close_delimited(cycle: Any, message: Message) -> Message:
    """The head for an HTTP/1.0 client: no chunked coding; without a length, the close ends it."""
    headers = list(message.get("headers", ()))
    names = [name.lower() for name, _ in headers]
    if b"transfer-encoding" not in names and (
        b"content-length" in names
        or cycle.scope["method"] == "HEAD"
        or message["status"] in (204, 304)
    ):
        return message  # framed by its length, or without a body: as uvicorn sends it
    # The cycle writes "connection: close" itself (it never keeps HTTP/1.0 alive); the app's
    # own connection and transfer-encoding headers would contradict the framing.
    kept = [h for h, name in zip(headers, names, strict=True) if name not in _REFRAMED]
    if b"content-length" not in names:
        cycle.chunked_encoding = False
        cycle.close_delimited = True
    return {**message, "headers": kept}


_REFRAMED = frozenset({b"transfer-encoding", b"connection"})
