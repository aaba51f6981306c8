"""The root of tether's error hierarchy, and the errors of running a service.

Every error tether raises on purpose derives from :class:`TetherError`.
The errors of running a service (configuration, binding, loading, starting,
abandoning work at the deadline) live here; each subsystem's own errors live
beside their code and derive from the same root: ``TrackerClosed``,
``TrackerFull`` and ``NoCurrentTracker`` (tracker), ``LeakError`` (leaks),
``WalkError`` (walk), ``MemberExitedEarly`` (group), all re-exported from
``tether``.

Errors subclass the stdlib error a caller would already catch where one fits
(``ValueError`` for bad configuration, ``RuntimeError`` for misuse), carry
their data as attributes, and say what happened and what to do about it.
The CLI maps each family to an exit code (see ``exit_code``); library code
only raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = [
    "AbandonedWork",
    "AppLoadError",
    "BindError",
    "ConfigError",
    "RuntimeDirError",
    "ShutdownAbandoned",
    "StartupError",
    "TetherError",
    "leaves",
]


class TetherError(Exception):
    """Base class of every error tether raises on purpose."""

    #: The process exit code the CLI uses when this error ends a run.
    exit_code: int = 1


class ConfigError(TetherError, ValueError):
    """Bad usage or configuration: a flag, an address, a value out of range."""

    exit_code = 2


class BindError(ConfigError):
    """A listening socket could not be created (port in use, missing directory...)."""

    def __init__(self, address: str, reason: str, hint: str) -> None:
        super().__init__(f"cannot bind {address}: {reason}; {hint}")
        self.address = address
        self.reason = reason


class RuntimeDirError(ConfigError):
    """tether could not make its private sockets: the temporary directory is unusable."""

    def __init__(self, directory: str, cause: OSError) -> None:
        reason = cause.strerror or str(cause)
        super().__init__(
            f"cannot create tether's private sockets in {directory}: {reason}; "
            "point TMPDIR (or XDG_RUNTIME_DIR) at a short, writable directory"
        )
        self.directory = directory
        self.reason = reason


class AppLoadError(TetherError):
    """The application could not be imported, or is not something tether can run."""

    exit_code = 3

    def __init__(self, target: str, message: str) -> None:
        super().__init__(message)
        self.target = target


class StartupError(TetherError):
    """The application was imported but failed to start (lifespan startup failed)."""

    exit_code = 3


@dataclass(frozen=True)
class AbandonedWork:
    """One piece of work that was still running when the shutdown deadline passed."""

    kind: str  #: "member", "request", "task", "lifespan", "thread"
    name: str
    stack: str = ""
    detail: str = ""

    def describe(self) -> str:
        """One line, for the log."""
        extra = f" ({self.detail})" if self.detail else ""
        return f"{self.kind} {self.name!r}{extra}"


@dataclass
class ShutdownAbandoned(TetherError):
    """The shutdown deadline passed with work still running; that work was abandoned."""

    items: list[AbandonedWork] = field(default_factory=list)
    exit_code = 4

    def __post_init__(self) -> None:
        names = ", ".join(item.describe() for item in self.items)
        super().__init__(f"shutdown deadline passed; abandoned {len(self.items)}: {names}")

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "shutdown deadline passed"


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """Every error inside ``exc``, exception groups unpacked."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc
