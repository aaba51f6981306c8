"""Stacks of tasks and threads, as the debug server and shutdown reports show them.

``Task.get_stack()`` shows only the outermost coroutine frame; what a reader
needs is the whole chain of awaits, from the task's coroutine down to the
innermost thing it waits on (a queue's ``get``, a sleep, a future). This module
follows ``cr_await`` / ``gi_yieldfrom`` to build that chain, and formats it
the same way everywhere so that identical stacks can be grouped and counted.
"""

from __future__ import annotations

import asyncio
import os
import sys
import sysconfig
import threading
import traceback
from collections.abc import Iterable, Iterator
from types import CodeType, CoroutineType, FrameType, GeneratorType
from typing import Any

from tether._adoption import task_scope

__all__ = [
    "app_frame",
    "await_frames",
    "format_frames",
    "is_library_file",
    "task_frames",
    "task_label",
    "task_stack",
    "thread_stacks",
]


def await_frames(task: asyncio.Task[Any]) -> Iterator[FrameType]:
    """The frames of the task's await chain, outermost first.

    The one walker of await chains: the debug server, shutdown reports, the
    tracker and leak detection all read stacks through it.
    """
    awaitable: Any = task.get_coro()
    for _ in range(256):  # a bound, in case a broken awaitable awaits itself
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
            return
        yield frame
        awaitable = nxt


def task_frames(
    task: asyncio.Task[Any], hide: CodeType | None = None
) -> list[traceback.FrameSummary]:
    """The task's await chain, outermost first, as frame summaries; without ``hide``'s frames."""
    return [
        traceback.FrameSummary(
            frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name, lookup_line=True
        )
        for frame in await_frames(task)
        if frame.f_code is not hide
    ]


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


def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots.add(os.path.dirname(os.path.abspath(__file__)))  # tether itself, installed or not
    return tuple(sorted(os.path.join(r, "") for r in roots))


#: Where the interpreter's and installed packages' files live, and tether's own.
_LIBRARY_ROOTS = _library_roots()


def is_library_file(filename: str) -> bool:
    """True for a file of the standard library, an installed package or tether itself.

    Everything else is the application's: what a reader wants named when a
    group of tasks is shown ("what does it run?").
    """
    return filename.startswith(_LIBRARY_ROOTS) or filename.startswith("<")


def app_frame(frames: Iterable[FrameType]) -> FrameType | None:
    """The outermost of ``frames`` that is the application's own code, if any."""
    for frame in frames:
        if not is_library_file(frame.f_code.co_filename):
            return frame
    return None


#: Top-level packages whose files count as tether's own: the HTTP engine's, named by its
#: implementation when it loads (:func:`count_as_own`), so this module knows no engine.
_engine_packages: list[str] = []


def count_as_own(package: str) -> None:
    """Frames in ``package`` (the HTTP engine's) are tether's, not the app's, in labels."""
    if package not in _engine_packages:
        _engine_packages.append(package)


def _own_roots() -> tuple[str, ...]:
    # Read when asked, not at import: this module loads before the HTTP engine in some
    # processes, and the engine's files count as tether's own once it is there.
    engines = (sys.modules[n] for n in _engine_packages if n in sys.modules)
    return tuple(
        os.path.join(os.path.dirname(os.path.abspath(m.__file__ or "")), "")
        for m in (sys.modules["tether"], *engines)
    )


def task_label(task: asyncio.Task[Any]) -> tuple[str, bool]:
    """What ``task`` runs, for a reader, and whether it is one of tether's own.

    The name is the outermost coroutine of the application's own code on the
    await chain (``checkout (shop.py:41)``), else the task's coroutine. A task
    is tether's own when its coroutine is tether's or its engine's, nothing of
    the application is on its stack, and it is not a request.
    """
    frames = list(await_frames(task))
    app = app_frame(frames)
    if app is not None:
        code = app.f_code
        return f"{code.co_qualname} ({os.path.basename(code.co_filename)}:{app.f_lineno})", False
    coro: Any = task.get_coro()
    name = getattr(getattr(coro, "cr_code", None), "co_qualname", None) or task.get_name()
    own = bool(frames) and frames[0].f_code.co_filename.startswith(_own_roots())
    return str(name), own and task_scope(task) is None
