"""What a directory walk asks of the OS, and how a failure reaches the caller.

Shared by the synchronous walk (:mod:`tether._walk`) and the asynchronous one
(:mod:`tether._awalk`), so that both make the same calls and report the same
errors with the same words: the OS seam tests replace, :class:`WalkError`
(re-exported from :mod:`tether._walk` and :mod:`tether`), and the rules that
turn an ``OSError`` into one.

Invariant: every failure becomes a :class:`WalkError` handed to ``on_error``,
or raised when there is none; a symlink whose target the walk does not follow,
or that does not resolve, is not a failure.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from operator import attrgetter
from typing import AnyStr

from tether.errors import ConfigError, TetherError

__all__ = ["OnError", "WalkError"]

#: The OS calls a walk makes; tests replace them to simulate failures. Both walks call
#: them through this module (``_walkos._scandir(...)``) so that a replacement reaches them.
_scandir = os.scandir
_stat = os.stat

#: The sort key of ``sort=True``.
_by_name = attrgetter("name")


def _link_failure(entry: os.DirEntry[AnyStr], exc: OSError, follow: bool) -> bool:
    """Whether ``exc``, from asking if ``entry`` is a directory, is about a symlink's target.

    A target the walk does not follow is none of its business; a target that
    does not resolve (a symlink to itself) makes the entry a broken symlink,
    which is yielded like any other, not reported.
    """
    try:
        is_link = entry.is_symlink()
    except OSError:
        return False
    return is_link and (not follow or exc.errno == errno.ELOOP)


OnError = Callable[["WalkError"], object]


class WalkError(TetherError, OSError):
    """A directory of the walk could not be listed or entered.

    ``errno``, ``strerror`` and ``filename`` are those of the underlying
    ``OSError`` (also chained as ``__cause__``); ``path`` is the directory and
    ``depth`` its depth (0 for the root).
    """

    def __init__(self, path: str | bytes, depth: int, code: int, reason: str, hint: str) -> None:
        OSError.__init__(self, code, reason, path)
        self.path = path
        self.depth = depth
        self.hint = hint

    def __str__(self) -> str:
        what = "walk" if self.depth == 0 else "list"
        return f"cannot {what} {os.fsdecode(self.path)!r}: {self.strerror}; {self.hint}"


def _error(path: str | bytes, depth: int, exc: OSError, raising: bool) -> WalkError:
    """Wrap ``exc`` into a WalkError whose hint says what the caller can do."""
    code = exc.errno or 0
    reason = exc.strerror or str(exc)
    walk_on = "pass on_error= to report it and walk on" if raising else "skipped"
    if depth == 0 and code == errno.ENOENT:
        reason, hint = "no such directory", "pass the path of an existing directory"
    elif depth == 0 and code == errno.ENOTDIR:
        reason, hint = "not a directory", "walk the directory that holds it"
    elif code == errno.ENOENT:
        reason, hint = "it disappeared during the walk", walk_on
    elif code in (errno.EACCES, errno.EPERM):
        hint = f"grant read and search permission, or {walk_on}" if raising else walk_on
    else:
        hint = walk_on
    return WalkError(path, depth, code, reason, hint)


def _loop_error(path: AnyStr, depth: int, ancestor: AnyStr, raising: bool) -> WalkError:
    hint = "pass on_error= to report it and walk on" if raising else "skipped"
    reason = f"symlink loop back to {os.fsdecode(ancestor)!r}"
    return WalkError(path, depth, errno.ELOOP, reason, f"not entered; {hint}")


def _report(on_error: OnError | None, error: WalkError, cause: OSError | None) -> None:
    """Hand ``error`` to ``on_error``, or raise it when there is none."""
    if on_error is None:
        raise error from cause
    on_error(error)


def _check_on_error(on_error: OnError | None) -> None:
    if on_error is not None and not callable(on_error):
        msg = f"on_error must be a callable taking a WalkError, got {on_error!r}"
        raise ConfigError(msg)
