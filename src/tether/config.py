"""The options of ``tether run``, in one validated object.

Both process modes read the same object: the single-process runtime
(``--workers 0``, and every worker a master starts) and the master. Values are
checked once, here, so that a bad flag fails before anything is bound or
started, with one line that names the flag and the fix.

Why this module is long: every option of ``tether run`` is declared here once, with its
flag, default and check (RunConfig, HttpOptions), which is most of it. ShutdownBudget
and ShutdownPlan, the budget derived from those options, could move to a module of their
own; they have not yet.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import stat
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from tether._checks import check_timeout
from tether.errors import ConfigError

__all__ = [
    "DEBUG_TOKEN_ENV",
    "HttpOptions",
    "RunConfig",
    "ShutdownBudget",
    "ShutdownPlan",
    "check_allowed_hosts",
    "check_timeout",
    "check_ws_available",
    "read_token_file",
]

Interface = Literal["auto", "asgi", "asgi3", "asgi2", "wsgi"]
Lifespan = Literal["auto", "on", "off"]
LogFormat = Literal["text", "json"]

_LOOPS = ("auto", "asyncio", "uvloop", "none")
_HTTPS = ("auto", "h11", "httptools")
_WS = ("auto", "none", "websockets", "websockets-sansio", "wsproto")
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")

#: Where the debug token may come from; removed from the environment the app sees.
DEBUG_TOKEN_ENV = "TETHER_DEBUG_TOKEN"

#: How the TLS key's password reaches a worker or a successor (not its command line).
SSL_PASSWORD_ENV = "TETHER_SSL_KEYFILE_PASSWORD"

#: A host name as it appears in a Host header (no port), or ``.domain``.
_HOST_NAME = re.compile(
    r"\.?[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?"
)

DEFAULT_BIND = "127.0.0.1:8080"
DEFAULT_DEBUG_BIND = "127.0.0.1:8001"


def _check_count(flag: str, value: object, *, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        msg = f"{flag} must be a whole number >= {minimum}, got {value!r}"
        raise ConfigError(msg)


def _check_choice(flag: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        msg = f"{flag} must be one of {', '.join(choices)}, got {value!r}"
        raise ConfigError(msg)


def check_forwarded_ips(text: str) -> str:
    """``text`` if every comma-separated entry is an address, a network, ``*`` or a literal.

    Literals (a unix socket path) are allowed as uvicorn allows them; an entry
    that looks like a network but does not parse is an error, not a literal
    that silently never matches.
    """
    for entry in (e.strip() for e in text.split(",")):
        if not entry or entry == "*" or entry.startswith("/"):
            continue
        try:
            if "/" in entry:
                ipaddress.ip_network(entry, strict=False)
            elif entry[0].isdigit() or ":" in entry:
                ipaddress.ip_address(entry)
        except ValueError:
            msg = (
                f"--forwarded-allow-ips: {entry!r} is not an IP address or network; "
                "give addresses or CIDRs separated by commas, for example 10.0.0.0/8,127.0.0.1"
            )
            raise ConfigError(msg) from None
    return text


def check_allowed_hosts(text: str) -> str:
    """``text`` if every comma-separated entry is a host name, ``.domain`` or ``*``."""
    for entry in (e.strip() for e in text.split(",")):
        if entry and (entry != "*" and not _HOST_NAME.fullmatch(entry)):
            msg = (
                f"--debug-allowed-hosts: {entry!r} is not a host name; give names without "
                "a scheme or port, comma-separated, for example debug.internal,.svc.cluster.local"
            )
            raise ConfigError(msg)
    return text


def parse_header(text: str) -> tuple[str, str]:
    """``NAME:VALUE`` as given to ``--header``, split and checked."""
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not name or any(c in name for c in ' \t\r\n()<>@,;="/?[]{}\\'):
        msg = (
            f"--header {text!r}: expected NAME:VALUE, for example --header 'x-frame-options: DENY'"
        )
        raise ConfigError(msg)
    if any(c in value for c in "\r\n\0"):
        msg = f"--header {text!r}: the value contains a line break; give it on one line"
        raise ConfigError(msg)
    return name, value


def _flag(name: str, *, worker: bool = True) -> Any:
    """Field metadata: the option's long flag, and whether a worker needs it passed on."""
    return {"flag": name, "worker": worker}


@dataclass(frozen=True)
class HttpOptions:
    """What the HTTP engine (uvicorn's protocols) is asked to do, with uvicorn's defaults.

    Field names are uvicorn ``Config``'s keyword arguments, and the flags are
    uvicorn's, so a uvicorn command line means the same under ``tether run``.
    """

    #: Seconds an idle keep-alive connection stays open between requests while serving.
    timeout_keep_alive: int = field(default=5, metadata=_flag("--timeout-keep-alive"))
    #: Read X-Forwarded-For/-Proto (and Forwarded) from trusted peers into the scope.
    proxy_headers: bool = field(default=True, metadata=_flag("--proxy-headers"))
    #: Peers trusted with proxy headers: addresses, CIDRs, literals; ``*`` trusts everyone.
    forwarded_allow_ips: str = field(
        default="127.0.0.1,::1", metadata=_flag("--forwarded-allow-ips")
    )
    root_path: str = field(default="", metadata=_flag("--root-path"))
    #: Connections or running requests beyond which new requests get 503.
    limit_concurrency: int | None = field(default=None, metadata=_flag("--limit-concurrency"))
    backlog: int = field(default=2048, metadata=_flag("--backlog"))
    ssl_keyfile: str | None = field(default=None, metadata=_flag("--ssl-keyfile"))
    ssl_certfile: str | None = field(default=None, metadata=_flag("--ssl-certfile"))
    #: Travels to workers in the environment, never on a command line.
    ssl_keyfile_password: str | None = field(
        default=None, metadata=_flag("--ssl-keyfile-password", worker=False)
    )
    ssl_version: int = field(default=17, metadata=_flag("--ssl-version"))  # PROTOCOL_TLS_SERVER
    ssl_cert_reqs: int = field(default=0, metadata=_flag("--ssl-cert-reqs"))  # CERT_NONE
    ssl_ca_certs: str | None = field(default=None, metadata=_flag("--ssl-ca-certs"))
    ssl_ciphers: str | None = field(default=None, metadata=_flag("--ssl-ciphers"))
    ws: str = field(default="auto", metadata=_flag("--ws"))
    ws_max_size: int = field(default=16 * 1024 * 1024, metadata=_flag("--ws-max-size"))
    ws_max_queue: int = field(default=32, metadata=_flag("--ws-max-queue"))
    ws_ping_interval: float = field(default=20.0, metadata=_flag("--ws-ping-interval"))
    ws_ping_timeout: float = field(default=20.0, metadata=_flag("--ws-ping-timeout"))
    ws_per_message_deflate: bool = field(default=True, metadata=_flag("--ws-per-message-deflate"))
    #: Extra response headers, ``(name, value)``, on every response.
    headers: tuple[tuple[str, str], ...] = field(default=(), metadata=_flag("--header"))
    #: ``server: tether`` on every response (unless ``headers`` names a server).
    server_header: bool = field(default=True, metadata=_flag("--server-header"))
    date_header: bool = field(default=True, metadata=_flag("--date-header"))
    http: str = field(default="auto", metadata=_flag("--http"))
    h11_max_incomplete_event_size: int | None = field(
        default=None, metadata=_flag("--h11-max-incomplete-event-size")
    )
    #: Run each request in a fresh ``contextvars.Context``.
    reset_contextvars: bool = field(default=False, metadata=_flag("--reset-contextvars"))

    def __post_init__(self) -> None:
        _check_count("--timeout-keep-alive", self.timeout_keep_alive)
        _check_count("--backlog", self.backlog, minimum=1)
        if self.limit_concurrency is not None:
            _check_count("--limit-concurrency", self.limit_concurrency, minimum=1)
        if self.h11_max_incomplete_event_size is not None:
            _check_count(
                "--h11-max-incomplete-event-size", self.h11_max_incomplete_event_size, minimum=1
            )
        _check_count("--ws-max-size", self.ws_max_size, minimum=1)
        _check_count("--ws-max-queue", self.ws_max_queue, minimum=1)
        check_timeout("--ws-ping-interval", self.ws_ping_interval)
        check_timeout("--ws-ping-timeout", self.ws_ping_timeout)
        _check_choice("--http", self.http, _HTTPS)
        _check_choice("--ws", self.ws, _WS)
        check_forwarded_ips(self.forwarded_allow_ips)
        if self.root_path and not self.root_path.startswith("/"):
            msg = f"--root-path must start with /, got {self.root_path!r}; for example /api"
            raise ConfigError(msg)
        for name, value in self.headers:
            parse_header(f"{name}:{value}")
        if (self.ssl_keyfile or self.ssl_ca_certs) and not self.ssl_certfile:
            msg = "TLS needs a certificate: give --ssl-certfile (with --ssl-keyfile) to serve https"
            raise ConfigError(msg)
        for flag, path in (
            ("--ssl-certfile", self.ssl_certfile),
            ("--ssl-keyfile", self.ssl_keyfile),
            ("--ssl-ca-certs", self.ssl_ca_certs),
        ):
            if path is not None and not os.access(path, os.R_OK):
                msg = f"{flag} {path}: no such readable file; check the path and its permissions"
                raise ConfigError(msg)

    @property
    def tls(self) -> bool:
        return self.ssl_certfile is not None


#: The package each --ws implementation needs.
_WS_PACKAGES = {"websockets": "websockets", "websockets-sansio": "websockets", "wsproto": "wsproto"}


def check_ws_available(name: str) -> None:
    """``--ws NAME`` names an installed library (refused before starting, as uvicorn does)."""
    package = _WS_PACKAGES.get(name)
    if package is None:
        return
    from importlib.util import find_spec

    if find_spec(package) is None:
        msg = (
            f"--ws {name}: the {package} package is not installed; `pip install {package}`, "
            "or use --ws auto (whichever is installed) or --ws none"
        )
        raise ConfigError(msg)


@dataclass(frozen=True)
class RunConfig:
    """Everything ``tether run`` was asked to do. Defaults match the CLI's."""

    #: ``module:attr`` naming an ASGI app, a WSGI app, a tether ``App`` or a factory of one.
    app: str
    #: Addresses to serve the app on: ``HOST:PORT``, ``[IPV6]:PORT``, ``unix:PATH`` or ``fd:N``.
    binds: tuple[str, ...] = field(default=(DEFAULT_BIND,), metadata=_flag("--bind", worker=False))
    #: Address of the debug server, or None for no debug server.
    debug_bind: str | None = field(
        default=DEFAULT_DEBUG_BIND, metadata=_flag("--debug-bind", worker=False)
    )
    #: Token required on ``/debug/*`` (mandatory when the debug bind is not loopback).
    debug_token: str | None = field(default=None, metadata=_flag("--debug-token", worker=False))
    #: Host names, besides IP addresses and ``localhost``, the debug server answers on
    #: ``/metrics`` and ``/debug/*`` (comma-separated; ``.name`` for a domain, ``*`` any).
    debug_allowed_hosts: str = field(
        default="", metadata=_flag("--debug-allowed-hosts", worker=False)
    )
    #: The whole shutdown budget, phases 2 to 6 (the drain delay included), in seconds.
    graceful_timeout: float = field(default=30.0, metadata=_flag("--graceful-timeout"))
    #: Seconds ``/readyz`` answers 503 before the listeners close, counted inside
    #: ``graceful_timeout`` (a master applies it itself).
    drain_delay: float = field(default=0.0, metadata=_flag("--drain-delay", worker=False))
    #: How an idle keep-alive connection is given before it is closed during a drain.
    idle_grace: float = field(default=0.5, metadata=_flag("--idle-grace"))
    #: Seconds a connection to the app has to send a whole request head (uvicorn: no limit).
    timeout_request_head: float = field(default=10.0, metadata=_flag("--timeout-request-head"))
    #: After the deadline: seconds cancelled work gets to unwind before it is reported abandoned.
    cancel_timeout: float = 2.0
    interface: Interface = field(default="auto", metadata=_flag("--interface"))
    #: Directory put first on ``sys.path`` (the current directory by default).
    app_dir: str = field(default=".", metadata=_flag("--app-dir"))
    log_level: str = field(default="info", metadata=_flag("--log-level"))
    #: Process model: 0 = one process; N >= 1 = a master and N workers.
    workers: int = field(default=0, metadata=_flag("--workers", worker=False))
    reload_timeout: float = field(default=60.0, metadata=_flag("--reload-timeout", worker=False))
    watchdog_timeout: float = field(
        default=30.0, metadata=_flag("--watchdog-timeout", worker=False)
    )
    #: A serving event loop running this many seconds late is logged, with its stack (0: off).
    blocked_loop_threshold: float = field(default=0.3, metadata=_flag("--blocked-loop-threshold"))
    #: Threads a WSGI app's requests run in, per process (a2wsgi's pool).
    threads: int = field(default=10, metadata=_flag("--threads"))
    pidfile: str | None = field(default=None, metadata=_flag("--pidfile", worker=False))
    control: str | None = field(default=None, metadata=_flag("--control", worker=False))
    #: Freeze what startup made (``gc.freeze``) so the collector stops rescanning it.
    gc_freeze: bool = field(default=True, metadata=_flag("--gc-freeze"))
    #: The app's prometheus_client metrics on /metrics (a master sets up multiprocess mode).
    app_metrics: bool = field(default=True, metadata=_flag("--app-metrics", worker=False))
    #: The ASGI lifespan protocol: "auto" runs it if the app supports it, "on" requires it.
    lifespan: Lifespan = field(default="auto", metadata=_flag("--lifespan"))
    #: The event loop: "auto" and "uvloop" use uvloop, "asyncio" and "none" the stdlib's.
    loop: str = field(default="auto", metadata=_flag("--loop"))
    #: Call APP to get the app even if it looks like one.
    factory: bool = field(default=False, metadata=_flag("--factory"))
    #: A dotenv file loaded into the environment of the process that imports the app.
    env_file: str | None = field(default=None, metadata=_flag("--env-file"))
    #: A serving process stops gracefully after this many responses (plus up to the jitter).
    limit_max_requests: int | None = field(default=None, metadata=_flag("--limit-max-requests"))
    limit_max_requests_jitter: int = field(default=0, metadata=_flag("--limit-max-requests-jitter"))
    #: Development: a saved change to the app's files reloads it (HUP's way).
    reload: bool = field(default=False, metadata=_flag("--reload", worker=False))
    #: Directories --reload watches (the --app-dir when none is given).
    reload_dirs: tuple[str, ...] = field(default=(), metadata=_flag("--reload-dir", worker=False))
    #: Names a change must match to count (default ``*.py``).
    reload_includes: tuple[str, ...] = field(
        default=(), metadata=_flag("--reload-include", worker=False)
    )
    #: Names (or directory names) whose changes never count.
    reload_excludes: tuple[str, ...] = field(
        default=(), metadata=_flag("--reload-exclude", worker=False)
    )
    #: gunicorn's recycling: after this many responses (plus up to the jitter) a process is
    #: replaced by a fresh one that is READY before it drains.
    max_requests: int | None = field(default=None, metadata=_flag("--max-requests"))
    max_requests_jitter: int = field(default=0, metadata=_flag("--max-requests-jitter"))
    #: Recycling by size: a process whose resident memory passes this many MiB is
    #: replaced the same way (no jitter: it is a ceiling).
    max_worker_memory: int | None = field(default=None, metadata=_flag("--max-worker-memory"))
    #: tether's access log: one record per response, after it, with its duration.
    access_log: bool = field(default=True, metadata=_flag("--access-log"))
    #: The access log's line, in gunicorn's atoms (None: tether's default line).
    access_logformat: str | None = field(default=None, metadata=_flag("--access-logformat"))
    #: Every log record as text, or as one JSON object per line.
    log_format: LogFormat = field(default="text", metadata=_flag("--log-format"))
    #: A logging configuration file (dictConfig JSON or YAML, or fileConfig INI) that governs all.
    log_config: str | None = field(default=None, metadata=_flag("--log-config"))
    #: Accepted for uvicorn command lines; tether's text log has no colours.
    use_colors: bool | None = field(default=None, metadata=_flag("--use-colors"))
    #: A gunicorn-style Python config (``-c gunicorn.conf.py``): every process that has
    #: one of its hooks' moments runs the file's hooks (a worker loads it itself).
    python_config: str | None = field(default=None, metadata=_flag("--config"))
    #: What the HTTP engine is asked to do (uvicorn's options).
    http: HttpOptions = field(default_factory=HttpOptions)
    #: Extra data for modes that need it (kept out of the flag surface).
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_timeout("--graceful-timeout", self.graceful_timeout)
        check_timeout("--drain-delay", self.drain_delay)
        if self.drain_delay > 0 and self.drain_delay >= self.graceful_timeout:
            msg = (
                f"--drain-delay {self.drain_delay:g} leaves no time to drain within "
                f"--graceful-timeout {self.graceful_timeout:g}, which counts the drain delay; "
                "make --graceful-timeout longer than --drain-delay"
            )
            raise ConfigError(msg)
        check_timeout("--reload-timeout", self.reload_timeout, allow_zero=False)
        check_timeout("--watchdog-timeout", self.watchdog_timeout, allow_zero=False)
        check_timeout("--idle-grace", self.idle_grace)
        check_timeout("--timeout-request-head", self.timeout_request_head, allow_zero=False)
        check_allowed_hosts(self.debug_allowed_hosts)
        check_timeout("--blocked-loop-threshold", self.blocked_loop_threshold)
        check_timeout("cancel timeout", self.cancel_timeout)
        if not self.binds:
            msg = "at least one --bind is needed"
            raise ConfigError(msg)
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            msg = (
                f"--workers must be a whole number >= 0, got {self.workers!r}; "
                "use 0 for one process, N for a master with N workers"
            )
            raise ConfigError(msg)
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            msg = (
                f"--threads must be a whole number >= 1, got {self.threads!r}; "
                "it is how many WSGI requests one process runs at once"
            )
            raise ConfigError(msg)
        _check_choice("--interface", self.interface, ("auto", "asgi", "asgi3", "asgi2", "wsgi"))
        _check_choice("--lifespan", self.lifespan, ("auto", "on", "off"))
        _check_choice("--loop", self.loop, _LOOPS)
        _check_choice("--log-level", self.log_level, _LOG_LEVELS)
        _check_choice("--log-format", self.log_format, ("text", "json"))
        if self.limit_max_requests is not None:
            _check_count("--limit-max-requests", self.limit_max_requests, minimum=1)
        _check_count("--limit-max-requests-jitter", self.limit_max_requests_jitter)
        if self.max_requests is not None:
            _check_count("--max-requests", self.max_requests, minimum=1)
            if self.limit_max_requests is not None:
                msg = (
                    "give one of --max-requests (a fresh process takes over, READY first) "
                    "and --limit-max-requests (the process just stops)"
                )
                raise ConfigError(msg)
        _check_count("--max-requests-jitter", self.max_requests_jitter)
        if self.max_worker_memory is not None:
            _check_count("--max-worker-memory", self.max_worker_memory, minimum=1)
        for directory in self.reload_dirs:
            if not os.path.isdir(directory):
                msg = f"--reload-dir {directory}: no such directory; check the path"
                raise ConfigError(msg)
        for flag, path in (("--env-file", self.env_file), ("--log-config", self.log_config)):
            if path is not None and not os.path.isfile(path):
                msg = f"{flag} {path}: no such file; check the path (relative to {os.getcwd()})"
                raise ConfigError(msg)
        if self.access_logformat is not None:
            from tether._accesslog import check_format

            check_format(self.access_logformat)
        if self.control and self.workers == 0:
            msg = (
                "--control needs a master (--workers 1 or more); with --workers 0, "
                "signal the process instead (HUP reloads, TERM stops; --pidfile names it)"
            )
            raise ConfigError(msg)
        self._check_addresses()
        if ":" not in self.app or self.app.startswith(":") or self.app.endswith(":"):
            msg = f"APP must look like module:attribute (for example myapp:app), got {self.app!r}"
            raise ConfigError(msg)

    def _check_addresses(self) -> None:
        """Every address parses; the debug server has its own, on loopback unless guarded."""
        from tether.sockets import is_loopback, parse_address

        app_addresses = [parse_address(b, flag="--bind") for b in self.binds]
        if self.debug_bind is None:
            return
        debug = parse_address(self.debug_bind, flag="--debug-bind")
        if debug in app_addresses:
            msg = (
                f"--debug-bind {debug} is also an app --bind; give the debug server its own "
                "port (default 127.0.0.1:8001) or use --no-debug"
            )
            raise ConfigError(msg)
        if not is_loopback(debug) and not self.debug_token:
            msg = (
                f"--debug-bind {debug} is not a loopback address; the debug server shows "
                "every task's stack, so pass --debug-token TOKEN to expose it"
            )
            raise ConfigError(msg)

    def successor_env(self) -> dict[str, str]:
        """What a process started to succeed this one (reload, upgrade) needs in its environment.

        The debug token travels here, never on a command line other users can read.
        """
        env = {DEBUG_TOKEN_ENV: self.debug_token} if self.debug_token else {}
        if self.http.ssl_keyfile_password is not None:
            env[SSL_PASSWORD_ENV] = self.http.ssl_keyfile_password
        return env

    def reload_watch(self) -> tuple[list[str], list[str], list[str]]:
        """What --reload watches: directories, include patterns, exclude patterns."""
        from tether._reloader import DEFAULT_EXCLUDES, DEFAULT_INCLUDES

        dirs = [os.path.abspath(d) for d in self.reload_dirs or (self.app_dir,)]
        includes = list(self.reload_includes or DEFAULT_INCLUDES)
        return dirs, includes, [*DEFAULT_EXCLUDES, *self.reload_excludes]

    def to_argv(self, *, debug_path: str | None) -> list[str]:
        """``run APP`` and every option a worker needs, for a worker on inherited sockets.

        This is the one place that turns a config back into a command line:
        each field whose value differs from its default is given with its
        flag. No ``--bind`` (the sockets arrive by LISTEN_FDS), no drain delay
        (the master holds readiness and applies it), nothing only a master
        reads; secrets travel in :meth:`successor_env`. A worker reads its
        options from this command line alone (never from the environment or a
        file), so it runs with exactly what its master resolved.
        """
        argv = ["run", self.app, "--workers", "0"]
        argv += ["--debug-bind", f"unix:{debug_path}"] if debug_path else ["--no-debug"]
        argv += ["--drain-delay", "0"]
        for obj in (self, self.http):
            for f in _passed_on(obj):
                argv += _as_args(f.metadata["flag"], getattr(obj, f.name), f)
        return argv

    def for_worker(self, *, debug_path: str | None) -> RunConfig:
        """The config a worker resolves from :meth:`to_argv`, without a command line to parse.

        A worker forked or prestarted by its master (tether._forkstart,
        tether._prestart) is handed this instead of parsing its command line
        (tests/test_config.py checks that the two agree). The key's password
        comes along as an exec'd worker reads it: from the master's environment.
        """
        http = HttpOptions(
            **{f.name: getattr(self.http, f.name) for f in _passed_on(self.http)},
            ssl_keyfile_password=self.http.ssl_keyfile_password,
        )
        return RunConfig(
            app=self.app,
            debug_bind=f"unix:{debug_path}" if debug_path else None,
            http=http,
            **{f.name: getattr(self, f.name) for f in _passed_on(self)},
        )

    def replace(self, **changes: object) -> RunConfig:
        """A copy with some options changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _passed_on(obj: RunConfig | HttpOptions) -> list[dataclasses.Field[Any]]:
    """The fields of ``obj`` a master passes on to its workers (the rest: their defaults)."""
    return [f for f in dataclasses.fields(obj) if f.metadata.get("worker")]


def _as_args(flag: str, value: Any, f: dataclasses.Field[Any]) -> list[str]:
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if value == default or value is None:
        return []
    if flag == "--header":
        return [a for name, v in value for a in (flag, f"{name}:{v}")]
    if flag == "--ws-per-message-deflate":  # uvicorn's form: a value, not a flag pair
        return [flag, "true" if value else "false"]
    if isinstance(value, bool):
        return [flag] if value else [f"--no-{flag[2:]}"]
    return [flag, repr(value) if isinstance(value, float) else str(value)]


def read_token_file(path: str) -> str:
    """The debug token in ``path``: read once; the file must not be readable by other users."""
    try:
        with open(path, encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode
            token = f.read(4096).strip()
    except OSError as exc:
        msg = f"cannot read --debug-token-file {path}: {exc.strerror}; check the path"
        raise ConfigError(msg) from exc
    if mode & 0o037:  # group may read it, nobody else may touch it
        msg = (
            f"--debug-token-file {path} is open to other users (mode {stat.S_IMODE(mode):04o}); "
            f"run `chmod 600 {path}` (or 640 to share it with a group)"
        )
        raise ConfigError(msg)
    if not token:
        msg = f"--debug-token-file {path} is empty; put the token in it"
        raise ConfigError(msg)
    return token


@dataclass(frozen=True)
class ShutdownBudget:
    """Every bound of a shutdown, derived in one place from ``--graceful-timeout``.

    A stop gets one absolute deadline (``deadline(now)``: the end of the
    graceful period, which :class:`ShutdownPlan` holds with the others for one
    stop); every other bound is an offset from it, in this order,
    each leaving the one before it room to finish and report:

    tracker report < http report grace < group abandon < hard stop < master kill

    - ``tracker_report``: cancelled background tasks get this long to unwind
      before the tracker names them;
    - ``http_report_grace``: the HTTP member, cancelled at the deadline, waits
      this long for that report;
    - ``group_abandon``: a group abandons members still running this long after
      its graceful deadline (its cancel timeout);
    - ``hard_stop``: the process's last resort, if its event loop cannot be reached;
    - ``master_kill``: a master kills a worker still alive this long after its deadline.
    """

    graceful: float = 30.0
    cancel: float = 2.0

    @classmethod
    def of(cls, config: RunConfig) -> ShutdownBudget:
        return cls(config.graceful_timeout, config.cancel_timeout)

    def deadline(self, now: float) -> float:
        """The absolute end of the graceful period for a stop that begins at ``now``."""
        return now + self.graceful

    @property
    def tracker_report(self) -> float:
        return self.cancel * 0.5

    @property
    def http_report_grace(self) -> float:
        return self.cancel * 0.75

    @property
    def group_abandon(self) -> float:
        return self.cancel

    @property
    def hard_stop(self) -> float:
        return 2 * self.cancel + 1.0

    @property
    def master_kill(self) -> float:
        return self.hard_stop + 2.0


@dataclass(frozen=True)
class ShutdownPlan:
    """One stop's deadlines, made once when the stop begins: absolute, never remaining seconds.

    Every field is a ``time.monotonic()`` value. A phase asks ``left(deadline)``
    at the point of use, so no hop between modules loses or adds time, and
    both process modes follow the same plan:

    begun <= drain_delay_end < deadline < cancel_end < hard_stop < master_kill

    - ``drain_delay_end``: ``/readyz`` has answered 503 since ``begun``; the
      listeners close now (equal to ``begun`` in a reload or a handover);
    - ``deadline``: ``begun + --graceful-timeout``: the drain, background work
      and the app's shutdown are over (the drain delay is counted inside);
    - ``cancel_end``: what was cancelled at the deadline has unwound or is abandoned;
    - ``hard_stop``: a process whose event loop cannot be reached ends itself;
    - ``master_kill``: a master kills a worker still alive.

    A master and its workers share the plan's clock: ``CLOCK_MONOTONIC`` is
    one clock for every process on a Linux host (a time namespace would shift
    it, and a master's workers never get one of their own), so a worker given
    the master's ``deadline`` follows the master's plan, not one of its own
    made later (:mod:`tether.worker`, ``TETHER_STOP_PLAN``).
    """

    begun: float
    drain_delay_end: float
    deadline: float
    budget: ShutdownBudget

    @classmethod
    def begin(
        cls, config: RunConfig, *, now: float | None = None, drain_delay: bool = True
    ) -> ShutdownPlan:
        """The plan of a stop that begins ``now``; ``drain_delay=False`` skips phase 2."""
        begun = time.monotonic() if now is None else now
        budget = ShutdownBudget.of(config)
        delay = min(config.drain_delay, budget.graceful) if drain_delay else 0.0
        return cls(begun, begun + delay, budget.deadline(begun), budget)

    @classmethod
    def until(cls, config: RunConfig, deadline: float, *, now: float | None = None) -> ShutdownPlan:
        """A plan that ends at a ``deadline`` someone else set (a master, for its workers)."""
        begun = time.monotonic() if now is None else now
        return cls(begun, begun, max(begun, deadline), ShutdownBudget.of(config))

    @property
    def cancel_end(self) -> float:
        return self.deadline + self.budget.group_abandon

    @property
    def hard_stop(self) -> float:
        return self.deadline + self.budget.hard_stop

    @property
    def master_kill(self) -> float:
        return self.deadline + self.budget.master_kill

    def left(self, until: float, *, now: float | None = None) -> float:
        """Seconds from ``now`` until the absolute ``until`` (never negative)."""
        return max(0.0, until - (time.monotonic() if now is None else now))
