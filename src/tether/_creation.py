"""Where tasks, sockets and subprocesses were created, for leak reports.

A leak report that says where the leaked thing was created points at the line
to fix. :func:`install_creation_tracking` puts a task factory on a loop that
records each task's creation site; it chains to the factory already installed
(tether's Tracker installs one too), and uninstalling restores it. The same
call turns on a process-wide audit hook that records where sockets and
subprocesses are created. Python cannot remove an audit hook, so once
installed it stays, reduced to one flag test per audited event.

Invariant: recording never changes what is created. The factory creates each
task exactly as the previous factory (or ``asyncio.Task``) would; records are
weak, so they keep nothing alive. The public names are re-exported from
:mod:`tether.leaks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import sys
import threading
import weakref
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any

__all__ = ["creation_tracking", "install_creation_tracking", "uninstall_creation_tracking"]

# A frame as leak detection keeps it: code object, line, module name. Turned into a
# leaks.Frame only for the report, so that matching by function object stays exact.
_RawFrame = tuple[CodeType, int, str]


def _raw(frame: FrameType) -> _RawFrame:
    return (frame.f_code, frame.f_lineno, frame.f_globals.get("__name__", "?"))


_ASYNCIO_DIR = os.path.dirname(asyncio.__file__) + os.sep
# Frames in these files are plumbing between the caller and the thing created; the
# creation site is the first frame outside them.
_PLUMBING = (
    _ASYNCIO_DIR,
    os.path.dirname(threading.__file__) + os.sep + "threading.py",
    os.path.dirname(threading.__file__) + os.sep + "socket.py",
    os.path.dirname(threading.__file__) + os.sep + "subprocess.py",
    os.path.dirname(threading.__file__) + os.sep + "selectors.py",
    os.path.dirname(threading.__file__) + os.sep + "ssl.py",
    # Leak detection's own modules (this one holds the loop policy, which makes sockets).
    os.path.dirname(__file__) + os.sep + "leaks.py",
    os.path.dirname(__file__) + os.sep + "_leakscan.py",
    __file__,
)

_task_sites: weakref.WeakKeyDictionary[asyncio.Future[Any], _RawFrame] = weakref.WeakKeyDictionary()
_object_sites: weakref.WeakKeyDictionary[object, _RawFrame] = weakref.WeakKeyDictionary()
_recorders: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Recorder] = (
    weakref.WeakKeyDictionary()
)
_audit = {"installed": False, "users": 0, "policy_users": 0}


def _site(frame: FrameType | None) -> _RawFrame | None:
    while frame is not None and frame.f_code.co_filename.startswith(_PLUMBING):
        frame = frame.f_back
    return _raw(frame) if frame is not None else None


TaskFactory = Callable[..., "asyncio.Future[Any]"]


class _Recorder:
    """The task factory: creates the task through the previous factory, then records its site."""

    __slots__ = ("active", "depth", "previous")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.previous: TaskFactory | None = loop.get_task_factory()
        self.active = True
        # Frames between this call and the caller of create_task: the loop's create_task,
        # if it is Python code. Factories installed after this one add a frame each; the
        # first of them is skipped as create_task would be, the others would be recorded.
        python_create_task = inspect.isfunction(getattr(type(loop), "create_task", None))
        self.depth = 2 if python_create_task else 1

    def __call__(self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        if self.previous is not None:
            task = self.previous(loop, coro, **kwargs)
        else:
            task = _SitedTask(coro, loop=loop, **kwargs)
        if not self.active:
            return task
        # sys._getframe(depth) materialises only the frame asked for (3.11+), and each frame
        # object made costs; so jump straight past the loop's create_task (the depth is 1
        # where create_task is not Python, as in uvloop), then past asyncio's own frames.
        frame: FrameType | None = sys._getframe(self.depth)
        while frame is not None and frame.f_code.co_filename.startswith(_PLUMBING):
            frame = frame.f_back
        if frame is not None:
            site = (frame.f_code, frame.f_lineno, frame.f_globals.get("__name__", "?"))
            if type(task) is _SitedTask:
                task.tether_site = site
            else:  # made by a factory before ours: a weak mapping, slower but general
                _task_sites[task] = site
        return task


class _SitedTask(asyncio.Task[Any]):
    """A task with room for its creation site: one slot store instead of a weak mapping."""

    __slots__ = ("tether_site",)
    tether_site: _RawFrame


def task_site(task: asyncio.Future[Any]) -> _RawFrame | None:
    """Where ``task`` was created, if creation tracking saw it."""
    site: _RawFrame | None = getattr(task, "tether_site", None)
    return site if site is not None else _task_sites.get(task)


def _on_audit(event: str, args: tuple[Any, ...]) -> None:
    # Called for every audited event in the process: return at once for all but two.
    if not _audit["users"] or event not in ("socket.__new__", "subprocess.Popen"):
        return
    caller = sys._getframe(1)
    owner = args[0] if event == "socket.__new__" else caller.f_locals.get("self")
    site = _site(caller)
    if owner is not None and site is not None:
        with contextlib.suppress(TypeError):  # not weak-referenceable: no site for it
            _object_sites[owner] = site


def install_creation_tracking(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Record where tasks on ``loop`` (default: the running one), sockets, processes are created.

    The task factory chains: it creates each task through the factory that was installed
    before (or ``asyncio.Task``) and only adds a record. Installing twice on one loop is a
    no-op. Sockets and subprocesses are tracked process-wide while any loop (or
    :func:`creation_tracking` block) has tracking on.
    """
    loop = loop or asyncio.get_running_loop()
    if loop in _recorders and _recorders[loop].active:
        return
    recorder = _Recorder(loop)
    loop.set_task_factory(recorder)
    _recorders[loop] = recorder
    _enable_audit(+1)


def uninstall_creation_tracking(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Stop recording on ``loop`` and give it back the task factory it had before."""
    loop = loop or asyncio.get_running_loop()
    recorder = _recorders.pop(loop, None)
    if recorder is None:
        return
    recorder.active = False
    previous = recorder.previous
    if loop.get_task_factory() is recorder:
        loop.set_task_factory(previous)
    # else another factory chained after ours: ours stays in its chain as a pass-through.
    _enable_audit(-1)


class creation_tracking:
    """``with creation_tracking(loop):`` installs creation tracking for the block."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop

    def __enter__(self) -> None:
        self.loop = self.loop or asyncio.get_running_loop()
        install_creation_tracking(self.loop)

    def __exit__(self, *exc: object) -> None:
        uninstall_creation_tracking(self.loop)


def _enable_audit(delta: int) -> None:
    if not _audit["installed"]:
        sys.addaudithook(_on_audit)
        _audit["installed"] = True
    _audit["users"] = max(0, _audit["users"] + delta)


class _TrackingPolicy(asyncio.AbstractEventLoopPolicy):
    """Wraps the event loop policy so every new loop (``asyncio.run``'s too) records sites."""

    def __init__(self, inner: asyncio.AbstractEventLoopPolicy) -> None:
        self.inner = inner

    def get_event_loop(self) -> asyncio.AbstractEventLoop:
        return self.inner.get_event_loop()

    def set_event_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.inner.set_event_loop(loop)

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        loop = self.inner.new_event_loop()
        install_creation_tracking(loop)
        return loop

    # 3.11's asyncio asks the policy for a child watcher to run subprocesses.
    def get_child_watcher(self) -> Any:
        return self.inner.get_child_watcher()  # type: ignore[attr-defined,unused-ignore]

    def set_child_watcher(self, watcher: Any) -> None:
        self.inner.set_child_watcher(watcher)  # type: ignore[attr-defined,unused-ignore]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _track_new_loops() -> None:
    """Record creation sites from now on: sockets, processes, and tasks on every new loop.

    Tasks only where Python still has event loop policies (they are deprecated in 3.14);
    there, loops need :func:`install_creation_tracking`. Calls nest (pytest's own tests
    run sessions inside a session); each needs an :func:`_untrack_new_loops`.
    """
    _enable_audit(+1)
    _audit["policy_users"] += 1
    if sys.version_info < (3, 14):
        policy = asyncio.get_event_loop_policy()
        if not isinstance(policy, _TrackingPolicy):
            asyncio.set_event_loop_policy(_TrackingPolicy(policy))


def _untrack_new_loops() -> None:
    _enable_audit(-1)
    _audit["policy_users"] = max(0, _audit["policy_users"] - 1)
    if _audit["policy_users"] == 0 and sys.version_info < (3, 14):
        policy = asyncio.get_event_loop_policy()
        if isinstance(policy, _TrackingPolicy):
            asyncio.set_event_loop_policy(policy.inner)
