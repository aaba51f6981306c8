"""What the master keeps outside its parts: its systemd link and its command line.

Its runtime directory and working directory are made before its event loop,
in :mod:`tether._opening`, with its first workers.
"""

from __future__ import annotations

import sys
import time

from tether.notify import Notifier

__all__ = ["SystemdLink", "upgrade_argv"]


def upgrade_argv() -> list[str]:
    """The command line that started this master, to start its successor the same way."""
    return [sys.executable, *sys.orig_argv[1:]]


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
