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

Invariant: at most one head timer per connection, cancelled when its head
is complete or the connection is lost; the timer never touches a transport
a websocket upgrade has taken over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import Any, cast

__all__ = ["capped", "guarded"]

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

    ``head_timeout`` None: no deadline (uvicorn's behaviour); ``max_head`` None: no cap.
    """

    class Guarded(factory):  # type: ignore[misc]
        _head_timer: asyncio.TimerHandle | None = None
        _head_started = False  # bytes of a head have arrived since the last complete one
        _head = 0  # bytes of the head so far, for max_head
        _last = 0.0  # loop time of the last byte (or of the accept): for eviction

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self._last = self.loop.time()
            if head_timeout is not None:
                self._head_timer = self.loop.call_later(head_timeout, self._head_late)

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            self._last = self.loop.time()
            cycle = self.cycle
            if max_head is not None:
                in_request = cycle is not None and not cycle.response_complete
                self._head = 0 if in_request else self._head + len(data)
                if self._head > max_head:
                    self._stop_head_timer()
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
                if self._head_timer is not None:
                    self._stop_head_timer()
                return
            transport = self.transport
            if transport.is_closing() or transport.get_protocol() is not self:
                self._stop_head_timer()  # answered 400, or upgraded to a websocket
                return
            if self._head_timer is None:
                # The first byte of a head, in one loop step with the rest for a normal
                # client: a timer only for the one whose head is still coming.
                self._head_timer = self.loop.call_later(head_timeout, self._head_late)
            self._head_started = True

        def idle_since(self) -> float | None:
            """Loop time since which no request is in progress, or None while one is."""
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                return None
            if self.transport is None or self.transport.is_closing():
                return None
            return self._last

        def _stop_head_timer(self) -> None:
            timer = self._head_timer
            if timer is not None:
                timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            transport = self.transport
            if transport.is_closing():
                return
            if self._head_started:
                transport.write(_TOO_SLOW)
            transport.close()

    return Guarded


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
