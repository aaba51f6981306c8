"""The debug listener as a member (tether._debugmember): up while the rest of the group drains.

A real uvicorn engine on a loopback socket, in this process's event loop.
"""

from __future__ import annotations

import asyncio
import socket

import httpx

from tether._debugmember import debug_member
from tether._engines import http_engine
from tether.config import RunConfig
from tether.debug import DebugSource
from tether.group import Group, StopToken


def test_the_debug_server_answers_until_the_last_member_has_drained() -> None:
    """Stopped, the group's slow member drains while /healthz still answers; then all end."""
    released = asyncio.Event()
    draining = asyncio.Event()

    async def slow(stop: StopToken) -> None:
        await stop
        draining.set()
        await released.wait()

    async def main() -> None:
        sock = socket.create_server(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        group = Group(graceful_timeout=10.0)
        config = RunConfig(app="x:app")
        member = debug_member(
            http_engine(), DebugSource(is_ready=lambda: True), sock, config, group
        )
        await group.start(member, name="debug")
        group.add(slow, name="slow")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/healthz")).status_code == 200
            group.stop("the test is done")
            await asyncio.wait_for(draining.wait(), 5.0)
            assert (await client.get("/healthz")).status_code == 200  # still up while draining
            assert not group.tasks()["debug"].done()
        released.set()
        report = await asyncio.wait_for(group.wait(), 5.0)
        assert report.errors == {} and report.abandoned == []
        sock.close()

    asyncio.run(main())
