"""gunicorn's names for what tether does: addresses, flags, worker classes, ``gunicorn.conf.py``.

A gunicorn deployment arrives as a command line (``-b :8000 -w 4 -k
uvicorn.workers.UvicornWorker``) and often a Python config file: settings as
module-level names, server hooks as functions. This module translates both
into ``tether run``'s options, and says in one line what tether does instead
for each gunicorn setting or flag it has no equivalent for.

Invariants: a module-level name of a config file counts only if gunicorn has
a setting or hook of that name (imports and helpers are ignored, as gunicorn
ignores them); a setting left at gunicorn's default says nothing; a setting
whose absence would change what the service does (``user``, ``daemon``,
``proxy_protocol``, ``ssl_context``...) is refused, the rest are accepted with
a line saying what tether does instead.

A config file is executed once per process that needs it (the master for its
settings and hooks, each worker for its hooks: workers are fresh processes,
not forks), and at most once per process (:func:`load`).

Only names and small functions load with ``tether run``; what reading a
config file takes (``ast``, ``inspect``, ``traceback``) loads with one.

Error handling: a file that does not run, a setting tether cannot take or a
hook with the wrong arguments is a :class:`~tether.errors.ConfigError` that
names the file and line (exit 2).

Why this module is long: most of it is the table of gunicorn's settings with what tether
does for each, read top to bottom; the config-file loader beside it applies exactly
those rows.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tether.errors import ConfigError

__all__ = [
    "FLAGS_INSTEAD",
    "HOOKS",
    "PyConfig",
    "is_python_config",
    "load",
    "translate_bind",
    "worker_class_http",
]

#: gunicorn's port when an address names a host only.
DEFAULT_PORT = 8000

#: The server hooks, with the arguments gunicorn passes them.
HOOKS: dict[str, tuple[str, ...]] = {
    "on_starting": ("server",),
    "on_reload": ("server",),
    "when_ready": ("server",),
    "pre_fork": ("server", "worker"),
    "post_fork": ("server", "worker"),
    "post_worker_init": ("worker",),
    "worker_int": ("worker",),
    "pre_exec": ("server",),
    "pre_request": ("worker", "req"),
    "post_request": ("worker", "req", "environ", "resp"),
    "child_exit": ("server", "worker"),
    "worker_exit": ("server", "worker"),
    "nworkers_changed": ("server", "new_value", "old_value"),
    "on_exit": ("server",),
}

#: Hooks gunicorn has and tether never calls: what it does at that moment instead.
_HOOKS_INSTEAD = {
    "worker_abort": "not called: a worker that misses its heartbeats is asked for its "
    "stacks (USR1, written to the log) and killed",
}
_HOOKS_REFUSED = {
    "ssl_context": "tether builds the TLS context from the ssl-* options; set certfile, "
    "keyfile, ca_certs, cert_reqs and ciphers instead",
}

#: Worker classes that mean what tether does (the value: the --http parser they imply).
_WORKER_CLASSES: dict[str, str | None] = {
    "uvicorn.workers.UvicornWorker": None,
    "uvicorn_worker.UvicornWorker": None,
    "uvicorn.workers.UvicornH11Worker": "h11",
    "uvicorn_worker.UvicornH11Worker": "h11",
    "sync": None,
    "gthread": None,
}

#: gunicorn flags with no tether flag of that name: the line that says what to do.
FLAGS_INSTEAD = {
    "-D": "tether does not daemonize; run it under systemd (deploy/systemd/) or a container",
    "--daemon": "tether does not daemonize; run it under systemd (deploy/systemd/) or a container",
    "-u": "tether does not switch users; start it as that user (systemd User=, a container USER)",
    "--user": "tether does not switch users; start it as that user (systemd User=, USER)",
    "-g": "tether does not switch groups; start it with that group (systemd Group=)",
    "--group": "tether does not switch groups; start it with that group (systemd Group=)",
    "-m": "tether keeps the umask it is started with; set systemd's UMask= instead",
    "--umask": "tether keeps the umask it is started with; set systemd's UMask= instead",
    "-n": "tether does not set process titles; leave it out",
    "--name": "tether does not set process titles; leave it out",
    "-R": "workers always write to the master's stderr; leave it out",
    "--enable-stdio-inheritance": "workers always write to the master's stderr; leave it out",
    "--preload": "tether's workers import the app themselves (so a reload loads new code); "
    "--gc-freeze, on by default, saves the collector's work preloading saves",
    "--chdir": "use --app-dir DIR (the import path), or change directory before tether run",
    "--pythonpath": "use --app-dir DIR, or set PYTHONPATH",
    "--keep-alive": "use --timeout-keep-alive S",
    "--worker-connections": "use --limit-concurrency N",
    "--access-logfile": "the access log goes to stderr (logger tether.access); "
    "--no-access-log turns it off, --log-config sends it elsewhere",
    "--error-logfile": "the log goes to stderr; --log-config sends it elsewhere",
    "--log-file": "the log goes to stderr; --log-config sends it elsewhere",
    "--certfile": "use --ssl-certfile PATH",
    "--keyfile": "use --ssl-keyfile PATH",
    "--ca-certs": "use --ssl-ca-certs PATH",
    "--cert-reqs": "use --ssl-cert-reqs N",
    "--ciphers": "use --ssl-ciphers TEXT",
    "--statsd-host": "metrics are served as Prometheus text on the debug server's /metrics",
    "--check-config": "use --print-config: it checks every value and shows where it came from",
    "--paste": "tether runs module:attribute apps; point it at the WSGI app your .ini builds",
    "--proxy-protocol": "tether does not read the PROXY protocol; let the proxy send "
    "X-Forwarded-For and trust it with --forwarded-allow-ips",
    "--log-config-dict": "put the dictionary in a JSON file and pass --log-config FILE",
    "--reload-extra-file": "use --reload-dir DIR (and --reload-include GLOB)",
}

#: gunicorn settings tether takes: gunicorn name -> tether run's long option name.
_SETTINGS = {
    "bind": "bind",
    "workers": "workers",
    "threads": "threads",
    "worker_connections": "limit-concurrency",
    "max_requests": "max-requests",
    "max_requests_jitter": "max-requests-jitter",
    "timeout": "watchdog-timeout",
    "graceful_timeout": "graceful-timeout",
    "keepalive": "timeout-keep-alive",
    "backlog": "backlog",
    "forwarded_allow_ips": "forwarded-allow-ips",
    "access_log_format": "access-logformat",
    "loglevel": "log-level",
    "logconfig": "log-config",
    "logconfig_json": "log-config",
    "raw_env": "env",
    "pidfile": "pidfile",
    "reload": "reload",
    "chdir": "app-dir",
    "keyfile": "ssl-keyfile",
    "certfile": "ssl-certfile",
    "ca_certs": "ssl-ca-certs",
    "cert_reqs": "ssl-cert-reqs",
    "ciphers": "ssl-ciphers",
    "ssl_version": "ssl-version",
    "worker_class": "worker-class",
}

_STDERR = "tether writes every record to stderr; --log-config sends it elsewhere"
#: gunicorn settings tether has no equivalent for: (gunicorn's default, what tether does).
#: A value equal to the default says nothing.
_INSTEAD: dict[str, tuple[Any, str]] = {
    "preload_app": (False, FLAGS_INSTEAD["--preload"]),
    "pythonpath": (None, FLAGS_INSTEAD["--pythonpath"]),
    "proxy_allow_ips": (
        "127.0.0.1,::1",
        "used only with proxy_protocol, which tether does not speak; ignored",
    ),
    "reload_extra_files": ([], FLAGS_INSTEAD["--reload-extra-file"]),
    "reload_engine": ("auto", "tether's --reload watches with inotify; ignored"),
    "umask": (0, FLAGS_INSTEAD["--umask"]),
    "proc_name": (None, "tether does not set process titles; ignored"),
    "default_proc_name": ("gunicorn", "tether does not set process titles; ignored"),
    "capture_output": (False, "workers write to the master's stderr already; ignored"),
    "enable_stdio_inheritance": (False, "workers write to the master's stderr already; ignored"),
    "errorlog": ("-", _STDERR),
    "syslog": (False, "use --log-config with a logging.handlers.SysLogHandler"),
    "syslog_addr": ("udp://localhost:514", "use --log-config with a SysLogHandler"),
    "syslog_prefix": (None, "use --log-config with a SysLogHandler"),
    "syslog_facility": ("user", "use --log-config with a SysLogHandler"),
    "disable_redirect_access_to_syslog": (False, "ignored: tether never redirects to syslog"),
    "logger_class": ("gunicorn.glogging.Logger", "use --log-config to shape the log"),
    "statsd_host": (None, FLAGS_INSTEAD["--statsd-host"]),
    "statsd_prefix": ("", FLAGS_INSTEAD["--statsd-host"]),
    "dogstatsd_tags": ("", FLAGS_INSTEAD["--statsd-host"]),
    "limit_request_line": (4094, "uvicorn's parser sets the request limits; ignored"),
    "limit_request_fields": (100, "uvicorn's parser sets the request limits; ignored"),
    "limit_request_field_size": (8190, "uvicorn's parser sets the request limits; ignored"),
    "sendfile": (None, "ignored: responses are written by the event loop"),
    "reuse_port": (False, "ignored: the master holds one socket per address for every worker"),
    "worker_tmp_dir": (None, "ignored: workers report heartbeats over the notify socket"),
    "tmp_upload_dir": (None, "ignored"),
    "spew": (False, "ignored; tether's /debug/tasks shows what every task is doing"),
    "check_config": (False, FLAGS_INSTEAD["--check-config"]),
    "print_config": (False, "use tether run --print-config"),
    "initgroups": (False, "ignored: tether does not switch users"),
    "strip_header_spaces": (False, "ignored: uvicorn's parser decides"),
    "forwarder_headers": ("SCRIPT_NAME,PATH_INFO", "ignored; use --root-path for a URL prefix"),
    "secure_scheme_headers": (None, "ignored: X-Forwarded-Proto from a trusted peer sets https"),
}
#: Settings refused whatever their value, unless it is gunicorn's default.
_REFUSED: dict[str, tuple[Any, str]] = {
    "daemon": (False, FLAGS_INSTEAD["--daemon"]),
    "user": (None, FLAGS_INSTEAD["--user"]),
    "group": (None, FLAGS_INSTEAD["--group"]),
    "proxy_protocol": (False, FLAGS_INSTEAD["--proxy-protocol"]),
    "paste": (None, FLAGS_INSTEAD["--paste"]),
    "logconfig_dict": ({}, FLAGS_INSTEAD["--log-config-dict"]),
}


def is_python_config(spec: str) -> bool:
    """Whether ``-c SPEC`` names a gunicorn-style Python config (else a TOML file)."""
    return spec.startswith("python:") or spec.endswith(".py")


def translate_bind(text: str) -> str:
    """A gunicorn address in tether's form: ``HOST`` -> ``HOST:8000``, ``:PORT`` -> all addresses.

    Also ``unix://PATH``, ``fd://N`` and ``tcp://HOST:PORT``. Anything else is
    returned as it is, for tether's own parser to judge.
    """
    if not isinstance(text, str):
        return text
    for scheme, replacement in (("unix://", "unix:"), ("fd://", "fd:"), ("tcp://", "")):
        if text.startswith(scheme):
            text = replacement + text[len(scheme) :]
    if text.startswith(("unix:", "fd:")) or not text:
        return text
    if text.startswith(":") and text[1:].isdigit():
        return f"0.0.0.0{text}"  # gunicorn binds the empty host: every IPv4 address
    if text.startswith("[") and text.endswith("]"):
        return f"{text}:{DEFAULT_PORT}"
    if ":" not in text:
        return f"{text}:{DEFAULT_PORT}"
    return text


def worker_class_http(value: str) -> str | None:
    """The --http parser a gunicorn worker class implies; ConfigError for a class tether is not."""
    if value in _WORKER_CLASSES:
        return _WORKER_CLASSES[value]
    if value in ("gevent", "eventlet", "tornado") or "gevent" in value or "eventlet" in value:
        instead = "tether does not monkey-patch: a WSGI app runs in --threads threads, an ASGI "
        instead += "app on asyncio"
    else:
        instead = "tether runs ASGI and WSGI apps itself (uvicorn's protocols)"
    msg = (
        f"worker class {value!r}: {instead}; leave it out "
        "(or give uvicorn.workers.UvicornWorker, sync or gthread)"
    )
    raise ConfigError(msg)


@dataclass
class PyConfig:
    """One executed gunicorn-style config: its names, and the line that set each one."""

    #: How the user named it (``gunicorn.conf.py``, ``python:mod``), for messages.
    name: str
    namespace: dict[str, Any]
    lines: dict[str, int] = field(default_factory=dict)
    #: One line each for settings taken with a difference or ignored.
    warnings: list[str] = field(default_factory=list)

    def where(self, key: str) -> str:
        line = self.lines.get(key)
        return f"{self.name}:{line}" if line else self.name

    def options(self) -> list[tuple[str, Any, str]]:
        """(tether option, value, origin) for every gunicorn setting tether takes.

        Fills :attr:`warnings`; raises ConfigError for a setting it refuses.
        """
        import inspect

        found: list[tuple[str, Any, str]] = []
        self.warnings.clear()
        for key, value in self.namespace.items():
            if key.startswith("_") or inspect.ismodule(value):
                continue
            origin = f"{self.where(key)} ({key})"
            if key in _REFUSED and not _is_default(value, _REFUSED[key][0], key):
                msg = f"{self.where(key)}: {key} = {value!r}: {_REFUSED[key][1]}"
                raise ConfigError(msg)
            if key in _INSTEAD:
                if not _is_default(value, _INSTEAD[key][0], key):
                    self.warnings.append(f"{self.where(key)}: {key}: {_INSTEAD[key][1]}")
                continue
            if key == "wsgi_app":
                if value:
                    target, factory = _app_target(value)
                    found.append(("app", target, origin))
                    if factory:
                        found.append(("factory", True, origin))
                continue
            if key == "accesslog":
                found.extend(self._accesslog(value, origin))
                continue
            option = _SETTINGS.get(key)
            if option is None:
                continue
            value = _setting_value(key, value)
            if value is None:
                continue
            if key == "worker_class":
                try:
                    http = worker_class_http(value)
                except ConfigError as exc:
                    msg = f"{self.where(key)}: {exc}"
                    raise ConfigError(msg) from None
                if http is not None:
                    found.append(("http", http, origin))
            found.append((option, value, origin))
        return found

    def _accesslog(self, value: Any, origin: str) -> list[tuple[str, Any, str]]:
        if value is None:
            return []
        if value != "-":
            self.warnings.append(
                f"{self.where('accesslog')}: accesslog = {value!r}: the access log goes to "
                "stderr (logger tether.access); --log-config sends it to a file"
            )
        return [("access-log", True, origin)]

    def hooks(self) -> dict[str, Callable[..., Any]]:
        """The server hooks the file defines, each checked to take gunicorn's arguments."""
        found: dict[str, Callable[..., Any]] = {}
        for key, value in self.namespace.items():
            if key in _HOOKS_REFUSED and value is not None:
                msg = f"{self.where(key)}: {key}: {_HOOKS_REFUSED[key]}"
                raise ConfigError(msg)
            if key in _HOOKS_INSTEAD and value is not None:
                self.warnings.append(f"{self.where(key)}: {key}: {_HOOKS_INSTEAD[key]}")
                continue
            args = HOOKS.get(key)
            if args is None or value is None:
                continue
            if not callable(value):
                msg = f"{self.where(key)}: {key} must be a function of ({', '.join(args)})"
                raise ConfigError(msg)
            _check_arity(self.where(key), key, value, args)
            found[key] = value
        return found


def _is_default(value: Any, default: Any, key: str) -> bool:
    if value == default or value is None or value is False or value in ("", [], {}):
        return True
    if key == "user":  # the user tether runs as already (configs say os.getenv("USER"))
        return bool(value in (os.geteuid(), _user_name()))
    if key == "group":
        return bool(value in (os.getegid(), _group_name()))
    return False


def _group_name() -> str | None:
    import grp

    try:
        return grp.getgrgid(os.getegid()).gr_name
    except KeyError:
        return None


def _user_name() -> str | None:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return None


def _app_target(value: Any) -> tuple[str, bool]:
    """gunicorn's ``module:app`` or ``module:factory()`` as (module:attr, is a factory call)."""
    text = str(value)
    if text.endswith("()"):
        return text[:-2], True
    return text, False


def _setting_value(key: str, value: Any) -> Any:
    """A gunicorn value in the form tether's option takes; None: the setting is off."""
    if key == "bind":
        items = [value] if isinstance(value, str) else list(value)
        return [translate_bind(b) for b in items]
    if key == "forwarded_allow_ips" and isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    if key in ("max_requests",) and value == 0:
        return None  # gunicorn's 0: no recycling
    if key == "worker_connections" and value == 1000:
        return None  # gunicorn's default, meant for its async workers: no limit here
    if key == "loglevel" and isinstance(value, str):
        return value.lower()
    if key == "raw_env":
        return [value] if isinstance(value, str) else list(value)
    if key in ("keyfile", "certfile", "ca_certs", "ciphers", "pidfile", "logconfig"):
        return value or None
    if key == "logconfig_json":
        return value or None
    if key == "chdir":
        return value or None
    return value


def _check_arity(where: str, key: str, fn: Callable[..., Any], args: tuple[str, ...]) -> None:
    import inspect

    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin or C callable: trust it
    counts = range(2, len(args) + 1) if key == "post_request" else (len(args),)
    for count in counts:
        try:
            signature.bind(*[None] * count)
        except TypeError:
            continue
        return
    msg = f"{where}: {key} must take ({', '.join(args)}); it takes {signature}"
    raise ConfigError(msg)


#: Configs already executed in this process, by how they were named.
_LOADED: dict[str, PyConfig] = {}


def load(spec: str) -> PyConfig:
    """Execute the config ``spec`` names (a ``.py`` path or ``python:module``), once per process."""
    key = spec if spec.startswith("python:") else os.path.abspath(spec)
    cached = _LOADED.get(key)
    if cached is not None:
        return cached
    # As gunicorn: the directory it starts in is importable, for the file's own imports.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    config = _load_module(spec) if spec.startswith("python:") else _load_file(spec)
    _LOADED[key] = config
    return config


def _load_module(spec: str) -> PyConfig:
    import importlib

    name = spec[len("python:") :]
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        msg = f"-c {spec}: {_failure(exc, getattr(exc, 'filename', None) or '')}"
        raise ConfigError(msg) from exc
    path = getattr(module, "__file__", None)
    lines = _assignment_lines(path) if path else {}
    return PyConfig(spec, dict(vars(module)), lines)


def _load_file(path: str) -> PyConfig:
    full = os.path.abspath(path)
    try:
        with open(full, "rb") as f:
            source = f.read()
    except OSError as exc:
        msg = f"-c {path}: {exc.strerror}; check the path (relative to {os.getcwd()})"
        raise ConfigError(msg) from None
    try:
        code = compile(source, full, "exec")
    except SyntaxError as exc:
        msg = f"{path}:{exc.lineno}: {exc.msg}; fix the file"
        raise ConfigError(msg) from None
    except ValueError as exc:  # NUL bytes
        msg = f"{path}: {exc}; fix the file"
        raise ConfigError(msg) from None
    namespace: dict[str, Any] = {"__file__": full, "__name__": "__config__"}
    try:
        exec(code, namespace)  # the operator's own config file, run as gunicorn runs it
    except Exception as exc:
        msg = f"{path}:{_failure(exc, full)}; fix the file"
        raise ConfigError(msg) from exc
    namespace.pop("__builtins__", None)
    return PyConfig(path, namespace, _lines_of(source))


def _failure(exc: BaseException, path: str) -> str:
    """``LINE: Type: message``, the line being the file's deepest frame in the traceback."""
    import traceback

    line = 0
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == path and frame.lineno:
            line = frame.lineno
    text = f"{type(exc).__name__}: {exc}"
    return f"{line}: {text}" if line else text


def _assignment_lines(path: str) -> dict[str, int]:
    try:
        with open(path, "rb") as f:
            return _lines_of(f.read())
    except OSError:
        return {}


def _lines_of(source: bytes) -> dict[str, int]:
    """Module-level name -> the line of its last assignment or definition."""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    lines: dict[str, int] = {}
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines[node.name] = node.lineno
        elif isinstance(node, ast.ImportFrom | ast.Import):
            for alias in node.names:
                lines[(alias.asname or alias.name).split(".")[0]] = node.lineno
        for target in targets:
            if isinstance(target, ast.Name):
                lines[target.id] = node.lineno
    return lines
