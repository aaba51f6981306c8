"""The options of ``tether run``, in one validated object.

Both process modes read the same object: the single-process runtime
(``--workers 0``, and every worker a master starts) and the master. Values are
checked once, here, so that a bad flag fails before anything is bound or
started, with one line that names the flag and the fix.
"""

from __future__ import annotations

import dataclasses
import math
import os
import stat
from dataclasses import dataclass, field
from typing import Literal

from tether.errors import ConfigError

__all__ = ["DEBUG_TOKEN_ENV", "RunConfig", "ShutdownBudget", "check_timeout", "read_token_file"]

Interface = Literal["auto", "asgi", "wsgi"]

#: Where the debug token may come from; removed from the environment the app sees.
DEBUG_TOKEN_ENV = "TETHER_DEBUG_TOKEN"

DEFAULT_BIND = "127.0.0.1:8080"
DEFAULT_DEBUG_BIND = "127.0.0.1:8001"


def check_timeout(flag: str, value: float, *, allow_zero: bool = True) -> float:
    """Return ``value`` if it is a usable number of seconds, else raise a ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"{flag} must be a number of seconds, got {value!r}"
        raise ConfigError(msg)
    if math.isnan(value) or math.isinf(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        msg = f"{flag} must be a number of seconds {bound}, got {value!r}"
        raise ConfigError(msg)
    return float(value)


@dataclass(frozen=True)
class RunConfig:
    """Everything ``tether run`` was asked to do. Defaults match the CLI's."""

    #: ``module:attr`` naming an ASGI app, a WSGI app, a tether ``App`` or a factory of one.
    app: str
    #: Addresses to serve the app on: ``HOST:PORT``, ``[IPV6]:PORT`` or ``unix:PATH``.
    binds: tuple[str, ...] = (DEFAULT_BIND,)
    #: Address of the debug server, or None for no debug server.
    debug_bind: str | None = DEFAULT_DEBUG_BIND
    #: Token required on ``/debug/*`` (mandatory when the debug bind is not loopback).
    debug_token: str | None = None
    #: The whole shutdown budget, phases 2 to 6, in seconds.
    graceful_timeout: float = 30.0
    #: Seconds ``/readyz`` answers 503 before the listeners close.
    drain_delay: float = 0.0
    #: How an idle keep-alive connection is given before it is closed during a drain.
    idle_grace: float = 0.5
    #: After the deadline: seconds cancelled work gets to unwind before it is reported abandoned.
    cancel_timeout: float = 2.0
    interface: Interface = "auto"
    #: Directory put first on ``sys.path`` (the current directory by default).
    app_dir: str = "."
    log_level: str = "info"
    #: Process model: 0 = one process; N >= 1 = a master and N workers.
    workers: int = 0
    reload_timeout: float = 60.0
    watchdog_timeout: float = 30.0
    #: Threads a WSGI app's requests run in, per process (a2wsgi's pool).
    threads: int = 10
    pidfile: str | None = None
    control: str | None = None
    #: Freeze what startup made (``gc.freeze``) so the collector stops rescanning it.
    gc_freeze: bool = True
    #: Extra data for modes that need it (kept out of the flag surface).
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_timeout("--graceful-timeout", self.graceful_timeout)
        check_timeout("--drain-delay", self.drain_delay)
        check_timeout("--reload-timeout", self.reload_timeout, allow_zero=False)
        check_timeout("--watchdog-timeout", self.watchdog_timeout, allow_zero=False)
        check_timeout("--idle-grace", self.idle_grace)
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
        if self.interface not in ("auto", "asgi", "wsgi"):
            msg = f"--interface must be auto, asgi or wsgi, got {self.interface!r}"
            raise ConfigError(msg)
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
        return {DEBUG_TOKEN_ENV: self.debug_token} if self.debug_token else {}

    def replace(self, **changes: object) -> RunConfig:
        """A copy with some options changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


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
    graceful period); every other bound is an offset from it, in this order,
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
