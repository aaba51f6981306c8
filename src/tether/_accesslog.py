"""tether's access log: one record per HTTP response, written after it, with its duration.

A websocket is logged once, when its handshake is answered: 101 accepted, 403 refused.

Why not uvicorn's: uvicorn logs when the response *starts* (so no duration
and no size), its line is fixed, and its record carries nothing a JSON log
could use. Ours is an ASGI layer inside the HTTP member: the record is
created once the last body byte has been handed to the transport.

Cost, per request: one small object whose method wraps ``send``, and one
``Logger.info`` call. The record's arguments are an :class:`AccessAtoms`
mapping that computes each gunicorn atom only when a formatter asks for it,
so a line that names four atoms computes four, and a disabled logger
computes none. When the request metrics are recorded too, the HTTP server
calls :meth:`AccessLog.recorded`: the same object's ``send`` and its clock
read serve both, instead of a second wrapper around ``send``.

Error handling: a response the app never finished (it raised, or the client
went away) is still logged once, with the status the client saw (500 if the
response had not started). What the client saw is the first start and the
bodies after it: a second start or a body before the start is refused by the
engine, so it changes neither the status nor the length.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from tether._logsafe import printable, printable_path
from tether.errors import ConfigError

if TYPE_CHECKING:
    from tether.metrics import ProcessMetrics

__all__ = ["DEFAULT_FORMAT", "AccessAtoms", "AccessLog", "check_format"]

_now = time.perf_counter

#: The line when ``--access-logformat`` is not given: client, request line, status, bytes, seconds.
DEFAULT_FORMAT = '%(h)s "%(r)s" %(s)s %(b)s %(L)ss'

_ATOMS = frozenset("hlutrmUqHsBbfaTDMLp")
_ATOM_RE = re.compile(r"%\((\{[^}]*\}[ioe]|[^)]*)\)")

Scope = Any


def check_format(fmt: str) -> str:
    """``fmt`` if every ``%(atom)s`` in it is one of gunicorn's atoms, else a ConfigError."""
    for atom in _ATOM_RE.findall(fmt):
        if atom not in _ATOMS and not (atom.startswith("{") and atom[-1] in "ioe"):
            msg = (
                f"--access-logformat: unknown atom %({atom})s; use gunicorn's atoms "
                "(h l u t r m U q H s B b f a T D M L p, {header}i, {header}o, {variable}e)"
            )
            raise ConfigError(msg)
    try:
        fmt % AccessAtoms({}, 200, [], 0, 0.0)
    except (TypeError, ValueError, KeyError) as exc:
        msg = f"--access-logformat {fmt!r} is not a valid %-format ({exc}); write atoms as %(s)s"
        raise ConfigError(msg) from None
    return fmt


def _raw_header(headers: Any, name: str) -> str | None:
    wanted = name.lower().encode("latin-1")
    for key, value in headers or ():
        if key.lower() == wanted:
            return str(value.decode("latin-1"))
    return None


def _header(headers: Any, name: str) -> str:
    """A header as a text line shows it: escaped, ``-`` when absent."""
    value = _raw_header(headers, name)
    return "-" if value is None else printable(value)


def _method(scope: Scope) -> str:
    """The request's method; a websocket's handshake is a GET."""
    return str(scope.get("method") or ("GET" if scope.get("type") == "websocket" else "-"))


class AccessAtoms(Mapping[str, Any]):
    """gunicorn's access-log atoms for one response, each computed on demand."""

    __slots__ = ("duration", "length", "response_headers", "scope", "status")

    def __init__(
        self, scope: Scope, status: int, response_headers: Any, length: int, duration: float
    ) -> None:
        self.scope = scope
        self.status = status
        self.response_headers = response_headers
        self.length = length
        self.duration = duration

    def __getitem__(self, key: str) -> Any:
        scope = self.scope
        # What the client chose (path, query, headers, a forwarded address) is written
        # escaped: a decoded CR LF or ESC must not forge a line or drive a terminal.
        if key == "h":
            client = scope.get("client")
            return printable(str(client[0])) if client else "-"
        if key == "s":
            return self.status
        if key == "r":
            query = scope.get("query_string") or b""
            target = scope.get("path", "") + (f"?{query.decode('latin-1')}" if query else "")
            return (
                f"{_method(scope)} {printable_path(target)} HTTP/{scope.get('http_version', '1.1')}"
            )
        if key == "m":
            return _method(scope)
        if key == "U":
            return printable_path(scope.get("path", ""))
        if key == "q":
            return printable_path((scope.get("query_string") or b"").decode("latin-1"))
        if key == "H":
            return f"HTTP/{scope.get('http_version', '1.1')}"
        if key == "B":
            return self.length
        if key == "b":
            return self.length or "-"
        if key == "L":
            return f"{self.duration:.6f}"
        if key == "T":
            return int(self.duration)
        if key == "M":
            return int(self.duration * 1000)
        if key == "D":
            return int(self.duration * 1_000_000)
        if key == "t":
            return time.strftime("[%d/%b/%Y:%H:%M:%S %z]")
        if key == "p":
            return f"<{os.getpid()}>"
        if key in ("l", "u"):
            return "-"
        if key == "f":
            return _header(scope.get("headers"), "referer")
        if key == "a":
            return _header(scope.get("headers"), "user-agent")
        if key.startswith("{") and len(key) > 3:
            name, kind = key[1:-2], key[-1]
            if kind == "i":
                return _header(scope.get("headers"), name)
            if kind == "o":
                return _header(self.response_headers, name)
            if kind == "e":
                return os.environ.get(name, "-")
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(_ATOMS))

    def __len__(self) -> int:
        return len(_ATOMS)

    def fields(self) -> dict[str, Any]:
        """What a structured (JSON) record carries besides the message."""
        client = self.scope.get("client")
        return {
            "method": _method(self.scope),
            "path": self.scope.get("path"),
            "query": (self.scope.get("query_string") or b"").decode("latin-1"),
            "status": self.status,
            "duration_ms": round(self.duration * 1000, 3),
            "bytes": self.length,
            "client": f"{client[0]}:{client[1]}" if client else None,
            # As sent: a structured format escapes what it must itself.
            "user_agent": _raw_header(self.scope.get("headers"), "user-agent"),
        }


class _Exchange:
    """One request's response as it is sent: status, headers, bytes; logs once at the end."""

    __slots__ = ("headers", "length", "log", "logged", "scope", "send_inner", "started", "status")

    def __init__(self, log: AccessLog, scope: Scope, send: Any) -> None:
        self.log = log
        self.scope = scope
        self.send_inner = send
        self.started = time.perf_counter()
        self.status = 0  # until the response starts; logged as 500 if it never does
        self.headers: Any = None
        self.length = 0
        self.logged = False

    async def send(self, message: Any) -> None:
        # What the client sees, as the request metrics count it: the first start's status,
        # and the bodies sent after it (uvicorn refuses a body before the start).
        if self.status:
            body = message.get("body")
            if body:
                self.length += len(body)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                await self.send_inner(message)
                self.finish()
                return
        elif message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = message.get("headers")
        await self.send_inner(message)

    async def handshake(self, message: Any) -> None:
        """A websocket's send: logged once, when the handshake is answered (101 or 403)."""
        if not self.logged and message["type"] in ("websocket.accept", "websocket.close"):
            if message["type"] == "websocket.accept":
                self.status = 101
            await self.send_inner(message)
            self.finish()
            return
        await self.send_inner(message)

    def finish(self) -> None:
        if self.logged:
            return
        self.logged = True
        duration = time.perf_counter() - self.started
        atoms = AccessAtoms(self.scope, self.status or 500, self.headers, self.length, duration)
        logger = self.log.logger
        # makeRecord + handle is Logger.info without its caller lookup (a walk up the
        # stack per record), which would name this line anyway.
        logger.handle(
            logger.makeRecord(logger.name, logging.INFO, __file__, 0, self.log.fmt, (atoms,), None)
        )


class AccessLog:
    """ASGI middleware writing one ``tether.access`` record per HTTP response."""

    def __init__(self, app: Any, fmt: str | None = None) -> None:
        self.app = app
        self.fmt = fmt or DEFAULT_FORMAT
        self.logger = logging.getLogger("tether.access")

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "lifespan" or not self.logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(self, scope, send)
        if kind == "websocket":
            exchange.status = 403  # what the client gets if the app closes before accepting
            await self.app(scope, receive, exchange.handshake)
            return
        try:
            await self.app(scope, receive, exchange.send)
        finally:
            exchange.finish()

    def on(self) -> bool:
        """True if records are written (the logger takes INFO): else ``__call__`` passes through."""
        return self.logger.isEnabledFor(logging.INFO)

    async def recorded(
        self, scope: Scope, receive: Any, send: Any, metrics: ProcessMetrics
    ) -> None:
        """One HTTP request, logged and counted in ``metrics`` (a ProcessMetrics) at once.

        What the HTTP server calls when it records request metrics and this log
        is on and right beneath it: one ``send`` wrapper and one clock read at the
        start serve both, instead of each wrapping ``send`` again. Counted as the
        server counts alone: the duration until the app returns, the first start's
        status (500 if none), the body bytes after it; a cancelled request is
        logged but not counted as an answer.
        """
        exchange = _Exchange(self, scope, send)
        # The server's start mark (its drain report shows each request's age from it).
        started = scope["tether.started"] = exchange.started
        try:
            try:
                await self.app(scope, receive, exchange.send)
            finally:
                exchange.finish()
        except asyncio.CancelledError:
            raise
        except BaseException:
            metrics.request(
                scope["method"], exchange.status or 500, _now() - started, exchange.length
            )
            raise
        metrics.request(scope["method"], exchange.status or 500, _now() - started, exchange.length)
