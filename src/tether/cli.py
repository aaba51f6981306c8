"""The ``tether`` command: its options, read from every source, and errors in them.

What ``tether run`` does with the resolved options, and the exit code it ends
with, is :mod:`tether._runner`'s (a worker its master forked or prestarted
goes there directly, never through this module). Usage errors end here with
exit code 2, on one line.

Why this module is long: about 460 of its lines are the option declarations of ``tether
run`` (the table the README mirrors), data rather than logic; the logic around them is
short.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from tether._configsources import (
    apply_env,
    check_env,
    check_worker_class,
    load_sources,
    resolve,
)
from tether._runner import EXIT_OK, exit_code_for, forget_secrets, start
from tether.config import (
    DEBUG_TOKEN_ENV,
    DEFAULT_BIND,
    DEFAULT_DEBUG_BIND,
    SSL_PASSWORD_ENV,
)
from tether.errors import TetherError

__all__ = ["exit_code_for", "main"]

F = TypeVar("F", bound=Callable[..., Any])

RUN_EPILOG = (
    "Every option can also come from the environment as TETHER_<OPTION> (dashes as "
    "underscores, for example TETHER_WORKERS=4), and from [tool.tether] in ./pyproject.toml "
    "or --config FILE (keys are the long option names; a .py file or python:MODULE is a "
    "gunicorn config, with gunicorn's setting names and server hooks). The command line "
    "wins over the "
    "environment, which wins over the file. WEB_CONCURRENCY sets --workers and PORT serves "
    "on 0.0.0.0:$PORT when no address is given, as in the rest of the ecosystem."
)


def _opt(*decls: str, **attrs: Any) -> Callable[[F], F]:
    attrs.setdefault("show_default", "default" in attrs and not attrs.get("is_flag"))
    return click.option(*decls, **attrs)


def _secs(flag: str, default: float, text: str, *more: str) -> Callable[[F], F]:
    return _opt(flag, *more, type=float, default=default, show_default=True, metavar="S", help=text)


#: Every option of `tether run`, in the order `--help` shows them. The parameter names
#: are RunConfig's (or HttpOptions') field names; config.RunConfig validates the values.
RUN_OPTIONS: list[Callable[[F], F]] = [
    # -- where to serve ------------------------------------------------------------
    _opt(
        "--bind",
        "-b",
        multiple=True,
        metavar="ADDR",
        help=f"Serve the app on ADDR: HOST:PORT, [IPV6]:PORT, unix:PATH or fd:N; as in gunicorn, "
        f"HOST alone is HOST:8000 and :PORT every address. Repeatable. "
        f"[default: {DEFAULT_BIND}, or 0.0.0.0:$PORT when PORT is set]",
    ),
    _opt(
        "--host",
        metavar="HOST",
        help="uvicorn's: serve on HOST:--port (default port 8000, as uvicorn's). Adds to --bind.",
    ),
    _opt(
        "--port",
        type=int,
        metavar="PORT",
        help="uvicorn's: serve on --host:PORT (default host 127.0.0.1).",
    ),
    _opt("--uds", metavar="PATH", help="uvicorn's: serve on the unix socket PATH (unix:PATH)."),
    _opt(
        "--fd",
        type=int,
        metavar="N",
        help="uvicorn's: serve on the listening socket inherited on descriptor N (fd:N).",
    ),
    _opt(
        "--debug-bind",
        default=DEFAULT_DEBUG_BIND,
        metavar="ADDR",
        help="Serve the debug server (health, readiness, metrics, dumps) on ADDR.",
    ),
    _opt("--no-debug", is_flag=True, help="Run without the debug server."),
    _opt(
        "--debug-token",
        envvar=DEBUG_TOKEN_ENV,
        metavar="TOKEN",
        help="Require TOKEN on /debug/* (needed for a non-loopback --debug-bind). "
        "Visible to local users in the process list: prefer --debug-token-file or "
        f"${DEBUG_TOKEN_ENV}, which is read and removed from the app's environment.",
    ),
    _opt(
        "--debug-token-file",
        metavar="PATH",
        help="Read the debug token from PATH once at start (mode 600 or 640; "
        "for example a mounted secret).",
    ),
    _opt(
        "--debug-allowed-hosts",
        default="",
        metavar="HOSTS",
        help="Host names (comma-separated; .domain for a domain, * for any) whose requests the "
        "debug server answers on /metrics and /debug/*, besides IP addresses and localhost.",
    ),
    # -- processes and shutdown ------------------------------------------------------
    _opt(
        "--workers",
        "-w",
        type=int,
        default=1,
        help="0 runs one process; N >= 1 runs a master that holds the sockets and N workers. "
        "Also read from $WEB_CONCURRENCY.",
    ),
    _secs(
        "--graceful-timeout",
        30.0,
        "Budget in seconds for the whole graceful shutdown; then cancel and report. "
        "--timeout-graceful-shutdown is uvicorn's name for it (uvicorn's default: no limit).",
        "--timeout-graceful-shutdown",
    ),
    _secs(
        "--drain-delay",
        0.0,
        "Seconds /readyz answers 503 before the listeners close (for load balancers).",
    ),
    _secs(
        "--idle-grace",
        0.5,
        "While draining, how long an idle keep-alive connection may still send a request.",
    ),
    _secs(
        "--timeout-request-head",
        10.0,
        "Seconds a connection has to send a whole request head, from its accept or the head's "
        "first byte; then 408 and closed (uvicorn: no limit). The body is not timed.",
    ),
    _secs(
        "--reload-timeout",
        60.0,
        "Seconds a new worker generation has to become ready on reload (HUP).",
    ),
    _secs(
        "--watchdog-timeout",
        30.0,
        "Seconds without a heartbeat from a worker's event loop before it is replaced "
        "(--timeout-worker-healthcheck is uvicorn's name, -t/--timeout gunicorn's).",
        "--timeout-worker-healthcheck",
        "--timeout",
        "-t",
    ),
    _secs(
        "--blocked-loop-threshold",
        0.3,
        "Log a serving event loop blocked this many seconds, with its stack, while it is "
        "blocked (0: off).",
    ),
    _opt(
        "--threads",
        type=int,
        default=10,
        metavar="N",
        help="Threads per process that run a WSGI app's requests (how many run at once).",
    ),
    _opt(
        "--limit-max-requests",
        type=int,
        metavar="N",
        help="A serving process stops gracefully after N responses (a master replaces its worker).",
    ),
    _opt(
        "--limit-max-requests-jitter",
        type=int,
        default=0,
        metavar="N",
        help="Add 0..N at random to --limit-max-requests, per process.",
    ),
    _opt(
        "--reload",
        is_flag=True,
        help="Development: reload when a file under the app's directory changes. The new "
        "code serves once it starts; a save that fails keeps the last good code serving.",
    ),
    _opt(
        "--reload-dir",
        "reload_dirs",
        multiple=True,
        metavar="DIR",
        help="Watch DIR for --reload (repeatable). [default: --app-dir]",
    ),
    _opt(
        "--reload-include",
        "reload_includes",
        multiple=True,
        metavar="GLOB",
        help="A change counts if its file name matches GLOB (repeatable). [default: *.py]",
    ),
    _opt(
        "--reload-exclude",
        "reload_excludes",
        multiple=True,
        metavar="GLOB",
        help="Changes to names matching GLOB never count (repeatable; hidden files, bytecode "
        "and editors' swap files never do).",
    ),
    _opt(
        "--max-requests",
        type=int,
        metavar="N",
        help="After N responses a process is recycled: a fresh one starts, and the old one "
        "drains once the new one is READY (gunicorn's option; no request fails).",
    ),
    _opt(
        "--max-requests-jitter",
        type=int,
        default=0,
        metavar="N",
        help="Add 0..N at random to --max-requests, per process, so workers recycle apart.",
    ),
    _opt(
        "--max-worker-memory",
        type=int,
        metavar="MIB",
        help="A process whose resident memory (RSS) passes MIB mebibytes is recycled as "
        "--max-requests does: it stops taking requests, a fresh one takes over.",
    ),
    _opt(
        "--gc-freeze/--no-gc-freeze",
        default=True,
        show_default=True,
        help="Once the app has started, freeze the objects it made (gc.freeze) so the "
        "garbage collector stops rescanning them on every collection.",
    ),
    _opt(
        "--app-metrics/--no-app-metrics",
        default=True,
        show_default=True,
        help="Serve the app's prometheus_client metrics on /metrics beside tether's; under a "
        "master, summed over the workers (multiprocess mode, set up by tether).",
    ),
    _opt(
        "--pidfile",
        "--pid",
        "-p",
        metavar="PATH",
        help="Write the pid to signal to PATH: the master, or with --workers 0 the serving "
        "process. Refuses to start while PATH names a live process.",
    ),
    _opt(
        "--control",
        metavar="PATH",
        help="Unix socket for `tether ctl` (reload, upgrade, stop, scale, status).",
    ),
    # -- the app -------------------------------------------------------------------
    _opt(
        "--interface",
        type=click.Choice(["auto", "asgi", "asgi3", "asgi2", "wsgi"]),
        default="auto",
        help="How to call APP; auto reads its signature (asgi3 = asgi).",
    ),
    _opt(
        "--factory",
        is_flag=True,
        help="Call APP to get the app (factories are also recognised without it).",
    ),
    _opt(
        "--app-dir",
        default=".",
        metavar="DIR",
        help="Directory to import APP from (put first on sys.path).",
    ),
    _opt(
        "--lifespan",
        type=click.Choice(["auto", "on", "off"]),
        default="auto",
        help="The ASGI lifespan protocol: auto runs it if the app supports it; on requires it.",
    ),
    _opt(
        "--env-file",
        metavar="PATH",
        help="Load environment variables from the dotenv file PATH before importing APP.",
    ),
    _opt(
        "--env",
        "-e",
        multiple=True,
        metavar="NAME=VALUE",
        callback=check_env,
        help="gunicorn's: set NAME=VALUE in the environment of the app (every worker). Repeatable.",
    ),
    _opt(
        "--worker-class",
        "-k",
        metavar="CLASS",
        callback=check_worker_class,
        help="gunicorn's: uvicorn.workers.UvicornWorker (UvicornH11Worker: --http h11), sync "
        "and gthread are accepted and mean what tether does; others are refused.",
    ),
    _opt(
        "--loop",
        type=click.Choice(["auto", "asyncio", "uvloop", "none"]),
        default="auto",
        help="The event loop: auto and uvloop use uvloop; asyncio and none the stdlib's.",
    ),
    # -- HTTP ------------------------------------------------------------------------
    _opt(
        "--http",
        type=click.Choice(["auto", "h11", "httptools"]),
        default="auto",
        help="The HTTP/1.1 parser (auto prefers httptools).",
    ),
    _opt(
        "--timeout-keep-alive",
        type=int,
        default=5,
        metavar="S",
        help="Close an idle keep-alive connection after S seconds. Behind a load balancer, "
        "make it longer than the balancer's idle timeout (AWS ALB: 60).",
    ),
    _opt(
        "--proxy-headers/--no-proxy-headers",
        default=True,
        show_default=True,
        help="Take the client address and scheme from X-Forwarded-For/-Proto, only when "
        "the peer is in --forwarded-allow-ips.",
    ),
    _opt(
        "--forwarded-allow-ips",
        default="127.0.0.1,::1",
        metavar="IPS",
        help="Comma-separated addresses and networks (CIDRs) trusted with proxy headers; "
        "* trusts every peer. Also read from $FORWARDED_ALLOW_IPS.",
    ),
    _opt(
        "--root-path",
        default="",
        metavar="PATH",
        help="The ASGI root_path, for an app mounted below a URL prefix.",
    ),
    _opt(
        "--limit-concurrency",
        type=int,
        metavar="N",
        help="Answer 503 to requests beyond N open connections or running requests.",
    ),
    _opt(
        "--backlog",
        type=int,
        default=2048,
        metavar="N",
        help="How many connections the kernel queues before they are accepted.",
    ),
    _opt(
        "--header",
        "headers",
        multiple=True,
        metavar="NAME:VALUE",
        help="Add this header to every response. Repeatable.",
    ),
    _opt(
        "--server-header/--no-server-header",
        default=True,
        show_default=True,
        help="Send `server: tether` (uvicorn sends `server: uvicorn`).",
    ),
    _opt(
        "--date-header/--no-date-header",
        default=True,
        show_default=True,
        help="Send the date header.",
    ),
    _opt(
        "--h11-max-incomplete-event-size",
        type=int,
        metavar="BYTES",
        help="With --http h11, the most bytes buffered for an incomplete request head.",
    ),
    _opt(
        "--reset-contextvars", is_flag=True, help="Run each request in a fresh contextvars.Context."
    ),
    # -- TLS -------------------------------------------------------------------------
    _opt("--ssl-certfile", metavar="PATH", help="Serve https with this certificate (PEM)."),
    _opt("--ssl-keyfile", metavar="PATH", help="The certificate's private key (PEM)."),
    _opt(
        "--ssl-keyfile-password",
        envvar=SSL_PASSWORD_ENV,
        metavar="TEXT",
        help=f"The private key's password (prefer ${SSL_PASSWORD_ENV}: a command line "
        "is visible to local users).",
    ),
    _opt(
        "--ssl-version",
        type=int,
        default=17,
        metavar="N",
        help="The ssl module's protocol constant (17 = PROTOCOL_TLS_SERVER).",
    ),
    _opt(
        "--ssl-cert-reqs",
        type=int,
        default=0,
        metavar="N",
        help="Client certificates: 0 none, 1 optional, 2 required (ssl.CERT_*).",
    ),
    _opt("--ssl-ca-certs", metavar="PATH", help="CA certificates to verify clients against."),
    _opt("--ssl-ciphers", metavar="TEXT", help="OpenSSL cipher list (default: OpenSSL's)."),
    # -- websockets ------------------------------------------------------------------
    _opt(
        "--ws",
        type=click.Choice(["auto", "none", "websockets", "websockets-sansio", "wsproto"]),
        default="auto",
        help="The websocket implementation; none refuses websockets.",
    ),
    _opt(
        "--ws-max-size",
        type=int,
        default=16777216,
        metavar="BYTES",
        help="The largest websocket message accepted.",
    ),
    _opt(
        "--ws-max-queue",
        type=int,
        default=32,
        metavar="N",
        help="Websocket messages queued before reading pauses.",
    ),
    _opt(
        "--ws-ping-interval",
        type=float,
        default=20.0,
        metavar="S",
        help="Seconds between websocket pings.",
    ),
    _opt(
        "--ws-ping-timeout",
        type=float,
        default=20.0,
        metavar="S",
        help="Seconds to wait for a pong before closing.",
    ),
    _opt(
        "--ws-per-message-deflate",
        type=bool,
        default=True,
        metavar="BOOLEAN",
        help="Websocket per-message compression (true or false).",
    ),
    # -- logging ---------------------------------------------------------------------
    _opt(
        "--log-level",
        type=click.Choice(["critical", "error", "warning", "info", "debug", "trace"]),
        default="info",
    ),
    _opt(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        help="Every record as a text line, or as one JSON object per line (time, level, "
        "logger, message, pid; access records also method, path, status, duration_ms, client).",
    ),
    _opt(
        "--log-config",
        metavar="PATH",
        help="Logging configuration for every record, the access log included: dictConfig "
        "as .json or .yaml (PyYAML), or fileConfig .ini; it decides formats and levels.",
    ),
    _opt(
        "--access-log/--no-access-log",
        default=True,
        show_default=True,
        help="One record per response, after it, with its duration (logger tether.access).",
    ),
    _opt(
        "--access-logformat",
        metavar="FORMAT",
        help="The access line in gunicorn's atoms, for example "
        "'%(h)s \"%(r)s\" %(s)s %(b)s %(M)sms'. [default: '%(h)s \"%(r)s\" %(s)s %(b)s %(L)ss']",
    ),
    _opt(
        "--use-colors/--no-use-colors",
        default=None,
        help="Accepted for uvicorn command lines; tether's log has no colours.",
    ),
    # -- configuration ---------------------------------------------------------------
    _opt(
        "--config",
        "-c",
        metavar="PATH",
        envvar="TETHER_CONFIG",
        is_eager=True,
        callback=load_sources,
        expose_value=False,
        help="Read options from this TOML file (keys are long option names, at the top or "
        "under [tool.tether]), or from a gunicorn config (a .py file or python:MODULE: "
        "gunicorn's setting names, and its server hooks). "
        "[default: [tool.tether] in ./pyproject.toml]",
    ),
    _opt(
        "--print-config",
        is_flag=True,
        help="Print the effective configuration and where each value came from, then exit.",
    ),
]


def run_options(fn: F) -> F:
    for decorate in reversed(RUN_OPTIONS):
        fn = decorate(fn)
    return fn


class _Tether(click.Group):
    """The command group, with usage errors on one line (exit 2), wherever the value came from.

    ``tether ctl`` is imported only when it runs (or ``--help`` lists it): ``tether run``,
    every worker included, never loads the control client.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "ctl"})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "ctl":
            from tether.ctl import ctl

            return ctl
        return super().get_command(ctx, cmd_name)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `tether`: the help, as is
                exc.show()
                sys.exit(exc.exit_code)
            hint = (
                " (tether run --help lists the options)"
                if isinstance(exc, click.UsageError)
                else ""
            )
            text = " ".join(exc.format_message().split())
            instead = _gunicorn_flag(exc)
            if instead is not None:
                text, hint = instead, ""
            click.echo(f"tether: error: {text}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            sys.exit(1)


def _gunicorn_flag(exc: click.ClickException) -> str | None:
    """For a gunicorn flag tether has no flag for: the line that says what tether does."""
    if not isinstance(exc, click.NoSuchOption):
        return None
    from tether._gunicorn import FLAGS_INSTEAD

    flag = exc.option_name.split("=", 1)[0]
    instead = FLAGS_INSTEAD.get(flag)
    return None if instead is None else f"{flag} is gunicorn's: {instead}"


@click.group(cls=_Tether, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tether")
def main() -> None:
    """tether: run a service's parts together, stop them together, lose nothing."""


@main.command(epilog=RUN_EPILOG)
@click.argument("app", required=False)
@run_options
def run(**opts: Any) -> None:
    """Run APP (module:attribute) until stopped; see the README for signals and exit codes."""
    ctx = click.get_current_context()
    # The app and its workers never see the secrets; successors get them from successor_env().
    forget_secrets()
    try:
        resolved = resolve(ctx, opts)
    except TetherError as exc:
        click.echo(f"tether: error: {exc}", err=True)
        sys.exit(exit_code_for(exc))
    if opts["print_config"]:
        click.echo(resolved.describe())
        sys.exit(EXIT_OK)
    apply_env(opts["env"])
    sys.exit(start(resolved.config))
