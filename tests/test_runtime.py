"""Service (tether.runtime) in this process: serve, stop on request, in phases, within the budget.

Each test binds a loopback socket itself, hands it to a ``Service`` as its
listener, runs ``Service.run()`` in this process's event loop and talks to it
with httpx; readiness and the start of a stop are read from the notifications
the service sends (a ``NotifyReceiver`` given as ``NOTIFY_SOCKET``), never
guessed. The apps are defined here and loaded by name (``test_runtime:...``),
as ``tether run`` would load them. End-to-end runs of ``tether run`` in a
child process are in test_cli.py, test_reload_single.py and test_master*.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tether import App, ShutdownAbandoned, StopToken
from tether._listeners import Listeners
from tether._waits import first
from tether.config import RunConfig
from tether.errors import AppLoadError, StartupError
from tether.notify import NotifyMessage, NotifyReceiver
from tether.runtime import Service
from tether.worker import FAILED_STATUS

HERE = str(Path(__file__).resolve().parent)


@dataclass
class Gates:
    """What the apps below and a test share (one process): a request's arrival, its release."""

    entered: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    member_may_exit: asyncio.Event = field(default_factory=asyncio.Event)


GATES = Gates()


async def _lifespan(receive: Any, send: Any, *, fail: bool = False) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if fail:
                await send({"type": "lifespan.startup.failed", "message": "no database"})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def hello(scope: Any, receive: Any, send: Any) -> None:
    """``/`` answers "hello"; ``/wait`` answers once the test releases it."""
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["path"] == "/wait":
        GATES.entered.set()
        await GATES.release.wait()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


async def fails_at_startup(scope: Any, receive: Any, send: Any) -> None:
    """An app whose lifespan startup fails (a database it cannot reach)."""
    assert scope["type"] == "lifespan"
    await _lifespan(receive, send, fail=True)


async def _member_exits(stop: StopToken) -> None:
    await GATES.member_may_exit.wait()


async def _member_fails(stop: StopToken) -> None:
    await GATES.member_may_exit.wait()
    raise RuntimeError("the consumer lost its queue")


with_exiting_member = App(http=hello, members={"consumer": _member_exits})
with_failing_member = App(http=hello, members={"consumer": _member_fails})


def port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


async def refused(url: str) -> bool:
    """Whether a connection to ``url``'s address is refused now (nothing listens there)."""
    address = httpx.URL(url)
    try:
        _, writer = await asyncio.open_connection(address.host, address.port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


def listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    sock.setblocking(False)
    return sock


@dataclass
class Running:
    service: Service
    task: asyncio.Task[None]
    notes: NotifyReceiver
    url: str
    sock: socket.socket
    debug_url: str | None = None

    async def until(self, field_name: str) -> NotifyMessage:
        """The next notification carrying ``field_name`` (READY, STOPPING, STATUS)."""
        async with asyncio.timeout(30):
            while True:
                message = await self.notes.get()
                if field_name in message.fields:
                    return message


@contextlib.asynccontextmanager
async def running(app: str, *, debug: bool = False, **options: Any) -> AsyncIterator[Running]:
    """Run ``Service.run()`` for ``test_runtime:app`` on a socket of ours; it is READY on entry."""
    global GATES
    GATES = Gates()
    sock = listening()
    debug_sock = listening() if debug else None
    config = RunConfig(app=f"test_runtime:{app}", app_dir=HERE, **options)
    service = Service(config, listeners=Listeners([sock], debug_sock))
    async with NotifyReceiver() as notes:
        os.environ["NOTIFY_SOCKET"] = notes.path  # taken (removed) by Service.run
        task = asyncio.ensure_future(service.run())
        try:
            run = Running(service, task, notes, f"http://127.0.0.1:{port(sock)}", sock)
            if debug_sock is not None:
                run.debug_url = f"http://127.0.0.1:{port(debug_sock)}"
            # run() raising first is why it never became ready: first() raises that.
            if (await first(run.until("READY"), task))[0] == 1:
                raise AssertionError("Service.run() returned before READY")
            yield run
        finally:
            os.environ.pop("NOTIFY_SOCKET", None)
            if not task.done():
                service.request_stop("the test ended", force=True)
            with contextlib.suppress(Exception):
                await task


def test_serves_its_listener_until_request_stop() -> None:
    """READY once serving, the app answers on the socket given; request_stop ends run cleanly."""

    async def main() -> None:
        async with running("hello") as run, httpx.AsyncClient() as client:
            assert run.service.ready and run.service.status == "serving"
            assert (await client.get(run.url + "/")).text == "hello"
            run.service.request_stop("the test is done")
            stopping = await run.until("STOPPING")
            assert stopping.fields["STATUS"] == "stopping: the test is done"
            assert not run.service.ready
            await run.task  # no problems: returns None
            assert run.sock.fileno() == -1  # the listener is closed with the service

    asyncio.run(main())


def test_a_request_in_flight_finishes_and_the_listener_closes_first() -> None:
    """A stop drains: new connections are refused, the request already in flight is answered."""

    async def main() -> None:
        async with running("hello") as run, httpx.AsyncClient() as client:
            slow = asyncio.ensure_future(client.get(run.url + "/wait"))
            await GATES.entered.wait()
            run.service.request_stop("draining")
            await run.until("STOPPING")
            # Closing the listener is the drain's first step; it happens in the loop, soon.
            async with asyncio.timeout(10):
                while not await refused(run.url):
                    await asyncio.sleep(0.01)
            assert not run.task.done()
            GATES.release.set()
            answer = await slow
            assert (answer.status_code, answer.text) == (200, "hello")
            assert answer.headers.get("connection") == "close"
            await run.task

    asyncio.run(main())


def test_the_drain_delay_keeps_serving_while_readyz_says_503() -> None:
    """--drain-delay: /readyz turns 503 at once, the app keeps answering, then the drain runs."""

    async def main() -> None:
        async with (
            running("hello", debug=True, drain_delay=2.0, graceful_timeout=10.0) as run,
            httpx.AsyncClient() as client,
        ):
            assert run.debug_url is not None
            assert (await client.get(run.debug_url + "/readyz")).status_code == 200
            run.service.request_stop("taken out of the load balancer")
            assert run.service.status == "draining (drain delay)"
            assert (await client.get(run.debug_url + "/readyz")).status_code == 503
            assert (await client.get(run.url + "/")).text == "hello"
            assert not run.task.done()
            await run.task

    asyncio.run(main())


def test_a_request_past_the_deadline_is_reported_abandoned() -> None:
    """A request still running at --graceful-timeout is cancelled and named in ShutdownAbandoned."""

    async def main() -> None:
        async with (
            running("hello", graceful_timeout=0.5, cancel_timeout=0.5) as run,
            httpx.AsyncClient() as client,
        ):
            slow = asyncio.ensure_future(client.get(run.url + "/wait"))
            await GATES.entered.wait()
            run.service.request_stop("deadline test")
            with pytest.raises(ExceptionGroup) as caught:
                await run.task
            with contextlib.suppress(httpx.HTTPError):
                await slow
        abandoned = caught.value.subgroup(ShutdownAbandoned)
        assert abandoned is not None
        (report,) = abandoned.exceptions
        assert isinstance(report, ShutdownAbandoned)
        assert any(item.kind == "request" and "/wait" in item.name for item in report.items), (
            report.items
        )

    asyncio.run(main())


def test_a_member_that_returns_stops_the_whole_service() -> None:
    """A member's exit stops the HTTP server too, and the service says STOPPING=1, not ready."""

    async def main() -> None:
        async with running("with_exiting_member") as run:
            GATES.member_may_exit.set()
            stopping = await run.until("STOPPING")
            assert stopping.fields["STATUS"].startswith("stopping: ")
            assert not run.service.ready  # /readyz answers 503 while it drains
            await run.task

    asyncio.run(main())


def test_a_member_that_fails_ends_run_with_its_error_and_tells_the_supervisor() -> None:
    """A failing member: run raises its error; the notify socket hears the failure line."""

    async def main() -> None:
        async with running("with_failing_member") as run:
            GATES.member_may_exit.set()
            with pytest.raises(ExceptionGroup) as caught:
                await run.task
            status = await run.until("STATUS")
            while not status.fields["STATUS"].startswith(FAILED_STATUS):
                status = await run.until("STATUS")
        assert caught.value.subgroup(RuntimeError) is not None
        assert "the consumer lost its queue" in status.fields["STATUS"]

    asyncio.run(main())


def test_limit_max_requests_stops_the_service_after_that_many() -> None:
    """--limit-max-requests 2: the second answered request begins a graceful stop by itself."""

    async def main() -> None:
        async with running("hello", limit_max_requests=2) as run, httpx.AsyncClient() as client:
            for _ in range(2):
                assert (await client.get(run.url + "/")).text == "hello"
            stopping = await run.until("STOPPING")
            assert "served 2 requests (--limit-max-requests)" in stopping.fields["STATUS"]
            await run.task

    asyncio.run(main())


def test_sigterm_is_a_graceful_stop_and_the_previous_handler_comes_back() -> None:
    """A real SIGTERM to this process stops the service gracefully; then TERM is ours again."""
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: seen.append(signum))

    async def main() -> None:
        async with running("hello") as run:
            os.kill(os.getpid(), signal.SIGTERM)
            stopping = await run.until("STOPPING")
            assert stopping.fields["STATUS"] == "stopping: SIGTERM received"
            await run.task

    try:
        asyncio.run(main())
        os.kill(os.getpid(), signal.SIGTERM)  # the test's handler again, not the service's
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_app_that_cannot_start_leaves_nothing_bound() -> None:
    """A failed import or lifespan startup raises from run, with the listener closed."""

    async def main(app: str) -> tuple[BaseException, socket.socket]:
        sock = listening()
        config = RunConfig(app=f"test_runtime:{app}", app_dir=HERE)
        with pytest.raises(BaseException) as caught:
            await Service(config, listeners=Listeners([sock], None)).run()
        return caught.value, sock

    error, sock = asyncio.run(main("no_such_app"))
    assert isinstance(error, AppLoadError) and sock.fileno() == -1
    error, sock = asyncio.run(main("fails_at_startup"))
    assert isinstance(error, StartupError) and sock.fileno() == -1
