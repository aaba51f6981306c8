"""The app of one process (tether._hosting): imported between its hooks, and seen as ASGI."""

from __future__ import annotations

import asyncio
import sys
from typing import Any, cast

import httpx

from tether import App
from tether._hooks import ServerHooks
from tether._hosting import as_asgi, import_app, server_hooks
from tether.config import RunConfig


async def hello(scope: Any, receive: Any, send: Any) -> None:
    """Every request is answered "hello"."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


def test_as_asgi_gives_the_http_part_in_one_shape() -> None:
    """No HTTP part: None; ASGI 3 as is; asgi2 wrapped; WSGI hosted, answering through ASGI."""

    def wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"from wsgi " + environ["PATH_INFO"].encode()]

    class Asgi2:
        def __init__(self, scope: Any) -> None:
            self.scope = scope

        async def __call__(self, receive: Any, send: Any) -> None:
            await hello(self.scope, receive, send)

    assert as_asgi(App(), None) is None
    assert as_asgi(App(http=hello), "asgi") is hello

    async def get(asgi: Any) -> str:
        transport = httpx.ASGITransport(app=asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return (await client.get("/path")).text

    asgi2: Any = as_asgi(App(http=Asgi2), "asgi", interface="asgi2")
    assert asgi2 is not Asgi2 and asyncio.run(get(asgi2)) == "hello"
    hosted: Any = as_asgi(App(http=wsgi), "wsgi", threads=1)
    try:
        assert asyncio.run(get(hosted)) == "from wsgi /path"
    finally:
        # Its pool's thread would otherwise end only when the adapter is collected, and
        # then on its own time: after the leak check on a busy machine.
        hosted.executor.shutdown(wait=True)


class RecordingHooks:
    """What import_app asks of a gunicorn config's hooks, recorded in order."""

    server = "arbiter"

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.worker = type("Worker", (), {"wsgi": None})()

    def this_worker(self) -> Any:
        return self.worker

    def call(self, name: str, *_args: Any, fatal: bool = False) -> None:
        self.calls.append((name, "test_hosting_app" in sys.modules))
        assert fatal, name


def test_the_app_is_imported_between_post_fork_and_post_worker_init(
    tmp_path: Any,
) -> None:
    """post_fork runs before the import, post_worker_init after, and the worker holds the app."""
    (tmp_path / "test_hosting_app.py").write_text(
        "def app(environ, start_response):\n    return []\n"
    )
    hooks = RecordingHooks()
    config = RunConfig(app="test_hosting_app:app", app_dir=str(tmp_path))
    try:
        app, kind = import_app(config, cast(ServerHooks, hooks))
    finally:
        sys.modules.pop("test_hosting_app", None)
    assert hooks.calls == [("post_fork", False), ("post_worker_init", True)]
    assert kind == "wsgi" and hooks.worker.wsgi is app.http


def test_no_gunicorn_config_no_hooks() -> None:
    """Without -c gunicorn.conf.py there are no server hooks to call."""
    assert server_hooks(RunConfig(app="x:app")) is None
