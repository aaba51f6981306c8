"""The engine seam (tether.engine): nothing outside the engine reaches into uvicorn, and
the runtime's Service runs any Engine.

The first half reads the source: a module that imports uvicorn, or names one of its
modules, is either the engine's implementation or on the list below with its reason.
The second half runs ``Service`` in this process over a small engine written here (one
line of text in, the app's body out), behind the same seam uvicorn's implementation
sits behind; the real engine's lifecycle is tested end to end in test_serving.py and
test_runtime.py.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tether._engines import http_engine
from tether._listeners import Listeners
from tether._stacks import _engine_packages
from tether._waits import first
from tether.config import RunConfig
from tether.engine import Engine, EngineFactory
from tether.group import StopToken
from tether.notify import NotifyMessage, NotifyReceiver
from tether.runtime import Service
from tether.serving import ASGIApp, DrainHooks, HttpServer, ServeOptions

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src" / "tether"

#: The engine's implementation: the only modules that import uvicorn.
IMPLEMENTATION = {"serving.py"}
#: Modules that name a uvicorn module in a string without importing it, and why.
NAMES_ONLY = {
    "_http1.py": "finds uvicorn's two HTTP/1 protocol classes by name, for the implementation",
    "_gunicorn.py": "gunicorn's worker-class option values (uvicorn.workers.UvicornWorker)",
    "_hooks.py": "gunicorn's worker_class default that server hooks read",
    "_uvicornpkg.py": "uvicorn's package without its __init__, imported for the implementation",
}
_UVICORN_MODULE = re.compile(r"^uvicorn(\.|$)")


def _modules() -> dict[str, ast.Module]:
    return {
        str(path.relative_to(SRC)): ast.parse(path.read_text(), str(path))
        for path in sorted(SRC.rglob("*.py"))
    }


def _imports_uvicorn(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(_UVICORN_MODULE.match(a.name) for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and _UVICORN_MODULE.match(node.module or ""):
            return True
    return False


def _names_uvicorn(tree: ast.Module) -> bool:
    return any(
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and _UVICORN_MODULE.match(node.value) is not None
        for node in ast.walk(tree)
    )


def test_only_the_implementation_imports_uvicorn() -> None:
    """No module but the engine's implementation imports uvicorn, lazily or at the top."""
    importers = {name for name, tree in _modules().items() if _imports_uvicorn(tree)}
    assert importers == IMPLEMENTATION


def test_uvicorn_named_only_where_listed() -> None:
    """A string naming a uvicorn module appears only in the implementation and the list."""
    naming = {name for name, tree in _modules().items() if _names_uvicorn(tree)}
    assert naming - IMPLEMENTATION == set(NAMES_ONLY)


def test_the_engine_is_built_only_through_the_seam() -> None:
    """Outside the implementation, HttpServer is imported only by _engines and the package."""
    users = set()
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module == "tether.serving"
                and any(a.name == "HttpServer" for a in node.names)
            ):
                users.add(name)
    # tether/__init__.py: HttpServer stays public API (a lazy attribute) for embedding.
    assert users == {"_engines.py", "__init__.py"}


def test_the_seam_loads_no_engine() -> None:
    """`import tether.engine` (the contract another engine implements) loads no uvicorn."""
    code = "import sys, tether.engine\nprint(sorted(m for m in sys.modules if 'uvicorn' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_uvicorn_is_the_engine() -> None:
    """http_engine() is uvicorn's implementation, whose package counts as tether's own."""
    factory: EngineFactory = http_engine()
    assert factory is HttpServer
    assert _engine_packages == ["uvicorn"]


# -- a second engine under the runtime ------------------------------------------------


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers ``hello PATH``; ``/hold`` waits for the test's release first."""
    if scope["type"] != "http":
        return
    if scope["path"] == "/hold":
        LineEngine.entered.set()
        await LineEngine.release.wait()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello " + scope["path"].encode()})


class LineEngine:
    """An engine with its own wire format: a path on one line in, the body out, closed.

    Keeps the seam's promises that the runtime relies on: READY once listening, the
    stop's deadline honoured by draining the requests in flight, its sockets closed.
    """

    entered = asyncio.Event()
    release = asyncio.Event()

    def __init__(
        self,
        app: ASGIApp,
        sockets: list[socket.socket],
        options: ServeOptions | None = None,
        hooks: DrainHooks | None = None,
    ) -> None:
        self.app = app
        self.sockets = sockets
        self.hooks = hooks or DrainHooks()
        self.accepting = False
        self.deadline: float | None = None
        self._servers: list[asyncio.Server] = []
        self._requests: dict[asyncio.Task[Any], tuple[str, float]] = {}

    async def run(self, stop: StopToken) -> None:
        try:
            await self.resume_accepting()
            stop.ready([s.getsockname() for s in self.sockets])
            await stop.wait()
            self.deadline = stop.deadline
            self.hooks.drain.set()
            self.stop_accepting()
            while self._requests:
                await asyncio.wait(list(self._requests))
        finally:
            for server in self._servers:
                server.close()
            for sock in self.sockets:
                sock.close()

    def stop_accepting(self) -> None:
        self.accepting = False
        for server in self._servers:
            server.close()
        self._servers.clear()

    async def resume_accepting(self) -> None:
        for sock in self.sockets:
            self._servers.append(await asyncio.start_server(self._serve, sock=sock.dup()))
        self.accepting = True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        path = (await reader.readline()).decode().strip()
        task = asyncio.current_task()
        assert task is not None
        self._requests[task] = (path, asyncio.get_running_loop().time())
        body = bytearray()

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Any) -> None:
            body.extend(message.get("body", b""))

        try:
            scope = {"type": "http", "method": "GET", "path": path, "headers": []}
            await self.app(scope, receive, send)
            writer.write(bytes(body))
            await writer.drain()
        finally:
            del self._requests[task]
            writer.close()
            await writer.wait_closed()

    @property
    def connections(self) -> int:
        return len(self._requests)

    @property
    def requests_in_flight(self) -> int:
        return len(self._requests)

    def in_flight(self) -> list[dict[str, Any]]:
        now = asyncio.get_running_loop().time()
        return [
            {"method": "GET", "path": path, "age": now - began}
            for path, began in self._requests.values()
        ]

    def after_response(self) -> list[dict[str, Any]]:
        return []


async def _until(notes: NotifyReceiver, field_name: str) -> NotifyMessage:
    async with asyncio.timeout(30):
        while True:
            message = await notes.get()
            if field_name in message.fields:
                return message


def test_service_runs_another_engine() -> None:
    """Service over LineEngine: READY, serves, and its stop drains the held request."""
    engines: list[LineEngine] = []

    def factory(
        app: ASGIApp,
        sockets: list[socket.socket],
        options: ServeOptions | None = None,
        hooks: DrainHooks | None = None,
    ) -> Engine:
        engines.append(LineEngine(app, sockets, options, hooks))
        return engines[-1]

    async def main() -> None:
        LineEngine.entered, LineEngine.release = asyncio.Event(), asyncio.Event()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        address = sock.getsockname()
        config = RunConfig(app="test_engine:app", app_dir=str(HERE), graceful_timeout=20.0)
        service = Service(config, listeners=Listeners([sock], None), engine=factory)
        async with NotifyReceiver() as notes:
            os.environ["NOTIFY_SOCKET"] = notes.path  # taken (removed) by Service.run
            task = asyncio.ensure_future(service.run())
            try:
                if (await first(_until(notes, "READY"), task))[0] == 1:
                    raise AssertionError("Service.run() returned before READY")
                (engine,) = engines
                assert service.http is engine and service.ready and engine.accepting
                reader, writer = await asyncio.open_connection(*address)
                writer.write(b"/hello\n")
                assert await reader.read() == b"hello /hello"
                writer.close()
                await writer.wait_closed()
                reader, writer = await asyncio.open_connection(*address)
                writer.write(b"/hold\n")
                await LineEngine.entered.wait()
                assert [r["path"] for r in engine.in_flight()] == ["/hold"]
                service.request_stop("the test is done")
                await _until(notes, "STOPPING")
                assert not service.ready
                LineEngine.release.set()
                assert await reader.read() == b"hello /hold"
                writer.close()
                await writer.wait_closed()
                await task
                assert engine.deadline is not None and engine.hooks.drain.is_set()
                assert engine.hooks is service.hooks and not engine.accepting
            finally:
                os.environ.pop("NOTIFY_SOCKET", None)
                if not task.done():
                    service.request_stop("the test ended", force=True)
                with contextlib.suppress(Exception):
                    await task

    asyncio.run(main())
