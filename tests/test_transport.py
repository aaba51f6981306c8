"""Coalesced writes (tether._transport): one loop step's writes in one call, the last with the FIN.

A recording transport in this process for the holding and flushing; a real
loopback TCP connection for the cork. What a client receives on the wire
(one segment with the FIN) is ``test_http1.py``'s; the server's single write
per small response is ``test_serving.py``'s.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tether._transport import TCP_CORK, CoalescingTransport, coalescing, cork


class Recording:
    """A transport that records what reaches it, in order."""

    def __init__(self, sock: socket.socket | None = None) -> None:
        self.events: list[Any] = []
        self.closing = False
        self.sock = sock
        self.buffered = 0

    def write(self, data: bytes) -> None:
        corked = None
        if self.sock is not None and TCP_CORK:
            corked = self.sock.getsockopt(socket.IPPROTO_TCP, TCP_CORK)
        self.events.append(("write", bytes(data), corked))

    def write_eof(self) -> None:
        self.events.append("eof")

    def close(self) -> None:
        self.closing = True
        self.events.append("close")

    def abort(self) -> None:
        self.closing = True
        self.events.append("abort")

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.sock if name == "socket" else default

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def pause_reading(self) -> None:
        self.events.append("pause")

    def resume_reading(self) -> None:
        self.events.append("resume")

    def set_protocol(self, protocol: Any) -> None:
        self.events.append(("protocol", protocol))


@pytest.fixture
def connected() -> Iterator[socket.socket]:
    """The server's end of a real loopback TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        with client, server:
            yield server


def test_one_steps_writes_leave_in_one_call_at_its_end() -> None:
    """Writes in a step are joined and written after it; a later step's writes come after."""

    async def main() -> list[Any]:
        real = Recording()
        transport = CoalescingTransport(real, asyncio.get_running_loop())
        transport.write(b"head ")
        transport.writelines([b"body", b"!"])
        assert real.events == [] and transport.get_write_buffer_size() == 10
        await asyncio.sleep(0)
        transport.write(b"next")
        await asyncio.sleep(0)
        return real.events

    assert asyncio.run(main()) == [("write", b"head body!", None), ("write", b"next", None)]


def test_whatever_ends_the_connection_sees_the_held_bytes_first() -> None:
    """close and write_eof write what is held first; abort drops it; a closed one gets nothing."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for end, expected in [
            ("close", [("write", b"last", None), "close"]),
            ("write_eof", [("write", b"last", None), "eof"]),
            ("abort", ["abort"]),
        ]:
            real = Recording()
            transport = CoalescingTransport(real, loop)
            transport.write(b"last")
            getattr(transport, end)()
            await asyncio.sleep(0)  # the scheduled flush finds nothing more to write
            assert real.events == expected, end
        real = Recording()
        transport = CoalescingTransport(real, loop)
        transport.write(b"too late")
        real.closing = True  # the peer went away within the step
        await asyncio.sleep(0)
        assert real.events == []

    asyncio.run(main())


def test_the_rest_is_the_real_transports_own() -> None:
    """Reading control and extra info are the real transport's methods; other names pass through."""

    async def main() -> None:
        real = Recording()
        transport: Any = CoalescingTransport(real, asyncio.get_running_loop())
        assert transport.pause_reading == real.pause_reading
        assert transport.get_extra_info == real.get_extra_info
        transport.set_protocol("upgraded")
        assert real.events == [("protocol", "upgraded")]
        real.buffered = 7
        assert transport.get_write_buffer_size() == 7

    asyncio.run(main())


@pytest.mark.skipif(not TCP_CORK, reason="TCP_CORK is Linux's")
def test_with_fin_with_last_the_close_corks_before_it_writes(connected: socket.socket) -> None:
    """Held bytes written at the close are corked, so they leave with the FIN; mid-step ones not."""

    async def main() -> list[Any]:
        real = Recording(connected)
        transport = CoalescingTransport(real, asyncio.get_running_loop(), fin_with_last=True)
        transport.write(b"early")
        await asyncio.sleep(0)
        transport.write(b"last")
        transport.close()
        return real.events

    assert asyncio.run(main()) == [("write", b"early", 0), ("write", b"last", 1), "close"]


@pytest.mark.skipif(not TCP_CORK, reason="TCP_CORK is Linux's")
def test_cork_leaves_the_descriptor_to_its_socket(connected: socket.socket) -> None:
    """cork sets TCP_CORK on the transport's socket and leaves it open; no socket: nothing."""
    fd = connected.fileno()
    cork(Recording(connected))
    assert connected.getsockopt(socket.IPPROTO_TCP, TCP_CORK) == 1
    assert connected.fileno() == fd
    connected.sendall(b"still usable")
    cork(Recording())  # no socket (a test transport, a closed connection): left as it is


class Addressed(Recording):
    """A recording transport over a real connected socket, with the loop's two cached addresses."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        assert self.sock is not None
        if name == "sockname":
            return self.sock.getsockname()
        if name == "peername":
            return self.sock.getpeername() if self.sock.family != socket.AF_UNIX else ""
        return super().get_extra_info(name, default)


def _connected(family: int, where: Any) -> Iterator[socket.socket]:
    """The server's end of a real connection of ``family``, accepted on ``where``."""
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.bind(where)
        listener.listen(1)
        with socket.socket(family, socket.SOCK_STREAM) as client:
            client.connect(listener.getsockname())
            server, _ = listener.accept()
            with server:
                yield server


@pytest.mark.parametrize("family", ["ipv4", "ipv6", "unix"])
def test_the_protocol_reads_the_addresses_the_loop_has_not_the_socket(
    family: str, tmp_path: Any
) -> None:
    """uvicorn's address helpers, given the coalescing transport, read what the real socket says.

    Set up on our transport (its flow control included); during connection_made its
    "socket" is the stand-in with the loop's addresses, afterwards the real one again.
    """
    from uvicorn.protocols.utils import get_local_addr, get_remote_addr

    where = {
        "ipv4": (socket.AF_INET, ("127.0.0.1", 0)),
        "ipv6": (socket.AF_INET6, ("::1", 0)),
        "unix": (socket.AF_UNIX, str(tmp_path / "s")),
    }[family]

    class Protocol:
        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            self.loop = loop

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.socket_seen = transport.get_extra_info("socket")
            self.server = get_local_addr(transport)
            self.client = get_remote_addr(transport)

    def check(sock: socket.socket) -> None:
        real: Any = Addressed(sock)
        protocol = coalescing(Protocol, fin_with_last=False)(asyncio.new_event_loop())
        protocol.connection_made(real)
        protocol.loop.close()
        assert isinstance(protocol.transport, CoalescingTransport)
        assert protocol.socket_seen is not sock
        assert (protocol.server, protocol.client) == (get_local_addr(real), get_remote_addr(real))
        assert protocol.transport.get_extra_info("socket") is sock

    for sock in _connected(*where):
        check(sock)


def test_an_ipv6_address_with_a_scope_is_read_from_the_real_socket() -> None:
    """uvloop keeps a link-local peer without its %interface; the real socket's name has it."""
    from uvicorn.protocols.utils import get_local_addr, get_remote_addr

    class Socket:
        def getsockname(self) -> Any:
            return ("fe80::2%eth1", 8000, 0, 3)

        def getpeername(self) -> Any:
            return ("fe80::1%eth1", 5000, 0, 3)

    class Transport(Recording):
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            cached = {"sockname": ("fe80::2", 8000, 0, 3), "peername": ("fe80::1", 5000, 0, 3)}
            return Socket() if name == "socket" else cached.get(name, default)

    class Protocol:
        def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
            self.loop = loop

        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.server = get_local_addr(transport)
            self.client = get_remote_addr(transport)

    loop = asyncio.new_event_loop()
    protocol = coalescing(Protocol, fin_with_last=False)(loop)
    protocol.connection_made(Transport())
    loop.close()
    assert protocol.server == ("fe80::2%eth1", 8000)
    assert protocol.client == ("fe80::1%eth1", 5000)
