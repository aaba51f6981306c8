"""The debug listener as a member of one process's group: up until the rest has drained.

A stuck drain is exactly when someone wants ``/debug/tasks``: so the debug
server is the first member started (before the app's HTTP server) and the
last one down. When the group stops, it waits for every other member (up to
the group's graceful deadline, read from its token at that moment), then
stops its own small group.

Invariant: the debug server abandons nothing and never delays the stop past
the group's deadline: cancelled there, it ends its own group within its
short bounds (0.5 s graceful, 0.5 s to cancel).

``tether.debug`` (and the console) is imported only here, and only when a
debug listener exists or a task dump is asked for (USR1): a process that
runs without them never loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING

from tether.config import RunConfig
from tether.engine import Engine, EngineFactory
from tether.group import Group, Member, StopToken

if TYPE_CHECKING:
    from tether.debug import DebugSource

__all__ = ["debug_member", "log_task_dump", "wait_quietly"]

logger = logging.getLogger("tether.runtime")

#: The debug server's own group: how long it drains, how long it has to cancel.
DEBUG_GRACE = 0.5


def debug_member(
    engine: EngineFactory,
    source: DebugSource,
    sock: socket.socket,
    config: RunConfig,
    group: Group,
) -> Member:
    """The member that serves ``source`` on ``sock`` until the rest of ``group`` is done."""
    from tether.debug import DebugApp, debug_serve_options, hosts_for

    app = DebugApp(
        source,
        token=config.debug_token,
        allowed_hosts=hosts_for(sock, config.debug_allowed_hosts),
    )
    debug = engine(app, [sock], debug_serve_options())
    return _member(debug, group)


def _member(debug: Engine, group: Group) -> Member:
    async def member(stop: StopToken) -> None:
        inner = Group("debug", graceful_timeout=DEBUG_GRACE, cancel_timeout=DEBUG_GRACE)
        await inner.start(debug.run, name="debug-http")
        stop.ready()
        try:
            # Cancelled at the deadline while keeping the dumps available:
            # the debug server itself abandons nothing.
            with contextlib.suppress(asyncio.CancelledError):
                await stop.wait()
                others = [t for name, t in group.tasks().items() if name != stop.name]
                if others:
                    await asyncio.wait(others, timeout=stop.remaining())
        finally:
            inner.stop("service stopping")
            await wait_quietly(inner)

    return member


def log_task_dump(why: str) -> None:
    """Every asyncio task's stack to the log (USR1); the threads' are written from C already."""
    from tether.debug import format_task_dump, task_dump

    logger.warning("task dump (%s):\n%s", why, format_task_dump(task_dump()))


async def wait_quietly(group: Group) -> None:
    """Wait for a group to settle, ignoring its errors (the caller already has the story)."""
    try:
        await group.wait()
    except Exception as exc:
        logger.debug("group %r ended with: %r", group.name, exc)
