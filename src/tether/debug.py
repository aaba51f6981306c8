"""The debug server's endpoints: health, readiness, metrics, task and thread dumps.

A plain ASGI app (no framework), served by its own uvicorn instance as a
member of the service's Group, on loopback by default. ``/debug/tasks`` is
Go's goroutine dump for asyncio: every task with its whole await chain,
tasks with identical stacks grouped and counted, so that a thousand requests
stuck on the same lock read as one entry with a count. ``/debug/`` is a list
of links, or the page the source gives for it (the runtime and the master give
the HTML console of :mod:`tether.console`).

Importing this module costs next to nothing: the HTTP engine is the caller's,
and ``prometheus_client`` is imported when ``/metrics`` is first scraped.

Security: ``/healthz`` and ``/readyz`` are open to everyone: they say only
"ok" or "ready", and a liveness probe must always get through. On a TCP
listener, ``/metrics`` and ``/debug/*`` answer only requests whose ``Host`` is
an IP address, ``localhost`` (or a name under ``.localhost``) or a name in the
allowed list, and 403 otherwise: a web page that rebinds its own name to
127.0.0.1 (DNS rebinding) sends its own name as the Host, so it cannot read
the dumps through the visitor's browser. An address in the Host is never such
a page's (the browser would be talking to the page's own server), which is
why probes and scrapers that use the pod's IP pass. A unix socket, which no
browser reaches, is not checked. ``/debug/*`` also needs the token when one is
configured (``Authorization: Bearer TOKEN``, the scheme in any case, or
``?token=TOKEN``). The server only reads: mutating operations live on the
control socket.
"""

from __future__ import annotations

import asyncio
import html
import ipaddress
import json
import socket
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from tether._stacks import format_frames, task_frames, task_label, thread_stacks

if TYPE_CHECKING:
    from prometheus_client.metrics_core import GaugeMetricFamily
    from prometheus_client.registry import CollectorRegistry

    from tether.engine import Receive, Scope, Send, ServeOptions

__all__ = [
    "DEBUG_CONNECTIONS",
    "DEBUG_HEAD_TIMEOUT",
    "DebugApp",
    "DebugSource",
    "debug_serve_options",
    "host_allowed",
    "hosts_for",
    "task_dump",
    "task_label",
    "thread_dump",
]

#: The debug listener's connection cap: a port reachable by others never takes more
#: than this many of the process's fds (and never more than an eighth of its limit).
DEBUG_CONNECTIONS = 32
#: Seconds a debug connection has to send its request head, and may then stay idle.
DEBUG_HEAD_TIMEOUT = 5.0

#: One metric: (name, help, value).
Metric = tuple[str, str, float]
#: A page under ``/debug/<name>`` computed asynchronously: query → (status, type, body).
Page = Callable[[dict[str, list[str]]], Awaitable[tuple[int, str, bytes]]]


@dataclass
class DebugSource:
    """What the debug server reports on; the runtime fills it in."""

    #: True while the service accepts traffic (``/readyz`` answers 200).
    is_ready: Callable[[], bool] = lambda: False
    #: Why the service is not ready, for the 503 body.
    status: Callable[[], str] = lambda: "starting"
    #: Plain gauges for ``/metrics``, as (name, help, value).
    metrics: Callable[[], Iterable[Metric]] = lambda: ()
    #: Extra read-only JSON endpoints under ``/debug/`` (for example ``workers``).
    extra: dict[str, Callable[[], Any]] = field(default_factory=dict)
    #: Pages under ``/debug/`` that need to wait (a master asks its workers); they
    #: take the place of a built-in page of the same name (``tasks``, ``threads``, and
    #: ``""``, the index at ``/debug/``: :func:`tether.console.console_page`).
    pages: dict[str, Page] = field(default_factory=dict)
    #: Prometheus collectors (objects with ``collect()``) served on ``/metrics`` too:
    #: the seam for metrics richer than gauges (counters, histograms, labels, a master's
    #: sum of its workers).
    collectors: list[Any] = field(default_factory=list)
    #: Awaited before ``/metrics`` is collected: where a master scrapes its workers.
    scrape: Callable[[], Awaitable[None]] | None = None


class _Collector:
    def __init__(self, source: DebugSource) -> None:
        self.source = source

    def collect(self) -> Iterable[GaugeMetricFamily]:
        from prometheus_client.metrics_core import GaugeMetricFamily

        for name, help_text, value in self.source.metrics():
            yield GaugeMetricFamily(name, help_text, value=value)


def task_dump(loop: asyncio.AbstractEventLoop | None = None) -> list[dict[str, Any]]:
    """Every task of the loop, grouped by identical stack, largest group first.

    Each group is named by what it runs (:func:`task_label`) and says whether
    it is one of tether's own (``"own"``: the debug server, timers, the engine's
    housekeeping), which the console folds away.
    """
    groups: dict[str, list[asyncio.Task[Any]]] = defaultdict(list)
    labels: dict[str, tuple[str, bool]] = {}
    for task in asyncio.all_tasks(loop):
        stack = format_frames(task_frames(task))
        groups[stack].append(task)
        if stack not in labels:
            labels[stack] = task_label(task)
    return [
        {
            "count": len(tasks),
            "names": sorted(t.get_name() for t in tasks),
            "stack": stack,
            "runs": labels[stack][0],
            "own": labels[stack][1],
        }
        for stack, tasks in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    ]


def thread_dump() -> list[dict[str, Any]]:
    """Every thread's stack."""
    return [
        {
            "ident": ident,
            "name": thread.name if thread is not None else "?",
            "daemon": thread.daemon if thread is not None else None,
            "stack": stack,
        }
        for ident, (thread, stack) in sorted(thread_stacks().items())
    ]


def format_task_dump(groups: list[dict[str, Any]]) -> str:
    """The task dump as text, like Go's goroutine dump."""
    total = sum(g["count"] for g in groups)
    lines = [f"{total} task(s) in {len(groups)} group(s)\n"]
    for g in groups:
        names = ", ".join(g["names"][:5]) + (", ..." if g["count"] > 5 else "")
        stack = g["stack"] or "  (no frames)\n"
        runs = f" running {g['runs']}" if g.get("runs") else ""
        lines.append(f"\n{g['count']} task(s){runs}: {names}\n{stack}")
    return "".join(lines)


def format_thread_dump(threads: list[dict[str, Any]]) -> str:
    """The thread dump as text."""
    return "".join(f"\nthread {t['name']} ({t['ident']}):\n{t['stack']}" for t in threads)


_INDEX = """<!doctype html><title>tether debug</title><h1>tether debug</h1><ul>
<li><a href="/healthz">/healthz</a><li><a href="/readyz">/readyz</a>
<li><a href="/metrics">/metrics</a><li><a href="/debug/tasks{q}">/debug/tasks</a>
<li><a href="/debug/threads{q}">/debug/threads</a>{extra}</ul>"""


def debug_serve_options() -> ServeOptions:
    """How a debug listener is served: hardened for a port others (the probes) reach.

    At most :data:`DEBUG_CONNECTIONS` connections (an eighth of the fd limit if
    that is lower), the idle or half-sent one waiting longest making room for a
    new one; a request head within :data:`DEBUG_HEAD_TIMEOUT` seconds; heads
    over 64 KiB answered 431. A flood of idle or half-sent connections leaves
    ``/healthz`` answering.
    """
    import resource

    from tether.config import HttpOptions
    from tether.engine import ServeOptions

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = max(4, min(DEBUG_CONNECTIONS, soft // 8))
    return ServeOptions(
        lifespan="off",
        idle_grace=0.0,
        name="debug",
        head_timeout=DEBUG_HEAD_TIMEOUT,
        max_connections=cap,
        # asyncio accepts up to a backlog's worth at a time: keep that within the cap too.
        http=HttpOptions(backlog=cap, timeout_keep_alive=int(DEBUG_HEAD_TIMEOUT)),
    )


def hosts_for(sock: socket.socket, allowed: str) -> tuple[str, ...] | None:
    """The ``allowed_hosts`` of a :class:`DebugApp` on ``sock``, from ``--debug-allowed-hosts``.

    None (no Host check) on a unix socket, which no browser reaches.
    """
    if sock.family == socket.AF_UNIX:
        return None
    return tuple(entry.strip().lower() for entry in allowed.split(",") if entry.strip())


def host_allowed(host: str | None, allowed: Sequence[str]) -> bool:
    """True if a request with this ``Host`` value may read ``/metrics`` and ``/debug/*``.

    Allowed: no Host at all (no browser sends such a request), an IP address
    with or without a port (``127.0.0.1:8001``, ``[::1]:8001``, a pod's IP),
    ``localhost`` and names under ``.localhost`` (RFC 6761: never resolved by
    DNS), and each entry of ``allowed``: a name, ``.name`` for the name and
    every name under it, or ``*`` for any Host.
    """
    if host is None or "*" in allowed:
        return True
    name = host.strip().lower()
    if name.startswith("["):
        literal, bracket, _rest = name[1:].partition("]")
        return bool(bracket) and _is_address(literal)
    head, colon, port = name.rpartition(":")
    if colon and port.isdigit():
        name = head
    name = name.removesuffix(".")
    if not name:
        return False
    if _is_address(name) or name == "localhost" or name.endswith(".localhost"):
        return True
    return any(
        name == entry or (entry.startswith(".") and (name.endswith(entry) or name == entry[1:]))
        for entry in allowed
    )


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


_FORBIDDEN = (
    b"this Host is not allowed here: reach the debug server by an IP address or localhost, "
    b"or name the host in --debug-allowed-hosts\n"
)


class DebugApp:
    """The ASGI app behind the debug listener.

    ``allowed_hosts``: the names besides addresses and ``localhost`` whose
    requests are answered on ``/metrics`` and ``/debug/*`` (see
    :func:`host_allowed`); None answers any Host (a unix socket).
    """

    def __init__(
        self,
        source: DebugSource,
        *,
        token: str | None = None,
        allowed_hosts: Sequence[str] | None = (),
    ) -> None:
        self.source = source
        self.token = token
        self.allowed_hosts = allowed_hosts
        self._registry: CollectorRegistry | None = None

    @property
    def registry(self) -> CollectorRegistry:
        """What ``/metrics`` collects; made (and prometheus_client imported) on first use."""
        if self._registry is None:
            from prometheus_client.registry import CollectorRegistry

            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(_Collector(self.source))
            for collector in self.source.collectors:
                self._registry.register(collector)
        return self._registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # served with lifespan off; no websockets here
        if scope["path"] == "/metrics" and self.source.scrape is not None and self._host_ok(scope):
            await self.source.scrape()
        status, ctype, body = self.respond(scope)
        page = self._page(scope)
        if page is not None and status == 200:
            status, ctype, body = await page(_query(scope))
        headers = [
            (b"content-type", ctype.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="tether debug"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def respond(self, scope: Scope) -> tuple[int, str, bytes]:
        """Status, content type and body for one request."""
        path: str = scope["path"]
        query = _query(scope)
        text = "text/plain; charset=utf-8"
        if path == "/healthz":
            return 200, text, b"ok\n"
        if path == "/readyz":
            if self.source.is_ready():
                return 200, text, b"ready\n"
            return 503, text, f"not ready: {self.source.status()}\n".encode()
        if not self._host_ok(scope):
            return 403, text, _FORBIDDEN
        if path == "/metrics":
            from prometheus_client.exposition import generate_latest

            return 200, "text/plain; version=0.0.4", generate_latest(self.registry)
        if not (path == "/debug" or path.startswith("/debug/")):
            return 404, text, b"not found; try /debug/\n"
        if not self._authorized(scope, query):
            return 401, text, b"a token is required for /debug/*: Authorization: Bearer TOKEN\n"
        want_json = query.get("format") == ["json"]
        name = path.removeprefix("/debug").strip("/")
        if name == "":
            q = f"?token={html.escape(query['token'][0])}" if "token" in query else ""
            extra = "".join(
                f'<li><a href="/debug/{html.escape(n)}{q}">/debug/{html.escape(n)}</a>'
                for n in [*self.source.extra, *self.source.pages]
                if n not in ("", "tasks", "threads")
            )
            return 200, "text/html; charset=utf-8", _INDEX.format(q=q, extra=extra).encode()
        if name in self.source.pages:
            return 200, text, b""  # answered by the page itself, once authorized
        if name == "tasks":
            groups = task_dump()
            if want_json:
                return 200, "application/json", json.dumps(groups).encode()
            return 200, text, format_task_dump(groups).encode()
        if name == "threads":
            threads = thread_dump()
            if want_json:
                return 200, "application/json", json.dumps(threads).encode()
            return 200, text, format_thread_dump(threads).encode()
        if name in self.source.extra:
            return (
                200,
                "application/json",
                json.dumps(self.source.extra[name](), default=str).encode(),
            )
        return 404, text, b"not found; see /debug/ for the list\n"

    def _page(self, scope: Scope) -> Page | None:
        path: str = scope["path"]
        if not (path == "/debug" or path.startswith("/debug/")):
            return None
        return self.source.pages.get(path.removeprefix("/debug").strip("/"))

    def _host_ok(self, scope: Scope) -> bool:
        return self.allowed_hosts is None or host_allowed(_host(scope), self.allowed_hosts)

    def _authorized(self, scope: Scope, query: dict[str, list[str]]) -> bool:
        if self.token is None:
            return True
        import hmac  # only with a token

        offered = query.get("token", [""])[0]
        for key, value in scope.get("headers", ()):
            if key == b"authorization":
                # RFC 7235: the scheme is case-insensitive; one or more spaces follow it.
                scheme, _, credentials = value.strip().partition(b" ")
                if scheme.lower() == b"bearer":
                    offered = credentials.strip().decode("latin-1")
        return hmac.compare_digest(offered.encode(), self.token.encode())


def _query(scope: Scope) -> dict[str, list[str]]:
    return parse_qs(scope.get("query_string", b"").decode("latin-1"))


def _host(scope: Scope) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == b"host":
            return str(value.decode("latin-1"))
    return None
