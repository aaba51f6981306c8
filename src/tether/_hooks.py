"""gunicorn's server hooks, run at the moments tether's process model has them.

A ``gunicorn.conf.py`` given to ``-c`` may define hooks (:data:`tether._gunicorn.HOOKS`).
tether's master never imports the app and starts each worker as a fresh
process (not a fork), so each hook runs where its moment is:

- in the master: ``on_starting`` (before the sockets are bound), ``when_ready``
  (sockets bound, before the first workers start), ``pre_fork`` (before each
  worker starts), ``child_exit`` (after a worker exited, whatever the cause),
  ``on_reload`` (a reload begins: HUP, ``tether ctl reload``, ``--reload``),
  ``nworkers_changed`` (TTIN/TTOU, ``ctl scale``), ``pre_exec`` (before a new
  master starts, USR2) and ``on_exit`` (the master is about to exit);
- in each worker: ``post_fork`` (the worker has started, before the app is
  imported), ``post_worker_init`` (the app is imported, before its startup and
  serving), ``worker_int`` (QUIT, or INT in one process), ``pre_request`` /
  ``post_request`` (around each HTTP request, on the event loop) and
  ``worker_exit`` (the worker has stopped serving, before it exits);
- with ``--workers 0`` the one process is server and worker: every hook but
  ``pre_fork`` and ``child_exit`` runs in it.

Hooks receive small objects with the attributes gunicorn's hooks use:
:class:`HookServer` (``pid``, ``log``, ``cfg``, ``num_workers``) and
:class:`HookWorker` (``pid``, ``ppid``, ``age``, ``log``, ``cfg``, ``alive``,
``wsgi`` once the app is imported; tether adds ``id``, ``generation`` and, in
``child_exit``, ``exitcode``).

Invariant: no hook costs anything when the file does not define it; in
particular the request path is unchanged without ``pre_request`` or
``post_request``.

Error handling: a hook that raises is logged with its traceback. In
``on_starting`` and ``when_ready`` the error stops the start
(:class:`~tether.errors.StartupError`, exit 3); in ``post_fork`` and
``post_worker_init`` it fails that worker's start, as an import error would;
anywhere else the service goes on.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tether._gunicorn import load as load_pyconfig
from tether.config import RunConfig
from tether.errors import StartupError

if TYPE_CHECKING:
    from tether.worker import WorkerContract

__all__ = ["HookConfig", "HookRequest", "HookResponse", "HookServer", "HookWorker", "ServerHooks"]

#: The logger hooks get as ``server.log`` and ``worker.log``.
log = logging.getLogger("tether.hooks")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class HookConfig:
    """``server.cfg`` / ``worker.cfg``: tether's settings under gunicorn's names."""

    bind: list[str]
    workers: int
    threads: int
    timeout: float
    graceful_timeout: float
    keepalive: int
    max_requests: int
    max_requests_jitter: int
    backlog: int
    loglevel: str
    pidfile: str | None
    reload: bool
    wsgi_app: str
    chdir: str
    forwarded_allow_ips: str
    access_log_format: str | None
    worker_class_str: str = "uvicorn.workers.UvicornWorker"

    @classmethod
    def of(cls, config: RunConfig, bind: list[str]) -> HookConfig:
        return cls(
            bind=bind,
            workers=config.workers,
            threads=config.threads,
            timeout=config.watchdog_timeout,
            graceful_timeout=config.graceful_timeout,
            keepalive=config.http.timeout_keep_alive,
            max_requests=config.max_requests or 0,
            max_requests_jitter=config.max_requests_jitter,
            backlog=config.http.backlog,
            loglevel=config.log_level,
            pidfile=config.pidfile,
            reload=config.reload,
            wsgi_app=config.app,
            chdir=os.path.abspath(config.app_dir),
            forwarded_allow_ips=config.http.forwarded_allow_ips,
            access_log_format=config.access_logformat,
        )


@dataclass
class HookServer:
    """The ``server`` a hook receives: the master (or the one process with ``--workers 0``)."""

    pid: int
    cfg: HookConfig
    num_workers: int
    log: logging.Logger = log


@dataclass
class HookWorker:
    """The ``worker`` a hook receives. ``pid`` is None in ``pre_fork``: it is not started yet."""

    pid: int | None
    ppid: int
    #: gunicorn's spawn counter: tether's worker id, which grows with every worker started.
    age: int
    cfg: HookConfig
    id: int = 0
    generation: int = 0
    alive: bool = True
    #: The app, once imported (``post_worker_init`` and later).
    wsgi: Any = None
    #: In ``child_exit``: the exit status (negative: the signal that ended it).
    exitcode: int | None = None
    log: logging.Logger = log


@dataclass
class HookRequest:
    """The ``req`` of ``pre_request`` / ``post_request``, with gunicorn's attribute names."""

    method: str
    path: str
    query: str
    uri: str
    version: tuple[int, int]
    scheme: str
    #: ``(NAME, value)`` pairs, names upper-cased as gunicorn gives them.
    headers: list[tuple[str, str]]
    peer_addr: tuple[str, int] | None
    remote_addr: tuple[str, int] | None

    @classmethod
    def of(cls, scope: Scope) -> HookRequest:
        query = scope.get("query_string", b"").decode("latin-1")
        path = scope.get("path", "")
        major, _, minor = str(scope.get("http_version", "1.1")).partition(".")
        client = scope.get("client")
        peer = (str(client[0]), int(client[1])) if client else None
        return cls(
            method=scope.get("method", ""),
            path=path,
            query=query,
            uri=f"{path}?{query}" if query else path,
            version=(int(major or 1), int(minor or 0)),
            scheme=scope.get("scheme", "http"),
            headers=[
                (k.decode("latin-1").upper(), v.decode("latin-1"))
                for k, v in scope.get("headers", ())
            ],
            peer_addr=peer,
            remote_addr=peer,
        )


@dataclass
class HookResponse:
    """The ``resp`` of ``post_request``: what was sent."""

    status_code: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: Body bytes sent.
    sent: int = 0

    @property
    def status(self) -> str:
        from http import HTTPStatus

        try:
            return f"{self.status_code} {HTTPStatus(self.status_code).phrase}"
        except ValueError:
            return str(self.status_code)


class ServerHooks:
    """The hooks of one config file, and the ``server`` and ``worker`` this process gives them."""

    def __init__(self, hooks: dict[str, Callable[..., Any]], where: str, config: RunConfig) -> None:
        self.hooks = hooks
        self.where = where
        self.config = config
        self.cfg = HookConfig.of(config, list(config.binds))
        self.server = HookServer(os.getpid(), self.cfg, config.workers)
        self.worker: HookWorker | None = None
        #: What this process's master told it (tether.worker); None: no master.
        self.contract: WorkerContract | None = None

    @classmethod
    def of(cls, config: RunConfig) -> ServerHooks | None:
        """The hooks of ``config.python_config``; None when there is none (or it has no hooks)."""
        if config.python_config is None:
            return None
        pyconfig = load_pyconfig(config.python_config)
        hooks = pyconfig.hooks()
        return cls(hooks, pyconfig.name, config) if hooks else None

    def has(self, name: str) -> bool:
        return name in self.hooks

    def call(self, name: str, *args: Any, fatal: bool = False) -> None:
        """Run hook ``name`` if the file has it; log what it raises (re-raised when ``fatal``)."""
        hook = self.hooks.get(name)
        if hook is None:
            return
        try:
            hook(*args)
        except Exception as exc:
            log.exception("hook %s (%s) raised", name, self.where)
            if fatal:
                what = f"{type(exc).__name__}: {exc}"
                msg = f"hook {name} in {self.where} raised {what}; fix the hook"
                raise StartupError(msg) from exc

    def set_bind(self, bind: list[str]) -> None:
        """The addresses actually served (``server.cfg.bind``), once the sockets exist."""
        self.cfg.bind = bind

    # -- the master's side ---------------------------------------------------------

    def new_worker(self, wid: int, generation: int) -> HookWorker:
        """The ``worker`` of ``pre_fork``: not started yet, so no pid."""
        return HookWorker(None, os.getpid(), wid, self.cfg, id=wid, generation=generation)

    def exited_worker(self, wid: int, generation: int, pid: int, code: int | None) -> HookWorker:
        """The ``worker`` of ``child_exit``: gone, with its exit status."""
        parent = os.getpid()
        return HookWorker(
            pid, parent, wid, self.cfg, id=wid, generation=generation, alive=False, exitcode=code
        )

    # -- a worker's side (or the one process's) --------------------------------------

    def this_worker(self) -> HookWorker:
        """This process as a ``worker`` (its master as ``server``); made once."""
        if self.worker is None:
            contract = self.contract
            wid = contract.worker_id if contract is not None else 0
            parent = (contract.parent_pid if contract is not None else 0) or os.getpid()
            self.server.pid = parent
            self.worker = HookWorker(
                os.getpid(),
                parent,
                wid,
                self.cfg,
                id=wid,
                generation=contract.generation if contract is not None else 0,
            )
        return self.worker

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """``app`` with ``pre_request`` / ``post_request`` around each HTTP request (if set)."""
        pre = self.hooks.get("pre_request")
        post = self.hooks.get("post_request")
        if pre is None and post is None:
            return app
        worker = self.this_worker()
        call = self.call
        post_args = _post_request_arity(post) if post is not None else 0

        async def hooked(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            req = HookRequest.of(scope)
            if pre is not None:
                call("pre_request", worker, req)
            if post is None:
                await app(scope, receive, send)
                return
            resp = HookResponse()

            async def sending(message: Message) -> None:
                if message["type"] == "http.response.start":
                    resp.status_code = int(message["status"])
                    resp.headers = [
                        (k.decode("latin-1"), v.decode("latin-1"))
                        for k, v in message.get("headers", ())
                    ]
                elif message["type"] == "http.response.body":
                    resp.sent += len(message.get("body", b""))
                await send(message)

            started = time.monotonic()
            try:
                await app(scope, receive, sending)
            finally:
                environ = _environ(scope, req, time.monotonic() - started)
                call("post_request", *(worker, req, environ, resp)[:post_args])

        return hooked


def _post_request_arity(fn: Callable[..., Any]) -> int:
    """gunicorn calls post_request with 2, 3 or 4 arguments, as many as it takes."""
    import inspect

    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return 4
    for count in (4, 3, 2):
        try:
            signature.bind(*[None] * count)
        except TypeError:
            continue
        return count
    return 4


def _environ(scope: Scope, req: HookRequest, elapsed: float) -> dict[str, Any]:
    """The WSGI-style ``environ`` of ``post_request``: the request's basic keys."""
    server = scope.get("server") or ("", 0)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": req.method,
        "PATH_INFO": req.path,
        "QUERY_STRING": req.query,
        "RAW_URI": req.uri,
        "SERVER_PROTOCOL": f"HTTP/{req.version[0]}.{req.version[1]}",
        "SCRIPT_NAME": scope.get("root_path", ""),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]) if server[1] is not None else "",
        "REMOTE_ADDR": req.peer_addr[0] if req.peer_addr else "",
        "wsgi.url_scheme": req.scheme,
        "tether.duration": elapsed,
    }
    for name, value in req.headers:
        key = "HTTP_" + name.replace("-", "_")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ
