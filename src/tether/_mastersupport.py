"""Small pieces of the master that need no state: pidfile, systemd link, working directory.

Kept apart from ``master.py`` so that file reads as the lifecycle only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

from tether.notify import Notifier

__all__ = [
    "SystemdLink",
    "logical_cwd",
    "remove_pidfile",
    "upgrade_argv",
    "write_pidfile",
]

log = logging.getLogger("tether.master")


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
