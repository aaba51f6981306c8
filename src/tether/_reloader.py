"""``--reload``, for development: a saved change reloads the app the way HUP does.

The change starts an ordinary reload (a new generation, or with
``--workers 0`` a fresh copy of the process), so the new code serves once it
has imported and started, and a save that does not import or start leaves
the last good code serving, with the error in the log; the next save tries
again. (A reloader that restarts the server first leaves nothing serving
until the code is fixed.)

Watching is watchfiles' (inotify on Linux): nothing polls, and an idle
service stays idle. The watcher is a Group member; it ends when the group
stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import PurePath
from typing import Any

from tether.group import Member, StopToken

__all__ = ["DEFAULT_EXCLUDES", "DEFAULT_INCLUDES", "accepts", "watcher"]

log = logging.getLogger("tether.reload")

#: What a change must match to count (uvicorn's default).
DEFAULT_INCLUDES = ("*.py",)
#: What never counts: hidden files and directories, bytecode, editors' swap and backup files.
DEFAULT_EXCLUDES = (".*", "*.py[cod]", "*.sw?", "*~", "__pycache__")


def accepts(path: str, includes: Sequence[str], excludes: Sequence[str]) -> bool:
    """Whether a change to ``path`` reloads: its name matches an include, no part an exclude."""
    parts = PurePath(path).parts
    if any(fnmatch.fnmatch(part, pattern) for part in parts for pattern in excludes):
        return False
    name = parts[-1] if parts else ""
    return any(fnmatch.fnmatch(name, pattern) for pattern in includes)


def watcher(
    directories: Sequence[str],
    includes: Sequence[str],
    excludes: Sequence[str],
    on_change: Callable[[list[str]], None],
) -> Member:
    """A Group member that calls ``on_change`` with the changed paths after each save."""

    def keep(_change: Any, path: str) -> bool:
        return accepts(path, includes, excludes)

    async def member(stop: StopToken) -> None:
        from watchfiles import awatch

        done = asyncio.Event()

        async def watch() -> None:
            async for changes in awatch(
                *directories, watch_filter=keep, stop_event=done, debounce=300
            ):
                on_change(sorted({os.path.basename(path) for _, path in changes}))

        task = asyncio.get_running_loop().create_task(watch(), name="tether-reload-watch")
        log.info("watching %s for changes (--reload)", ", ".join(directories))
        stop.ready()
        try:
            await stop.wait()
        finally:
            done.set()  # watchfiles looks at it between its short waits
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return member
