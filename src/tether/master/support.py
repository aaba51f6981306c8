"""What the master keeps outside its parts: its runtime directory, pidfile, systemd link,
working directory and command line.

The runtime directory holds the notify socket and each worker's private
debug socket. It lives in ``$XDG_RUNTIME_DIR`` when that is set (systemd's
``RuntimeDirectory=``, a per-user tmpfs), else in ``$TMPDIR`` or the system
temporary directory, and is named ``tether-master-<pid>-*``: a master killed
with ``-9`` leaves it behind, and the next master to start there removes
every such directory whose owner is gone.

Error handling: a directory that cannot hold the master's sockets (missing,
read-only, full, or so deep that a unix socket path would pass the kernel's
108-byte limit) is a :class:`~tether.errors.ConfigError` at start, naming
the directory and the fix.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
import time

from tether.errors import ConfigError
from tether.notify import Notifier, runtime_base

__all__ = [
    "RUNDIR_PREFIX",
    "SystemdLink",
    "logical_cwd",
    "make_rundir",
    "remove_stale_rundirs",
    "upgrade_argv",
]

log = logging.getLogger("tether.master")

RUNDIR_PREFIX = "tether-master-"
#: sun_path holds 108 bytes with the terminating NUL.
_MAX_SOCKET_PATH = 107
#: The longest name the master puts in its directory (a worker's debug socket).
_LONGEST_NAME = "w99999999.sock"
#: A runtime directory without its notify socket yet is left alone this long (seconds).
_STARTING_GRACE = 60.0


def make_rundir() -> str:
    """Create this master's private runtime directory; ConfigError (one line) if it cannot."""
    base = runtime_base()
    fix = "set TMPDIR (or XDG_RUNTIME_DIR) to a short, writable directory such as /tmp"
    probe = os.path.join(base, f"{RUNDIR_PREFIX}{os.getpid()}-xxxxxxxx", _LONGEST_NAME)
    if len(os.fsencode(probe)) > _MAX_SOCKET_PATH:
        msg = (
            f"the master's runtime directory would be in {base}, too long a path for its "
            f"unix sockets ({len(os.fsencode(probe))} bytes, at most {_MAX_SOCKET_PATH}); {fix}"
        )
        raise ConfigError(msg)
    remove_stale_rundirs(base)
    try:
        return tempfile.mkdtemp(prefix=f"{RUNDIR_PREFIX}{os.getpid()}-", dir=base)
    except OSError as exc:
        msg = f"cannot create the master's runtime directory in {base}: {exc.strerror}; {fix}"
        raise ConfigError(msg) from exc


def rundir_failed(path: str, exc: OSError) -> ConfigError:
    """The error for a socket that cannot be created in the runtime directory (full disk...)."""
    return ConfigError(
        f"cannot create a socket in the master's runtime directory {path}: {exc.strerror}; "
        "free some space there, or set TMPDIR (or XDG_RUNTIME_DIR) to another directory"
    )


def remove_stale_rundirs(base: str) -> list[str]:
    """Remove this user's ``tether-master-<pid>-*`` directories whose master is gone."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(RUNDIR_PREFIX):
            continue
        pid_text = entry.name.removeprefix(RUNDIR_PREFIX).partition("-")[0]
        if not pid_text.isdigit():
            continue
        with contextlib.suppress(OSError):
            if entry.stat(follow_symlinks=False).st_uid != os.getuid() or not entry.is_dir(
                follow_symlinks=False
            ):
                continue
            # A pid is only a hint: another PID namespace sharing this directory (a
            # container, a sandbox) has its own numbers. A master that is alive holds
            # its notify socket; only a directory nobody holds is stale.
            if _alive(int(pid_text)) or _in_use(entry.path):
                continue
            shutil.rmtree(entry.path)
            removed.append(entry.path)
            log.info("removed %s, left by master %s, which is gone", entry.path, pid_text)
    return removed


def _in_use(directory: str) -> bool:
    """Whether a master holds this runtime directory's notify socket (or is creating it)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(os.path.join(directory, "notify.sock"))
        except FileNotFoundError:
            # Not bound yet (a master starting right now) or never bound: judge by age.
            return time.time() - os.stat(directory).st_mtime < _STARTING_GRACE
        except OSError:
            return False  # refused: the socket's owner has gone
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
