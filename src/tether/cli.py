"""The ``tether`` command: the only place that turns outcomes into exit codes.

Exit codes (DESIGN.md): 0 stopped cleanly, 1 a member failed while running,
2 usage or configuration error, 3 the app failed to start, 4 stopped but work
was abandoned at the deadline.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

import click

from tether import _init
from tether._pidfile import PidFile
from tether.config import (
    DEBUG_TOKEN_ENV,
    DEFAULT_BIND,
    DEFAULT_DEBUG_BIND,
    RunConfig,
    read_token_file,
)
from tether.errors import ConfigError, ShutdownAbandoned, TetherError

__all__ = ["exit_code_for", "main"]

logger = logging.getLogger("tether")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_START, EXIT_ABANDONED = 0, 1, 2, 3, 4


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


#: When a run ends with several problems, the most serious decides the exit code.
_PRECEDENCE = (EXIT_USAGE, EXIT_START, EXIT_FAILED, EXIT_ABANDONED)


def exit_code_for(exc: BaseException) -> int:
    """The exit code for how a run ended: each error's ``exit_code``; the most serious wins."""
    codes = {
        leaf.exit_code if isinstance(leaf, TetherError) else EXIT_FAILED for leaf in _leaves(exc)
    }
    return next((code for code in _PRECEDENCE if code in codes), EXIT_FAILED)


def _summary(exc: BaseException) -> str:
    leaves = list(_leaves(exc))
    first = next((e for e in leaves if not isinstance(e, ShutdownAbandoned)), leaves[0])
    text = str(first) if isinstance(first, TetherError) else f"{type(first).__name__}: {first}"
    notes = getattr(first, "__notes__", [])
    if notes:
        text = f"{text} ({'; '.join(notes)})"
    more = len(leaves) - 1
    return text + (f" (and {more} more problem(s), logged above)" if more else "")


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _hard_stop() -> None:
    """Last resort when the event loop cannot be reached: dump threads and leave with code 4."""
    from tether.debug import format_thread_dump, thread_dump

    sys.stderr.write(
        "tether: the shutdown deadline passed long ago and the event loop does not answer "
        "(blocked in code that cannot be cancelled); exiting. Threads:"
        f"{format_thread_dump(thread_dump())}\n"
    )
    sys.stderr.flush()
    os._exit(EXIT_ABANDONED)


#: Signals whose default action would end (or suspend) a process that is still starting.
_STARTUP_SIGNALS = (
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGTTIN,
    signal.SIGTTOU,
)


def _hold_signals_while_starting() -> None:
    """Until the runtime installs its own handlers, these signals do nothing.

    Importing an app takes a while; a HUP from a deploy script, a USR1 from an
    operator or a TTIN meant for a master must not kill the process meanwhile.
    The runtime's handlers replace these (and put them back when it returns).
    """
    for signum in _STARTUP_SIGNALS:
        signal.signal(signum, _ignore_while_starting)


def _ignore_while_starting(_signum: int, _frame: object) -> None:
    """Nothing to do yet: the process is not serving, so there is nothing to reload or dump."""


def _run(config: RunConfig) -> int:
    """Run either process model; the one place a run's outcome becomes an exit code."""
    try:
        if config.workers == 0:
            _run_single(config)
        else:
            from tether.master import run_master

            run_master(config)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        code = exit_code_for(exc)
        if code == EXIT_FAILED:
            for leaf in _leaves(exc):
                if not isinstance(leaf, TetherError):
                    logger.error("a member failed", exc_info=leaf)  # noqa: TRY400
        click.echo(f"tether: error: {_summary(exc)}", err=True)
        return code
    logger.info("stopped cleanly")
    return EXIT_OK


def _run_single(config: RunConfig) -> None:
    import uvloop

    from tether.runtime import Service

    # A reload (HUP) starts this same command again, from the same directory.
    argv = [sys.executable, "-m", "tether", *sys.argv[1:]]
    service = Service(config, hard_stop=_hard_stop, argv=argv)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(service.run())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tether")
def main() -> None:
    """tether: run a service's parts together, stop them together, lose nothing."""


@main.command()
@click.argument("app")
@click.option(
    "--bind",
    "binds",
    multiple=True,
    metavar="ADDR",
    help=f"Serve the app on ADDR: HOST:PORT, [IPV6]:PORT or unix:PATH. Repeatable. "
    f"[default: {DEFAULT_BIND}]",
)
@click.option(
    "--debug-bind",
    default=DEFAULT_DEBUG_BIND,
    show_default=True,
    metavar="ADDR",
    help="Serve the debug server (health, readiness, metrics, dumps) on ADDR.",
)
@click.option("--no-debug", is_flag=True, help="Run without the debug server.")
@click.option(
    "--debug-token",
    envvar=DEBUG_TOKEN_ENV,
    metavar="TOKEN",
    help="Require TOKEN on /debug/* (needed for a non-loopback --debug-bind). "
    "Visible to local users in the process list: prefer --debug-token-file or "
    f"${DEBUG_TOKEN_ENV}, which is read and removed from the app's environment.",
)
@click.option(
    "--debug-token-file",
    metavar="PATH",
    help="Read the debug token from PATH once at start (mode 600 or 640; "
    "for example a mounted secret).",
)
@click.option(
    "--graceful-timeout",
    type=float,
    default=30.0,
    show_default=True,
    metavar="S",
    help="Budget in seconds for the whole graceful shutdown; then cancel and report.",
)
@click.option(
    "--drain-delay",
    type=float,
    default=0.0,
    show_default=True,
    metavar="S",
    help="Seconds /readyz answers 503 before the listeners close (for load balancers).",
)
@click.option(
    "--idle-grace",
    type=float,
    default=0.5,
    show_default=True,
    metavar="S",
    help="While draining, how long an idle keep-alive connection may still send a request.",
)
@click.option(
    "--interface",
    type=click.Choice(["auto", "asgi", "wsgi"]),
    default="auto",
    show_default=True,
    help="How to call APP; auto looks at its signature.",
)
@click.option(
    "--app-dir",
    default=".",
    show_default=True,
    metavar="DIR",
    help="Directory to import APP from (put first on sys.path).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
)
@click.option(
    "--workers",
    type=int,
    default=1,
    show_default=True,
    help="0 runs one process; N >= 1 runs a master that holds the sockets and N workers.",
)
@click.option(
    "--reload-timeout",
    type=float,
    default=60.0,
    show_default=True,
    metavar="S",
    help="Seconds a new worker generation has to become ready on reload (HUP).",
)
@click.option(
    "--watchdog-timeout",
    type=float,
    default=30.0,
    show_default=True,
    metavar="S",
    help="Seconds without a heartbeat from a worker's event loop before it is replaced.",
)
@click.option(
    "--threads",
    type=int,
    default=10,
    show_default=True,
    metavar="N",
    help="Threads per process that run a WSGI app's requests (how many run at once).",
)
@click.option(
    "--gc-freeze/--no-gc-freeze",
    default=True,
    show_default=True,
    help="Once the app has started, freeze the objects it made (gc.freeze) so the "
    "garbage collector stops rescanning them on every collection.",
)
@click.option(
    "--pidfile",
    metavar="PATH",
    help="Write the pid to signal to PATH: the master, or with --workers 0 the serving "
    "process. Refuses to start while PATH names a live process.",
)
@click.option(
    "--control",
    metavar="PATH",
    help="Unix socket for `tether ctl` (reload, upgrade, stop, scale, status).",
)
def run(
    app: str,
    binds: tuple[str, ...],
    debug_bind: str,
    no_debug: bool,
    debug_token: str | None,
    debug_token_file: str | None,
    graceful_timeout: float,
    drain_delay: float,
    idle_grace: float,
    interface: Any,
    app_dir: str,
    log_level: str,
    workers: int,
    reload_timeout: float,
    watchdog_timeout: float,
    gc_freeze: bool,
    threads: int,
    pidfile: str | None,
    control: str | None,
) -> None:
    """Run APP (module:attribute) until stopped; see the README for signals and exit codes."""
    _setup_logging(log_level)
    token_source = click.get_current_context().get_parameter_source("debug_token")
    # The app and its workers never see the token; successors get it from successor_env().
    os.environ.pop(DEBUG_TOKEN_ENV, None)
    pidfile_claim: PidFile | None = None
    try:
        if debug_token_file is not None:
            if token_source is click.core.ParameterSource.COMMANDLINE:
                msg = "give the debug token one way: --debug-token or --debug-token-file"
                raise ConfigError(msg)
            debug_token = read_token_file(debug_token_file)
        config = RunConfig(
            app=app,
            binds=binds or (DEFAULT_BIND,),
            debug_bind=None if no_debug else debug_bind,
            debug_token=debug_token,
            graceful_timeout=graceful_timeout,
            drain_delay=drain_delay,
            idle_grace=idle_grace,
            interface=interface,
            app_dir=app_dir,
            log_level=log_level,
            workers=workers,
            reload_timeout=reload_timeout,
            watchdog_timeout=watchdog_timeout,
            gc_freeze=gc_freeze,
            threads=threads,
            pidfile=pidfile,
            control=control,
        )
        if os.getpid() == 1 and (code := _init.become_init()) is not None:
            pass  # this was PID 1, the init around the service; see tether._init
        else:
            if pidfile is not None:
                pidfile_claim = PidFile.claim(pidfile)
            _hold_signals_while_starting()
            code = _run(config)
    except TetherError as exc:
        click.echo(f"tether: error: {exc}", err=True)
        code = exit_code_for(exc)
    finally:
        if pidfile_claim is not None:
            pidfile_claim.release()
    sys.exit(code)


from tether.ctl import ctl  # noqa: E402  (the master's control client)

main.add_command(ctl)
