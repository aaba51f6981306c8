"""What every connection is held to before it sends a request, and what a capped port adds.

uvicorn's protocols time a connection only between requests: their
keep-alive timer is armed after a response and cancelled by the next byte.
A connection that sends nothing, or half a request head, is held for as long
as the peer likes (slowloris). Here each connection must finish a request
head within ``head_timeout`` seconds of being accepted, or of the first byte
of a later head; one that does not is answered 408 (nothing, if it sent
nothing) and closed. A request body is not timed: once its head is in, a
request belongs to the app, so a slow upload is never cut here.

A port strangers may reach (the debug listener, where the liveness probe
goes) also has a connection cap. At the cap, a new connection takes the
place of the open one that has waited longest without a request in
progress (idle keep-alive, or a head still coming): idle and half-sent
connections, from one client or many, can never lock a probe out. Only when
every open connection has a request in progress is the newcomer refused.
Request heads larger than ``max_head`` are answered 431 instead of being
buffered.

Invariant: no timer per connection. Each connection carries the loop time its
head is due by (``head_due``, None once the head is in); one sweep per server,
every quarter of ``head_timeout`` (at most a second) and only while
connections are open, cuts those past it, so a late head is cut between
``head_timeout`` and ``head_timeout`` plus one period. A connection a
websocket upgrade has taken over is never touched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import Any, cast

__all__ = ["HeadSweep", "capped", "guarded"]

_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain\r\n"
    b"content-length: 29\r\nconnection: close\r\n\r\nrequest head is too large\r\n\r\n"
)
_TOO_SLOW = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\n"
    b"content-length: 33\r\nconnection: close\r\n\r\nrequest head did not arrive in time\r\n"
)


def guarded(factory: Any, *, head_timeout: float | None, max_head: int | None) -> Any:
    """uvicorn's protocol class ``factory``, with the head deadline and the head size cap.

    ``head_timeout`` None: no deadline (uvicorn's behaviour); ``max_head`` None: no cap
    (and no eviction: the connection's last activity is then not recorded). The
    deadline is enforced by a :class:`HeadSweep` over the server's connections.
    """
    if head_timeout is None and max_head is None:
        return factory

    class Guarded(factory):  # type: ignore[misc]
        #: Loop time by which the head in progress (or the first one) must be complete.
        head_due: float | None = None
        _head_started = False  # bytes of a head have arrived since the last complete one
        _head = 0  # bytes of the head so far, for max_head
        _last = 0.0  # loop time of the last byte (or of the accept): for eviction

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            now = self.loop.time()
            if max_head is not None:
                self._last = now
            if head_timeout is not None:
                self.head_due = now + head_timeout

        def data_received(self, data: bytes) -> None:
            if max_head is not None:
                self._last = self.loop.time()
                cycle = self.cycle
                in_request = cycle is not None and not cycle.response_complete
                self._head = 0 if in_request else self._head + len(data)
                if self._head > max_head:
                    self.head_due = None
                    self.transport.write(_TOO_LARGE)
                    self.transport.close()
                    return
            super().data_received(data)
            if head_timeout is None:
                return
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                # A head is complete: what follows is the app's (its body, its stream).
                self._head_started = False
                self.head_due = None
                return
            if self.head_due is None:
                # The first byte of a later head (a keep-alive connection's next request).
                self.head_due = self.loop.time() + head_timeout
            self._head_started = True

        def idle_since(self) -> float | None:
            """Loop time since which no request is in progress, or None while one is."""
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                return None
            if self.transport is None or self.transport.is_closing():
                return None
            return self._last

        def head_late(self) -> None:
            """The head deadline passed: 408 if a head was coming (nothing if not), close."""
            self.head_due = None
            transport = self.transport
            if transport.is_closing() or transport.get_protocol() is not self:
                return  # closing already, or upgraded to a websocket
            if self._head_started:
                transport.write(_TOO_SLOW)
            transport.close()

    return Guarded


class HeadSweep:
    """The head deadline of every connection of one server, checked by one timer.

    Runs only while connections are open (:meth:`traffic`, told by the server's
    connection set), so an idle server wakes for nothing. Each run cuts the
    connections whose ``head_due`` has passed (see :func:`guarded`).
    """

    def __init__(self, connections: Collection[Any], head_timeout: float) -> None:
        self.connections = connections
        self.period = min(1.0, head_timeout / 4)
        self._timer: asyncio.TimerHandle | None = None

    def traffic(self, busy: bool) -> None:
        """The first connection opened (True), or none has been open for a while (False)."""
        if busy:
            if self._timer is None:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(self.period, self._sweep, loop)
        else:
            self.stop()

    def stop(self) -> None:
        """No more sweeps (until the next :meth:`traffic`)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        late = [
            conn
            for conn in self.connections
            if (due := getattr(conn, "head_due", None)) is not None and due <= now
        ]
        for conn in late:
            conn.head_late()
        self._timer = loop.call_later(self.period, self._sweep, loop)


def capped(
    make: Callable[[], asyncio.Protocol], connections: Collection[Any], cap: int
) -> Callable[[], asyncio.Protocol]:
    """A protocol factory that keeps at most about ``cap`` of ``connections`` open.

    At the cap the connection idle the longest (see :func:`guarded`'s
    ``idle_since``) is closed to make room; with none idle, the new
    connection is closed as soon as it is accepted. Accepts that arrive in
    one loop step are counted as they are made, so the cap holds within a
    listen backlog's worth.
    """

    def protocol() -> asyncio.Protocol:
        if len(connections) >= cap and not _evict(connections):
            return _Refused()
        return make()

    return protocol


def _evict(connections: Collection[Any]) -> bool:
    """Close the connection idle the longest; False if every one has a request in progress."""
    oldest = None
    since = 0.0
    for conn in connections:
        idle_since = getattr(conn, "idle_since", None)  # a websocket has none: busy
        at = idle_since() if idle_since is not None else None
        if at is not None and (oldest is None or at < since):
            oldest, since = conn, at
    if oldest is None:
        return False
    oldest.transport.close()
    return True


class _Refused(asyncio.Protocol):
    """A connection past the cap with nothing to evict: closed as soon as it is accepted."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).abort()
