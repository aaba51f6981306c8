"""Stacks of tasks and threads, as the debug server and shutdown reports show them.

``Task.get_stack()`` shows only the outermost coroutine frame; what a reader
needs is the whole chain of awaits, from the task's coroutine down to the
innermost thing it waits on (a queue's ``get``, a sleep, a future). This module
follows ``cr_await`` / ``gi_yieldfrom`` to build that chain, and formats it
the same way everywhere so that identical stacks can be grouped and counted.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import traceback
from collections.abc import Iterable
from types import CoroutineType, FrameType, GeneratorType
from typing import Any

__all__ = ["format_frames", "task_frames", "task_stack", "thread_stacks", "waiting_on"]


def task_frames(task: asyncio.Task[Any]) -> list[traceback.FrameSummary]:
    """The task's await chain, outermost first, as frame summaries."""
    frames: list[traceback.FrameSummary] = []
    awaitable: Any = task.get_coro()
    seen = 0
    while awaitable is not None and seen < 256:
        seen += 1
        frame: FrameType | None
        if isinstance(awaitable, CoroutineType):
            frame, nxt = awaitable.cr_frame, awaitable.cr_await
        elif isinstance(awaitable, GeneratorType):
            frame, nxt = awaitable.gi_frame, awaitable.gi_yieldfrom
        else:
            # An async generator's asend/athrow, or a C-level awaitable: no frame to show.
            frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "ag_frame", None)
            nxt = getattr(awaitable, "cr_await", None) or getattr(awaitable, "ag_await", None)
        if frame is None:
            break
        code = frame.f_code
        frames.append(
            traceback.FrameSummary(code.co_filename, frame.f_lineno, code.co_name, lookup_line=True)
        )
        awaitable = nxt
    return frames


def waiting_on(task: asyncio.Task[Any]) -> str:
    """What the innermost await of the task waits on, in a few words ("" if unknown)."""
    awaitable: Any = task.get_coro()
    last: Any = None
    for _ in range(256):
        nxt = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
        if nxt is None:
            break
        last, awaitable = nxt, nxt
    if isinstance(last, asyncio.Future) and not isinstance(last, asyncio.Task):
        return "a future"
    if isinstance(last, asyncio.Task):
        return f"task {last.get_name()!r}"
    return ""


def format_frames(frames: Iterable[traceback.FrameSummary]) -> str:
    """Frames as a traceback body (no header), outermost first."""
    return "".join(traceback.format_list(list(frames)))


def task_stack(task: asyncio.Task[Any]) -> str:
    """The task's await chain as text."""
    return format_frames(task_frames(task))


def thread_stacks() -> dict[int, tuple[threading.Thread | None, str]]:
    """Every thread's current stack, keyed by thread ident."""
    threads = {t.ident: t for t in threading.enumerate()}
    result: dict[int, tuple[threading.Thread | None, str]] = {}
    for ident, frame in sys._current_frames().items():
        result[ident] = (threads.get(ident), "".join(traceback.format_stack(frame)))
    return result
