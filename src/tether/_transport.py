"""A connection's writes in one event-loop step leave in one system call.

uvicorn's HTTP protocols write a response's head when the app sends
``http.response.start`` and its body when it sends ``http.response.body``:
two ``write`` calls for a small response, each a trip through the kernel's
TCP stack and a wake-up of the client. :func:`coalescing` gives a protocol
class a transport (:class:`CoalescingTransport`) that holds what one loop
step writes and sends it at the end of the step, in one call; on plain TCP,
the last response of a connection that closes leaves in the segment that
carries the FIN (``TCP_CORK`` until the close, :func:`cork`).

Invariant: nothing written is lost, reordered or delayed past the loop step
it was written in (or past the close): whatever closes, aborts or measures
the connection sees the held bytes first. The real transport's methods that
uvicorn calls on every request are the real transport's own, so the wrapper
adds one Python call per write and none per read.

Resource handling: no timer and no task; one ``call_soon`` per step with
writes, and a socket object on the transport's descriptor for the one
``setsockopt`` of a cork, detached before it is dropped.
"""

from __future__ import annotations

import _socket
import asyncio
import socket
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["TCP_CORK", "CoalescingTransport", "coalescing", "cork"]

#: Linux's: hold written bytes until uncorked or closed (see CoalescingTransport); 0: none.
TCP_CORK: int = getattr(socket, "TCP_CORK", 0)


def coalescing(factory: Any, *, fin_with_last: bool) -> Any:
    """The protocol class ``factory`` (uvicorn's), writing through a :class:`CoalescingTransport`.

    With ``fin_with_last`` (plain TCP), a response the connection closes after
    leaves in the segment that carries the FIN.
    """

    class Coalescing(factory):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            coalescing = CoalescingTransport(transport, self.loop, fin_with_last)
            # uvicorn asks for the socket only to read its two addresses: see addresses_known.
            coalescing.get_extra_info = addresses_known(transport)
            try:
                super().connection_made(coalescing)
            finally:
                coalescing.get_extra_info = transport.get_extra_info

    return Coalescing


def addresses_known(transport: Any) -> Callable[..., Any]:
    """``transport.get_extra_info`` whose "socket" reads the addresses the loop already has.

    uvicorn's protocols read a new connection's local and peer addresses from
    the transport's socket object (``getsockname()``, ``getpeername()``). The
    event loop read both when it accepted the connection (its "sockname" and
    "peername"); asked again through uvloop's socket stand-in, they cost five
    system calls and two ``socket.socket`` objects per connection. The socket
    given here answers from what the loop has: the same values, formatted by
    uvicorn as before (an IPv6 address, a Unix socket's path, no peer name).
    One exception: an IPv6 address with a scope (link-local, ``fe80::1%eth0``),
    which uvloop keeps without its ``%eth0``, is read from the real socket.
    """
    real = transport.get_extra_info
    known = _KnownAddresses(transport)

    def get_extra_info(name: str, default: Any = None) -> Any:
        return known if name == "socket" else real(name, default)

    return get_extra_info


class _KnownAddresses:
    """A connection's two addresses where a socket's two methods would read them."""

    __slots__ = ("_transport",)

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def getsockname(self) -> Any:
        return self._read("sockname", "getsockname")

    def getpeername(self) -> Any:
        return self._read("peername", "getpeername")

    def _read(self, extra: str, method: str) -> Any:
        address = self._transport.get_extra_info(extra)
        if isinstance(address, tuple) and len(address) == 4 and address[3]:
            # An IPv6 scope: the real socket writes it into the host (fe80::1%eth0).
            return getattr(self._transport.get_extra_info("socket"), method)()
        return address


class CoalescingTransport:
    """A connection's transport whose writes in one loop step go out together.

    The first write of a step is held and a flush is scheduled for the end of
    the step (``call_soon``: after the callbacks already due, before the loop
    polls again); later writes join it. Whatever closes or reports on the
    connection sees the held bytes first, so nothing is lost or reordered.
    Everything else is the real transport's: what uvicorn asks on every request
    (``is_closing``) and the rest it calls directly are the real transport's
    own methods, looked up once, with no Python call in between. One is made
    per connection: slots, no dict.

    With ``fin_with_last``, bytes still held when the connection is closed (a
    ``Connection: close`` response, written and closed in one step) are corked
    (``TCP_CORK``) before they are written: the kernel keeps them until the
    close, which sends them in one segment with the FIN instead of two, one
    segment fewer for both ends on every connection that ends this way. The
    close is what releases them, at once; nothing waits on the cork's timer.
    """

    __slots__ = (
        "_call_soon",
        "_fin_with_last",
        "_held",
        "_transport",
        "get_extra_info",
        "is_closing",
        "pause_reading",
        "resume_reading",
    )

    def __init__(
        self, transport: Any, loop: asyncio.AbstractEventLoop, fin_with_last: bool = False
    ) -> None:
        self._transport = transport
        self._call_soon = loop.call_soon
        self._held: list[bytes] | None = None
        self._fin_with_last = fin_with_last
        self.is_closing: Callable[[], bool] = transport.is_closing
        self.get_extra_info: Callable[..., Any] = transport.get_extra_info
        self.pause_reading: Callable[[], None] = transport.pause_reading
        self.resume_reading: Callable[[], None] = transport.resume_reading

    def write(self, data: bytes) -> None:
        held = self._held
        if held is None:
            self._held = [data]
            self._call_soon(self._flush)
        else:
            held.append(data)

    def writelines(self, lines: Iterable[bytes]) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        held = self._held
        if held is None:
            return
        self._held = None
        if not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        held = self._held
        transport = self._transport
        if held is not None:
            self._held = None
            if not transport.is_closing():
                if self._fin_with_last:
                    cork(transport)
                transport.write(held[0] if len(held) == 1 else b"".join(held))
        transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        held = sum(len(data) for data in self._held) if self._held else 0
        return int(self._transport.get_write_buffer_size()) + held

    def __getattr__(self, name: str) -> Any:  # the rest: set_protocol (an upgrade), is_reading...
        return getattr(self._transport, name)


def cork(transport: Any) -> None:
    """Set ``TCP_CORK`` on the transport's socket; a socket already gone is left as it is.

    Through a socket object of its own on the same descriptor, detached before
    it is dropped (so the descriptor stays the transport's): the event loop's
    socket stand-in would build a full ``socket.socket`` for the one call. The
    family and type it is given are only recorded, never checked (``setsockopt``
    acts on the descriptor), so reading the real ones (two enum conversions) is
    skipped.
    """
    try:
        fd = transport.get_extra_info("socket").fileno()
        raw = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM, 0, fd)
    except (AttributeError, OSError, ValueError):  # no socket, or closed: nothing to hold
        return
    try:
        raw.setsockopt(socket.IPPROTO_TCP, TCP_CORK, 1)
    except OSError:
        pass  # the peer reset it: the write that follows says so
    finally:
        raw.detach()
