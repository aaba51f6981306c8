"""Where ``tether run``'s options come from: command line > environment > file > defaults.

click reads the command line. Everything else arrives as click's
``default_map``, which click ranks below the command line and above the
option's own default: a TOML file (``--config PATH``, or ``[tool.tether]`` in
``./pyproject.toml``) first, then ``TETHER_<OPTION>`` variables over it (and
the ecosystem's ``WEB_CONCURRENCY`` and ``FORWARDED_ALLOW_IPS`` below those).
``PORT`` serves on ``0.0.0.0:$PORT`` when no address was given anywhere.
Each value's origin is kept, for ``--print-config`` and for error messages.

Invariant: a worker started by a tether master (:func:`tether.worker.started_by_master`)
reads its command line alone. Its master resolved every source already and
passed the result on (``RunConfig.to_argv``); a pidfile or a control socket
from the environment or a file is the master's, never the worker's.

Error handling: an unknown key, a value of the wrong type or an unreadable
file is a click usage error naming where the value came from (exit 2).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

import click
from click.core import ParameterSource

from tether._gunicorn import is_python_config, translate_bind, worker_class_http
from tether._gunicorn import load as load_pyconfig
from tether.config import (
    DEFAULT_BIND,
    HttpOptions,
    RunConfig,
    check_ws_available,
    parse_header,
    read_token_file,
)
from tether.errors import ConfigError
from tether.worker import started_by_master

__all__ = [
    "Resolved",
    "apply_env",
    "check_env",
    "check_worker_class",
    "load_env_file",
    "load_sources",
    "resolve",
]

ENV_PREFIX = "TETHER_"
#: The ecosystem's variables, below TETHER_<OPTION> (they are read by other servers too).
FALLBACK_ENV = {"workers": "WEB_CONCURRENCY", "forwarded_allow_ips": "FORWARDED_ALLOW_IPS"}
#: Secrets (read by click from their own variables) and the options about sources themselves.
_NOT_FROM_SOURCES = frozenset({"config", "print_config", "debug_token", "ssl_keyfile_password"})
_BIND_PARAMS = ("bind", "host", "port", "uds", "fd")
_ORIGINS = "tether.origins"
#: ``ctx.meta`` key: the gunicorn-style Python config given to -c, for RunConfig.python_config.
_PYCONFIG = "tether.pyconfig"
#: Options never read from TETHER_<OPTION> (TETHER_ENV names a deployment stage too often).
_NOT_FROM_ENV = frozenset({"env"})


class _FileError(click.ClickException):
    """A config file that cannot be taken: one line naming the file (and line), exit 2."""

    exit_code = 2


def _long_names(param: click.Parameter) -> list[str]:
    if isinstance(param, click.Argument):
        return [param.name or ""]
    return [o[2:] for o in param.opts if o.startswith("--")]


def _params(command: click.Command) -> dict[str, click.Parameter]:
    """Long option name (dashes or underscores) -> parameter, for file keys."""
    names: dict[str, click.Parameter] = {}
    for param in command.params:
        if param.name in _NOT_FROM_SOURCES:
            continue
        for name in _long_names(param):
            names[name] = param
            names[name.replace("-", "_")] = param
    return names


def _read_file(path: str | None) -> tuple[dict[str, Any], str]:
    """The option table of ``path`` (or of ./pyproject.toml's [tool.tether]) and its name."""
    where = f"--config {path}" if path else "pyproject.toml [tool.tether]"
    target = path or "pyproject.toml"
    try:
        with open(target, "rb") as f:
            content = f.read()
    except FileNotFoundError:
        if path is None:
            return {}, where
        msg = f"--config {path}: no such file; check the path (relative to {os.getcwd()})"
        raise click.UsageError(msg) from None
    except OSError as exc:
        msg = f"cannot read {target}: {exc.strerror}"
        raise click.UsageError(msg) from exc
    import tomllib  # only with a file to read: never in a worker

    try:
        data = tomllib.loads(content.decode())
    except UnicodeDecodeError as exc:
        msg = f"{target} is not valid TOML: not UTF-8 (byte {exc.start}); save it as UTF-8"
        raise click.UsageError(msg) from None
    except tomllib.TOMLDecodeError as exc:
        msg = f"{target} is not valid TOML: {exc}"
        raise click.UsageError(msg) from exc
    table = data.get("tool", {}).get("tether") if "tool" in data or path is None else data
    if table is None:
        table = {} if path is None else data
    if not isinstance(table, dict):
        msg = f"{where} must be a table of options, for example workers = 4"
        raise click.UsageError(msg)
    return table, where


def _checked(ctx: click.Context, param: click.Parameter, value: Any, where: str) -> Any:
    if param.multiple and isinstance(value, str):
        value = [value]
    try:
        param.type_cast_value(ctx, value)
    except click.BadParameter as exc:
        name = _long_names(param)[0]
        msg = f"{where}: {name} = {value!r}: {exc.message}"
        raise click.UsageError(msg) from None
    return value


def _from_env(param: click.Parameter, var: str, text: str) -> Any:
    if not param.multiple:
        return text
    if param.name == "headers":  # values may hold spaces and commas: one header per line
        return [line for line in text.splitlines() if line.strip()]
    return text.replace(",", " ").split()


def load_sources(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """``--config``'s eager callback: fill ``ctx.default_map`` from the file and environment."""
    origins: dict[str, str] = {}
    defaults: dict[str, Any] = {}
    ctx.meta[_ORIGINS] = origins
    if value is not None and is_python_config(value):
        ctx.meta[_PYCONFIG] = value if value.startswith("python:") else os.path.abspath(value)
    if started_by_master(os.environ):  # the worker's command line is complete
        return value
    names = _params(ctx.command)
    if value is not None and is_python_config(value):
        _read_python(ctx, value, names, defaults, origins)
        table: dict[str, Any] = {}
        where = ""
    else:
        table, where = _read_file(value)
    for key, raw in table.items():
        target = names.get(key)
        if target is None or target.name is None:
            msg = (
                f"{where}: unknown key {key!r}; the keys are tether run's long option names "
                "(tether run --help), for example workers = 4"
            )
            raise click.UsageError(msg)
        defaults[target.name] = _checked(ctx, target, raw, where)
        origins[target.name] = where
    for target in ctx.command.params:
        if target.name is None or target.name in _NOT_FROM_SOURCES | _NOT_FROM_ENV:
            continue
        candidates = [ENV_PREFIX + n.upper().replace("-", "_") for n in _long_names(target)]
        if target.name in FALLBACK_ENV:
            candidates.append(FALLBACK_ENV[target.name])
        for var in candidates:
            text = os.environ.get(var)
            if text is not None and text != "":
                found = f"environment ({var})"
                defaults[target.name] = _checked(ctx, target, _from_env(target, var, text), found)
                origins[target.name] = found
                break
    ctx.default_map = defaults
    return value


def _read_python(
    ctx: click.Context,
    spec: str,
    names: dict[str, click.Parameter],
    defaults: dict[str, Any],
    origins: dict[str, str],
) -> None:
    """A gunicorn config's settings into ``defaults``; its hooks are checked here, run later."""
    try:
        pyconfig = load_pyconfig(spec)
        found = pyconfig.options()
        pyconfig.hooks()
    except ConfigError as exc:
        raise _FileError(str(exc)) from None
    for line in pyconfig.warnings:
        click.echo(f"tether: note: {line}", err=True)
    for option, raw, origin in found:
        target = names[option]
        assert target.name is not None
        defaults[target.name] = _checked(ctx, target, raw, origin.split(" ", 1)[0])
        origins[target.name] = origin


def check_env(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
    """``-e NAME=VALUE`` (gunicorn's raw_env): each one names a variable."""
    for item in value or ():
        name, sep, _ = str(item).partition("=")
        if not sep or not name or not name.replace("_", "a").isalnum() or name[0].isdigit():
            msg = f"{item!r}: expected NAME=VALUE, for example -e DJANGO_SETTINGS_MODULE=app"
            raise click.BadParameter(msg)
    return value


def check_worker_class(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
    """``-k CLASS``: the uvicorn worker (or sync, gthread) means what tether does; others not."""
    if value is not None:
        try:
            worker_class_http(value)
        except ConfigError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def apply_env(items: tuple[str, ...]) -> None:
    """``-e NAME=VALUE``: into this process's environment, which every worker inherits."""
    for item in items:
        name, _, text = item.partition("=")
        os.environ[name] = text


def _origin(ctx: click.Context, name: str) -> str:
    source = ctx.get_parameter_source(name)
    if source is ParameterSource.COMMANDLINE:
        return "command line"
    if source is ParameterSource.ENVIRONMENT:
        param = next(p for p in ctx.command.params if p.name == name)
        envvar = param.envvar if isinstance(param.envvar, str) else "its variable"
        return f"environment ({envvar})"
    if source is ParameterSource.DEFAULT_MAP:
        return str(ctx.meta.get(_ORIGINS, {}).get(name, "configuration"))
    return "default"


def _binds(ctx: click.Context, opts: dict[str, Any]) -> tuple[tuple[str, ...], str]:
    """The app's addresses from --bind and uvicorn's --host/--port/--uds/--fd, or PORT."""
    binds = [translate_bind(b) for b in opts["bind"]]
    if opts["fd"] is not None:
        binds.append(f"fd:{opts['fd']}")
    if opts["uds"]:
        binds.append(f"unix:{opts['uds']}")
    if (opts["host"] is not None or opts["port"] is not None) and not (opts["uds"] or opts["fd"]):
        host = opts["host"] if opts["host"] is not None else "127.0.0.1"
        port = opts["port"] if opts["port"] is not None else 8000  # uvicorn's default port
        binds.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    given = [n for n in _BIND_PARAMS if ctx.get_parameter_source(n) is not ParameterSource.DEFAULT]
    if binds:
        return tuple(binds), ", ".join(f"--{n}: {_origin(ctx, n)}" for n in given)
    port_text = "" if started_by_master(os.environ) else os.environ.get("PORT", "")
    if port_text:
        if not port_text.isdigit() or int(port_text) > 65535:
            msg = f"PORT={port_text!r} is not a port number; set PORT to 1-65535 or pass --bind"
            raise click.UsageError(msg)
        return (f"0.0.0.0:{port_text}",), "environment (PORT)"
    return (DEFAULT_BIND,), "default"


@dataclass
class Resolved:
    """The effective configuration, with where each value came from."""

    config: RunConfig
    #: (long option name, value, origin), in --help order.
    rows: list[tuple[str, Any, str]]

    def describe(self) -> str:
        """TOML that [tool.tether] would accept, each line commented with its origin."""
        lines = [
            "# tether run: effective configuration (command line > environment > file > defaults)"
        ]
        for name, value, origin in self.rows:
            if value is None or value == ():
                lines.append(f"# {name}: not set  ({origin})")
                continue
            text = json.dumps(list(value) if isinstance(value, tuple) else value)
            lines.append(f"{name} = {text}  # {origin}")
        return "\n".join(lines)


def resolve(ctx: click.Context, opts: dict[str, Any]) -> Resolved:
    """A validated RunConfig from click's parsed options (every source already merged)."""
    app = opts["app"]
    if not app:
        msg = (
            "missing APP: give module:attribute (for example main:app), "
            "or app in [tool.tether] or $TETHER_APP"
        )
        raise click.UsageError(msg)
    debug_token = opts["debug_token"]
    if opts["debug_token_file"] is not None:
        if ctx.get_parameter_source("debug_token") is ParameterSource.COMMANDLINE:
            msg = "give the debug token one way: --debug-token or --debug-token-file"
            raise ConfigError(msg)
        debug_token = read_token_file(opts["debug_token_file"])
    binds, bind_origin = _binds(ctx, opts)
    check_ws_available(opts["ws"])
    http_by_class = opts["worker_class"] is not None and (
        worker_class_http(opts["worker_class"]) == "h11"
        and ctx.get_parameter_source("http") is ParameterSource.DEFAULT
    )
    if http_by_class:
        opts["http"] = "h11"
    http_names = {f.name for f in dataclasses.fields(HttpOptions)}
    run_names = {f.name for f in dataclasses.fields(RunConfig)} - {"http", "binds"}
    try:
        http = HttpOptions(
            headers=tuple(parse_header(h) for h in opts["headers"]),
            **{k: v for k, v in opts.items() if k in http_names and k != "headers"},
        )
        config = RunConfig(
            app=app,
            binds=binds,
            debug_bind=None if opts["no_debug"] else opts["debug_bind"],
            debug_token=debug_token,
            python_config=ctx.meta.get(_PYCONFIG),
            http=http,
            **{
                k: v
                for k, v in opts.items()
                if k in run_names and k not in ("debug_bind", "debug_token", "app")
            },
        )
    except ConfigError as exc:
        raise _with_origin(ctx, exc) from exc.__cause__
    rows: list[tuple[str, Any, str]] = [("app", app, _origin(ctx, "app"))]
    rows.append(("bind", binds, bind_origin))
    for param in ctx.command.params:
        name = param.name
        if name is None or name in _NOT_FROM_SOURCES or name in (*_BIND_PARAMS, "app"):
            continue
        origin = "--worker-class" if name == "http" and http_by_class else _origin(ctx, name)
        rows.append((_long_names(param)[0], opts[name], origin))
    if debug_token:
        rows.append(("debug-token", "(set; not shown)", _origin(ctx, "debug_token")))
    if opts["ssl_keyfile_password"]:
        rows.append(
            ("ssl-keyfile-password", "(set; not shown)", _origin(ctx, "ssl_keyfile_password"))
        )
    return Resolved(config, rows)


def _with_origin(ctx: click.Context, exc: ConfigError) -> ConfigError:
    """The same error, saying where the bad value came from if not the command line."""
    flag = str(exc).split(" ", 1)[0].rstrip(":")
    for param in ctx.command.params:
        if param.name and f"--{_long_names(param)[0]}" == flag:
            origin = _origin(ctx, param.name)
            if origin not in ("command line", "default"):
                return ConfigError(f"{exc} (set in {origin})")
    return exc


def load_env_file(path: str) -> None:
    """uvicorn's --env-file: dotenv variables into this process's environment (set ones win)."""
    try:
        from dotenv import load_dotenv
    except ImportError:
        msg = f"--env-file {path} needs python-dotenv; `pip install python-dotenv`"
        raise ConfigError(msg) from None
    load_dotenv(path)
