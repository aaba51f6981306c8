"""The app of one process: imported under its gunicorn hooks, and seen as one ASGI app.

``tether run APP`` imports ``APP`` in the process that serves it (a worker,
or the one process), never in a master. What it names is turned into an
:class:`~tether.app.App` by :func:`tether.app.load_app`; here, the two things
around that which a serving process adds:

- a gunicorn config's server hooks (``-c gunicorn.conf.py``): ``post_fork``
  just before the import, ``post_worker_init`` just after, each fatal if it
  raises (the process fails to start, as in gunicorn);
- the HTTP part as ASGI: a WSGI app runs in a pool of ``--threads`` threads
  (a2wsgi), an ``asgi2`` app is wrapped into ASGI 3.

The app's interface is the process's concern, not the HTTP engine's: every
engine is given one ASGI 3 app, so nothing here imports an engine (the
ASGI 2 adapter is the five lines of the spec's own definition).

Invariant: ``tether._hooks`` is imported only when a gunicorn config file is
given, and a2wsgi only for a WSGI app, so a process without one never loads it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

from tether.app import App, load_app
from tether.config import RunConfig
from tether.engine import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from tether._hooks import ServerHooks

__all__ = ["as_asgi", "host_asgi2", "host_wsgi", "import_app", "server_hooks"]


def server_hooks(config: RunConfig) -> ServerHooks | None:
    """The hooks of ``-c gunicorn.conf.py``; tether._hooks is imported only with such a file."""
    if config.python_config is None:
        return None
    from tether._hooks import ServerHooks

    return ServerHooks.of(config)


def import_app(config: RunConfig, hooks: ServerHooks | None) -> tuple[App, str | None]:
    """Import ``config.app`` between the hooks' ``post_fork`` and ``post_worker_init``."""
    if hooks is not None:
        hooks.call("post_fork", hooks.server, hooks.this_worker(), fatal=True)
    interface = config.interface
    app, kind = load_app(
        config.app,
        app_dir=config.app_dir,
        interface="asgi" if interface in ("asgi2", "asgi3") else interface,  # type: ignore[arg-type]
        factory=config.factory,
    )
    if hooks is not None:
        hooks.this_worker().wsgi = app.http
        hooks.call("post_worker_init", hooks.this_worker(), fatal=True)
    return app, kind


def as_asgi(
    app: App, kind: str | None, threads: int = 10, interface: str = "auto"
) -> ASGIApp | None:
    """The app's HTTP part as ASGI (WSGI apps run in a pool of ``threads`` threads)."""
    if app.http is None:
        return None
    if kind == "wsgi":
        return host_wsgi(app.http, threads)
    if interface == "asgi2":
        return host_asgi2(app.http)
    asgi: ASGIApp = app.http
    return asgi


def host_wsgi(app: Any, threads: int) -> ASGIApp:
    """A WSGI app as ASGI: a2wsgi, with its requests run in a pool of ``threads`` threads."""
    from a2wsgi import WSGIMiddleware

    def terminated(environ: Any, start_response: Any) -> Iterable[bytes]:
        # a2wsgi's wsgi.input returns b"" where the body ends, with or without a
        # Content-Length. Saying so is what lets Werkzeug (Flask) read a chunked
        # body: without it, no Content-Length means an empty body to it.
        environ["wsgi.input_terminated"] = True
        body: Iterable[bytes] = app(environ, start_response)
        return body

    return cast(ASGIApp, WSGIMiddleware(terminated, workers=threads))


def host_asgi2(app: Any) -> ASGIApp:
    """An ASGI 2 app (``app(scope)`` returns the coroutine function) as ASGI 3."""
    return _Asgi2(app)


class _Asgi2:
    """ASGI 2's two calls as ASGI 3's one: ``await app(scope)(receive, send)``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope)(receive, send)
