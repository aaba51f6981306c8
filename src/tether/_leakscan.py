"""What is alive in the process now: the scan behind leak detection.

A scan lists the asyncio tasks of every event loop (not only the running
one), the threads, the child processes and the open file descriptors, as
identities only; stacks and creation sites are added afterwards, and only to
what a check did not find in its snapshot, because reading them costs far
more than listing.

Invariant: a scan never fails because another thread changed what it reads
(a loop adding a task, a thread ending); it retries the copy instead.

Python's task registry changed in 3.12 and again in 3.14; :func:`_live_tasks`
reads the one this interpreter has and falls back to asking each loop.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, cast

from tether._creation import _object_sites, _raw, _RawFrame, _recorders, task_site
from tether._procfs import ProcFS
from tether._stacks import await_frames

_proc = ProcFS()


@dataclass
class _Found:
    """One live thing seen by a scan, before it becomes a Leak."""

    kind: str
    key: object  # the task or thread itself, or a ("fd"/"process", ...) tuple
    stack: list[_RawFrame] = field(default_factory=list)
    site: _RawFrame | None = None


def _copy(collection: Any) -> list[Any]:
    # Another thread's loop may add a task while we copy: retry like asyncio.all_tasks does.
    for _ in range(1000):
        try:
            return list(collection)
        except RuntimeError:
            continue
    return []


def _live_tasks() -> list[asyncio.Task[Any]]:
    """Every pending task of every event loop in the process."""
    registry = getattr(asyncio.tasks, "_all_tasks", None)  # 3.11: one WeakSet for all loops
    if registry is None and sys.version_info < (3, 14):
        # 3.12, 3.13: scheduled tasks, plus eager tasks while they run their first step.
        scheduled = getattr(asyncio.tasks, "_scheduled_tasks", None)
        eager = getattr(asyncio.tasks, "_eager_tasks", None)
        if scheduled is not None:
            registry = _copy(scheduled) + _copy(eager or ())
    if registry is not None:
        return [t for t in _copy(registry) if not t.done()]
    return _tasks_from_loops()


def _tasks_from_loops() -> list[asyncio.Task[Any]]:
    # 3.14+: native tasks live in per-thread lists that only all_tasks(loop) reads.
    tasks: list[asyncio.Task[Any]] = []
    for loop in _known_loops():
        tasks.extend(asyncio.all_tasks(loop))
    return tasks


def _known_loops() -> list[asyncio.AbstractEventLoop]:
    loops: dict[int, asyncio.AbstractEventLoop] = {id(loop): loop for loop in _copy(_recorders)}
    for obj in gc.get_objects():
        if isinstance(obj, asyncio.AbstractEventLoop) and not obj.is_closed():
            loops[id(obj)] = obj
    return list(loops.values())


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def _scan(kinds: frozenset[str]) -> Iterator[_Found]:
    """Everything alive of the given kinds, identities only (stacks come later, if needed)."""
    if "task" in kinds:
        me = _current_task()
        for task in _live_tasks():
            if task is not me:
                yield _Found("task", task)
    if "thread" in kinds:
        current = threading.current_thread()
        for thread in threading.enumerate():
            if thread is not current and thread.is_alive():
                yield _Found("thread", thread)
    if "process" in kinds:
        for child in _proc.children():
            yield _Found("process", child.key)
    if "fd" in kinds:
        for fd in _proc.open_fds():
            yield _Found("fd", fd.key)


def _add_stacks(found: list[_Found]) -> None:
    frames = sys._current_frames() if any(f.kind == "thread" for f in found) else {}
    for item in found:
        if item.kind == "task":
            task = cast("asyncio.Task[Any]", item.key)
            item.stack = _await_chain(task)[0]
            item.site = task_site(task)
        elif item.kind == "thread":
            ident = cast(threading.Thread, item.key).ident
            if ident in frames:
                item.stack = _frame_stack(frames[ident])


def _frame_stack(frame: FrameType | None) -> list[_RawFrame]:
    stack = []
    while frame is not None:
        stack.append(_raw(frame))
        frame = frame.f_back
    stack.reverse()
    return stack


def _await_chain(task: asyncio.Future[Any], depth: int = 0) -> tuple[list[_RawFrame], str]:
    """The frames of a task from its coroutine down what it awaits, and what it waits on."""
    # The chain ends at a future's iterator or an async generator step: the task's
    # _fut_waiter says what it waits on.
    stack = [_raw(frame) for frame in await_frames(task)] if isinstance(task, asyncio.Task) else []
    waiter = getattr(task, "_fut_waiter", None)
    if waiter is None:
        return stack, ""
    if isinstance(waiter, asyncio.Task) and depth < 8:
        inner, waits = _await_chain(waiter, depth + 1)
        marker = (_AWAIT_MARKER, 0, f"awaiting task {waiter.get_name()!r}")
        return [*stack, marker, *inner], waits
    return stack, _describe_future(waiter)


def _describe_future(future: object) -> str:
    children = getattr(future, "_children", None)  # asyncio.gather's future
    if children:
        names = ", ".join(repr(c.get_name()) for c in children if isinstance(c, asyncio.Task))
        return f"gather of {len(children)}: {names}" if names else repr(future)
    return repr(future)


def _marker() -> None:
    """Stands in a stack where one task awaits another."""


_AWAIT_MARKER = _marker.__code__


# -- creation sites of sockets and processes, looked up for a report ----------


def _sites() -> list[tuple[object, _RawFrame]]:
    return _copy(_object_sites.items())


def _site_of_pid(pid: int) -> _RawFrame | None:
    for owner, site in _sites():
        if getattr(owner, "pid", None) == pid and hasattr(owner, "poll"):
            return site
    return None


def _site_of_fd(fd: int) -> _RawFrame | None:
    for owner, site in _sites():
        fileno = getattr(owner, "fileno", None)
        if callable(fileno) and not hasattr(owner, "poll"):
            try:
                if fileno() == fd:
                    return site
            except OSError:
                continue
    return None
