"""The pidfile: one live owner at a time, written so that nobody can plant a file for us.

Invariant: the file names the process an operator should signal — the
master, or in ``--workers 0`` the process that serves now (after a reload,
the successor) — and a second instance never takes over a live owner's file.

The CLI claims the file before anything starts (a missing or read-only
directory, or a live owner, is a usage error: exit 2), so a problem is
found before a port is bound or an app imported. A process started to
succeed another (a ``--workers 0`` reload, a master upgrade) may take over
its parent's file, and writes it only once it serves, so a broken deploy
leaves the file naming the old process.

Writes go through :func:`tempfile.mkstemp` in the same directory (``O_EXCL``,
an unpredictable name) and ``os.replace``, so readers never see a partial
file and a symlink planted by another local user is never followed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile

from tether.errors import ConfigError
from tether.worker import is_successor

__all__ = ["PidFile"]

log = logging.getLogger("tether")


def _read_owner(path: str) -> int | None:
    """The pid the file names, or None if there is no file or it names nothing."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read(64).strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        msg = f"cannot read the pidfile {path}: {exc.strerror}; check its permissions"
        raise ConfigError(msg) from exc
    return int(text) if text.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


class PidFile:
    """A claimed pidfile. ``claim`` checks and (for a fresh start) writes it.

    Resource handling: :meth:`release` removes the file if it still names this
    process (a successor may own it by then); call it once, at exit.

    Error handling: every problem :meth:`claim` can find raises
    :class:`~tether.errors.ConfigError` naming the path and the fix.
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)

    @classmethod
    def claim(cls, path: str, *, environ: dict[str, str] | None = None) -> PidFile:
        """Check that ``path`` can be ours; write it now unless we succeed our parent."""
        env = os.environ if environ is None else environ
        pidfile = cls(path)
        successor = is_successor(env)  # started to succeed its parent
        owner = _read_owner(pidfile.path)
        me, parent = os.getpid(), os.getppid()
        ours = owner is None or owner == me or (successor and owner == parent)
        if not ours and owner is not None and _alive(owner):
            msg = (
                f"already running as pid {owner} (pidfile {pidfile.path}); stop it first, "
                "or give this instance another --pidfile"
            )
            raise ConfigError(msg)
        if successor:
            pidfile._check_writable()  # written once we serve
        else:
            if owner is not None and owner != me:
                log.info("pidfile %s named pid %d, which is gone; taking it", pidfile.path, owner)
            pidfile.write()
        return pidfile

    def _check_writable(self) -> None:
        self._replace_with(None)

    def write(self) -> None:
        """Make the file name this process (atomically)."""
        self._replace_with(f"{os.getpid()}\n")

    def _replace_with(self, content: str | None) -> None:
        directory = os.path.dirname(self.path)
        name = os.path.basename(self.path)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
        except OSError as exc:
            why = "does not exist" if exc.errno == errno.ENOENT else exc.strerror
            msg = (
                f"cannot write the pidfile {self.path}: its directory {directory} {why}; "
                "create it (writable by this user) or choose another --pidfile"
            )
            raise ConfigError(msg) from exc
        try:
            if content is not None:
                os.fchmod(fd, 0o644)
                os.write(fd, content.encode("ascii"))
                os.replace(tmp, self.path)
                tmp = ""
        except OSError as exc:
            msg = f"cannot write the pidfile {self.path}: {exc.strerror}; choose another --pidfile"
            raise ConfigError(msg) from exc
        finally:
            os.close(fd)
            if tmp:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def serving(self) -> None:
        """This process serves now: make the file name it, if it does not already."""
        try:
            if _read_owner(self.path) != os.getpid():
                self.write()
        except ConfigError as exc:
            log.error("%s", exc)  # noqa: TRY400 - serving goes on; the message says it all

    def release(self) -> None:
        """Remove the file if it still names this process."""
        with contextlib.suppress(OSError, ConfigError):
            if _read_owner(self.path) == os.getpid():
                os.unlink(self.path)
