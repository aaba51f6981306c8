"""Small pieces of the master that need no state: worker command line and
environment, the pidfile, systemd notifications, the working directory.

Kept apart from ``master.py`` so that file reads as the lifecycle only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence

from tether.config import RunConfig
from tether.notify import Notifier

__all__ = [
    "WORKER_PROGRAM",
    "SystemdLink",
    "logical_cwd",
    "remove_pidfile",
    "upgrade_argv",
    "worker_argv",
    "worker_base_env",
    "write_pidfile",
]

log = logging.getLogger("tether.master")

#: How a worker is started; the rest of the command line is ``worker_argv``.
WORKER_PROGRAM: tuple[str, ...] = (sys.executable, "-m", "tether")

#: Variables that describe *this* process's place in a tree of processes;
#: a child gets its own values (or none), never ours.
_PRIVATE_VARS = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "TETHER_PARENT_FD",
    "TETHER_PARENT_PID",
    "TETHER_UPGRADE_FROM",
    "TETHER_SYSTEMD_NOTIFY_SOCKET",
    "TETHER_WORKER_ID",
    "TETHER_GENERATION",
)


def worker_argv(
    config: RunConfig, debug_path: str | None, program: Sequence[str] = WORKER_PROGRAM
) -> list[str]:
    """The command line of a worker: the single-process runtime on inherited sockets.

    No ``--bind``: the sockets arrive by LISTEN_FDS. No drain delay: the
    master holds readiness for the whole service and applies the delay itself.
    """
    argv = [*program, "run", config.app, "--workers", "0"]
    argv += ["--debug-bind", f"unix:{debug_path}"] if debug_path else ["--no-debug"]
    argv += ["--graceful-timeout", repr(config.graceful_timeout), "--drain-delay", "0"]
    argv += ["--idle-grace", repr(config.idle_grace), "--threads", str(config.threads)]
    argv += ["--interface", config.interface, "--app-dir", config.app_dir]
    argv += ["--log-level", config.log_level]
    return argv


def worker_base_env(environ: Mapping[str, str], config: RunConfig) -> dict[str, str]:
    """The environment every worker starts from (per-worker values are added at spawn)."""
    env = {k: v for k, v in environ.items() if k not in _PRIVATE_VARS}
    env["WATCHDOG_USEC"] = str(int(config.watchdog_timeout * 1_000_000))
    return env


def upgrade_argv() -> list[str]:
    """The command line that started this master, to start its successor the same way."""
    return [sys.executable, *sys.orig_argv[1:]]


def logical_cwd() -> str:
    """The working directory as the user named it (``$PWD`` if it is the same place).

    Deploys often switch a ``current`` symlink; a successor started in the
    logical path sees the new release, one started in the resolved path would
    keep the old one.
    """
    real = os.getcwd()
    pwd = os.environ.get("PWD", "")
    if pwd and os.path.isabs(pwd):
        with contextlib.suppress(OSError):
            if os.path.samefile(pwd, real):
                return pwd
    return real


def write_pidfile(path: str, pid: int) -> None:
    """Write ``pid`` to ``path`` atomically (readers never see a partial file)."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{pid}.tmp")
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{pid}\n")
    os.replace(tmp, path)


def remove_pidfile(path: str, pid: int) -> None:
    """Remove the pidfile if it still names ``pid`` (a successor may own it now)."""
    with contextlib.suppress(OSError, ValueError):
        with open(path, encoding="ascii") as f:
            owner = int(f.read().strip() or "0")
        if owner == pid:
            os.unlink(path)


class SystemdLink:
    """Notifications from the master to its supervisor (systemd), if there is one."""

    def __init__(self, notifier: Notifier | None) -> None:
        self.notifier = notifier

    def send(self, *assignments: str) -> None:
        if self.notifier is not None:
            self.notifier.send(*assignments)

    def ready(self, status: str, mainpid: int | None = None) -> None:
        extra = [f"MAINPID={mainpid}"] if mainpid is not None else []
        self.send(*extra, "READY=1", f"STATUS={status}")

    def reloading(self, status: str) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def close(self) -> None:
        if self.notifier is not None:
            self.notifier.close()
