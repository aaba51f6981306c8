"""What ``tether run`` does once its options are resolved, and the exit code it ends with.

:mod:`tether.cli` reads the options (click, the config sources) and hands the
resolved :class:`~tether.config.RunConfig` here; so does a worker its master
forked or prestarted (:mod:`tether._forkstart`, :mod:`tether._prestart`),
which is handed the config its master resolved for it
(:meth:`RunConfig.for_worker`) and so never imports the command line's option
declarations or parses them: that is most of what the command line costs a
worker's start. Nothing here imports click.

Exit codes (DESIGN.md): 0 stopped cleanly, 1 a member failed while running,
2 usage or configuration error, 3 the app failed to start, 4 stopped but work
was abandoned at the deadline. This module and :mod:`tether.cli` (for errors
in the options themselves) are the only places outcomes become exit codes.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from typing import NoReturn

from tether import signals
from tether._pidfile import PidFile
from tether.config import DEBUG_TOKEN_ENV, SSL_PASSWORD_ENV, RunConfig
from tether.errors import ShutdownAbandoned, TetherError
from tether.errors import leaves as _leaves
from tether.logs import setup_logging
from tether.notify import KEEPER_LOGGING, KEEPER_PREFIX, Notifier
from tether.worker import WORKER_PROGRAM, keeps_pid

__all__ = [
    "EXIT_ABANDONED",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_START",
    "EXIT_USAGE",
    "exit_code_for",
    "forget_secrets",
    "run_worker",
    "start",
]

logger = logging.getLogger("tether")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_START, EXIT_ABANDONED = 0, 1, 2, 3, 4


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


def _hold_signals_while_starting() -> None:
    """Until the runtime installs its own handlers, these signals do nothing.

    Importing an app takes a while; a HUP from a deploy script, a USR1 from an
    operator or a TTIN meant for a master must not kill the process meanwhile.
    The runtime's handlers replace these (and put them back when it returns).
    """
    for signum in signals.HELD_WHILE_STARTING:
        signal.signal(signum, _ignore_while_starting)


def _ignore_while_starting(_signum: int, _frame: object) -> None:
    """Nothing to do yet: the process is not serving, so there is nothing to reload or dump."""


def _run(config: RunConfig) -> int:
    """Run either process model; the one place a run's outcome becomes an exit code."""
    try:
        if config.workers == 0:
            _run_single(config)
        else:
            _run_master(config)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        code = exit_code_for(exc)
        if code == EXIT_FAILED:
            for leaf in _leaves(exc):
                if not isinstance(leaf, TetherError):
                    logger.error("a member failed", exc_info=leaf)  # noqa: TRY400
        _say(f"tether: error: {_summary(exc)}")
        return code
    logger.info("stopped cleanly")
    return EXIT_OK


def _run_master(config: RunConfig) -> None:
    """Bind and spawn the first workers (tether._opening), then import and run the master.

    A gunicorn config's hooks run before the master binds (``on_starting``): then the
    master opens itself, after them.
    """
    from tether._opening import open_master

    opening = None
    if config.python_config is None:
        opening = open_master(config, program=WORKER_PROGRAM, forked=run_worker)
        # Its first workers may serve before the master's loop is up: a stop waits for it.
        signals.defer_stops()
    try:
        from tether.master import run_master

        run_master(config, opening)
    finally:
        if opening is not None:
            opening.close()  # what the master did not take over (it raised first)


def _run_single(config: RunConfig) -> None:
    import asyncio

    from tether import _prestart

    _prestart.discard()  # the command line said --workers N, a later source said 0

    from tether.runtime import Service

    # A reload (HUP) starts this same command again, from the same directory.
    argv = [sys.executable, "-m", "tether", *sys.argv[1:]]
    service = Service(config, hard_stop=_hard_stop, argv=argv)
    loop_factory = None
    if config.loop in ("auto", "uvloop"):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(service.run())


def forget_secrets() -> None:
    """Remove the debug token and the key's password from the environment the app will see.

    Their options have been read by now; successors get them from
    ``RunConfig.successor_env()``, workers the password as :func:`start` leaves it.
    """
    os.environ.pop(DEBUG_TOKEN_ENV, None)
    os.environ.pop(SSL_PASSWORD_ENV, None)


def start(config: RunConfig) -> int:
    """Run ``config`` here (one process or a master, the keeper first); the exit code."""
    pidfile_claim: PidFile | None = None
    try:
        # A --log-config may name handlers and filters of the app's own package.
        _importable(config.app_dir)
        setup_logging(config.log_level, config.log_format, config.log_config)
        _tell_keeper_logging(config)
        if keeps_pid(os.environ) and (code := _become_init()) is not None:
            return code  # this process kept its pid for the service, its child; see tether._init
        if config.pidfile is not None:
            pidfile_claim = PidFile.claim(config.pidfile)
        if config.workers == 0 and config.env_file is not None:
            from tether._configsources import load_env_file

            load_env_file(config.env_file)
        if config.workers > 0 and config.http.ssl_keyfile_password is not None:
            # Workers read it from here (the master never imports the app); each
            # worker removes it again before it imports the app.
            os.environ[SSL_PASSWORD_ENV] = config.http.ssl_keyfile_password
        _hold_signals_while_starting()
        return _run(config)
    except TetherError as exc:
        _say(f"tether: error: {exc}")
        return exit_code_for(exc)
    finally:
        if pidfile_claim is not None:
            pidfile_claim.release()


def run_worker(config: RunConfig) -> NoReturn:
    """A worker forked or prestarted by its master: ``config`` is what it would have parsed."""
    forget_secrets()
    sys.exit(start(config))


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _tell_keeper_logging(config: RunConfig) -> None:
    """A keeper forked before the options were read (tether._entry) logs as this process does."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address.startswith(KEEPER_PREFIX):
        return
    app_dir = os.path.abspath(config.app_dir)
    setup = [config.log_level, config.log_format, config.log_config or "", app_dir]
    with Notifier(address) as notifier:
        notifier.send(f"{KEEPER_LOGGING}={json.dumps(setup)}")


def _importable(app_dir: str) -> None:
    """Put the app's directory first on sys.path, as the app's import will (tether.app)."""
    path = os.path.abspath(app_dir)
    if path not in sys.path:
        sys.path.insert(0, path)


def _become_init() -> int | None:
    """Fork the keeper: see tether._init, imported only here."""
    from tether._init import become_init

    return become_init()
