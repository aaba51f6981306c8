"""Find what a piece of code started and left running: tasks, threads, processes, fds.

The note's rule is "never start a goroutine without knowing when it will stop";
this module checks it after the fact. Take a :func:`snapshot`, run the code,
then :func:`find` (or :func:`verify_none`) reports every asyncio task, thread,
child process and open file descriptor that exists now, did not exist at the
snapshot and is not ignored. Tasks are collected from every event loop in the
process, not only the running one.

Invariant: nothing is reported as a leak until it has stayed alive for the
whole retry window (``LeakOptions.timeout``, half a second by default, polled
with backoff), so work that is about to finish is never a leak; and a check
that finds nothing returns after one scan, without waiting.

Creation sites: :func:`install_creation_tracking` puts a task factory on a loop
that records where each task was created. It chains to the factory already
installed (tether's Tracker installs one too) and uninstalling restores it. The
same call turns on a process-wide audit hook that records where sockets and
subprocesses are created. Python cannot remove an audit hook, so once installed
it stays, reduced to one flag test per audited event.

Python's task registry changed in 3.12 and again in 3.14; :func:`_live_tasks`
reads the one this interpreter has and falls back to asking each loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import inspect
import linecache
import os
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field, replace
from types import CodeType, FrameType, TracebackType
from typing import Any, ParamSpec, TypeVar, cast

from tether._procfs import ChildProcess, OpenFd, ProcFS
from tether.errors import TetherError

__all__ = [
    "ALL_KINDS",
    "Frame",
    "Leak",
    "LeakError",
    "LeakOptions",
    "Snapshot",
    "snapshot",
    "find",
    "afind",
    "verify_none",
    "averify_none",
    "no_leaks",
    "format_leaks",
    "install_creation_tracking",
    "uninstall_creation_tracking",
    "creation_tracking",
]

P = ParamSpec("P")
R = TypeVar("R")

#: Every kind of leak the detector knows.
ALL_KINDS: frozenset[str] = frozenset({"task", "thread", "process", "fd"})

#: A function to match in a stack: the function object itself, or a dotted name
#: matched against ``module.qualname`` whole, by suffix ("Queue.get") or by
#: module prefix ("uvicorn" matches every function in uvicorn).
FunctionRef = str | Callable[..., Any]

_proc = ProcFS()


# -- data -------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """One frame of a stack or a creation site."""

    filename: str
    lineno: int
    #: ``module.qualname`` of the function.
    function: str
    #: The source line, stripped ("" when the source is not available).
    line: str = ""

    def __str__(self) -> str:
        text = f'File "{self.filename}", line {self.lineno}, in {self.function}'
        return f"{text}\n      {self.line}" if self.line else text


@dataclass(frozen=True)
class Leak:
    """Something started after the snapshot and still alive at the end of the check."""

    #: "task", "thread", "process" or "fd".
    kind: str
    #: The task's or thread's name, the process id or the fd number.
    name: str
    #: The coroutine, the thread's target, the command line, or what the fd points at.
    target: str
    #: Where it is now, outermost call first; for a task, the chain of awaits.
    stack: tuple[Frame, ...] = ()
    #: What it is blocked on (a task's innermost future) or its state (a process's).
    waiting_on: str = ""
    #: Where it was created, when creation tracking was on.
    created_at: Frame | None = None
    #: Anything else worth a line: the loop and thread of a task, a thread's flags.
    detail: str = ""

    def headline(self) -> str:
        """One line: kind, name and target."""
        extra = f" [{self.detail}]" if self.detail else ""
        name = repr(self.name) if self.kind in ("task", "thread") else self.name
        return f"{self.kind} {name}: {self.target}{extra}"

    def describe(self) -> str:
        """Several lines, for a terminal: headline, creation site, stack, wait."""
        lines = [self.headline()]
        if self.created_at is not None:
            lines.append(f"  created at {self.created_at}")
        if self.stack:
            lines.append("  stack (most recent call last):")
            for frame in self.stack:
                if frame.filename:
                    lines.append(f"    {frame}")
                else:
                    lines.append(f"    ... {frame.function}")
        if self.waiting_on:
            label = "state" if self.kind == "process" else "waiting on"
            lines.append(f"  {label}: {self.waiting_on}")
        return "\n".join(lines)


def format_leaks(leaks: list[Leak], subject: str = "the checked code") -> str:
    """A readable report of ``leaks``: a summary line, then each leak described."""
    counts: dict[str, int] = {}
    for leak in leaks:
        counts[leak.kind] = counts.get(leak.kind, 0) + 1
    summary = ", ".join(f"{n} {kind}{'s' if n > 1 else ''}" for kind, n in sorted(counts.items()))
    body = "\n\n".join(leak.describe() for leak in leaks)
    return f"{subject} leaked {summary}:\n\n{body}"


class LeakError(TetherError, AssertionError):
    """Raised by :func:`verify_none` when something is still running that should not be."""

    def __init__(self, leaks: list[Leak], subject: str = "the checked code") -> None:
        message = format_leaks(leaks, subject)
        message += (
            "\n\nstop or close each of these before returning (cancel and await the task,"
            " join the thread, wait for the process, close the fd), or ignore it on purpose"
            " with LeakOptions"
        )
        super().__init__(message)
        self.leaks = leaks


@dataclass(frozen=True)
class LeakOptions:
    """How a check runs and what it ignores. Every field has a usable default."""

    #: Seconds a leak must stay alive, rechecked with backoff, before it is reported.
    timeout: float = 0.5
    #: The kinds to check: a subset of ``ALL_KINDS``.
    kinds: frozenset[str] = ALL_KINDS
    #: Ignore a task or thread whose innermost frame (where it waits) is one of these.
    ignore_top: tuple[FunctionRef, ...] = ()
    #: Ignore a task or thread with one of these functions anywhere in its stack.
    ignore_any: tuple[FunctionRef, ...] = ()
    #: Ignore what was created by one of these functions (needs creation tracking).
    ignore_creators: tuple[FunctionRef, ...] = ()
    #: Ignore a leak for which one of these predicates returns True.
    ignore: tuple[Callable[[Leak], bool], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.timeout, int | float) or not 0 <= self.timeout < float("inf"):
            msg = f"LeakOptions.timeout must be seconds >= 0, got {self.timeout!r}"
            raise ValueError(msg)
        unknown = set(self.kinds) - ALL_KINDS
        if unknown:
            known = ", ".join(sorted(ALL_KINDS))
            msg = f"LeakOptions.kinds has unknown kinds {sorted(unknown)}; pick from {known}"
            raise ValueError(msg)
        for name in ("ignore_top", "ignore_any", "ignore_creators", "ignore"):
            value = getattr(self, name)
            if isinstance(value, str) or callable(value):
                # A lone value where a tuple belongs: accept it rather than iterate a string.
                object.__setattr__(self, name, (value,))
            else:
                object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "kinds", frozenset(self.kinds))

    def replace(self, **changes: Any) -> LeakOptions:
        """A copy with some fields changed."""
        return replace(self, **changes)


# -- snapshot ---------------------------------------------------------------


# A frame as the scan keeps it: code object, line, module name. Turned into a Frame only
# for the report, so that matching by function object stays exact.
_RawFrame = tuple[CodeType, int, str]


@dataclass
class _Found:
    """One live thing seen by a scan, before it becomes a Leak."""

    kind: str
    key: object  # the task or thread itself, or a ("fd"/"process", ...) tuple
    stack: list[_RawFrame] = field(default_factory=list)
    site: _RawFrame | None = None


class Snapshot:
    """What was alive at one moment; :func:`find` reports only what is not in it."""

    def __init__(self) -> None:
        self._objects: weakref.WeakSet[object] = weakref.WeakSet()
        self._keys: set[object] = set()
        self.taken_at = time.monotonic()

    def __contains__(self, found: object) -> bool:
        key = found.key if isinstance(found, _Found) else found
        if isinstance(key, tuple):
            return key in self._keys
        return key in self._objects

    def _add(self, found: _Found) -> None:
        if isinstance(found.key, tuple):
            self._keys.add(found.key)
        else:
            self._objects.add(found.key)

    def _discard(self, found: _Found) -> None:
        if isinstance(found.key, tuple):
            self._keys.discard(found.key)
        else:
            self._objects.discard(found.key)

    def __len__(self) -> int:
        return len(self._objects) + len(self._keys)


def snapshot(kinds: frozenset[str] = ALL_KINDS) -> Snapshot:
    """Record what is alive now: tasks on every loop, threads, child processes, open fds."""
    snap = Snapshot()
    for found in _scan(kinds):
        snap._add(found)
    return snap


# -- scanning ---------------------------------------------------------------


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
            item.site = _task_sites.get(task)
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


def _raw(frame: FrameType) -> _RawFrame:
    return (frame.f_code, frame.f_lineno, frame.f_globals.get("__name__", "?"))


def _await_chain(task: asyncio.Future[Any], depth: int = 0) -> tuple[list[_RawFrame], str]:
    """The frames of a task from its coroutine down what it awaits, and what it waits on."""
    stack: list[_RawFrame] = []
    obj: Any = task.get_coro() if isinstance(task, asyncio.Task) else None
    while obj is not None:
        if hasattr(obj, "cr_frame"):
            frame, obj = obj.cr_frame, obj.cr_await
        elif hasattr(obj, "gi_frame"):
            frame, obj = obj.gi_frame, obj.gi_yieldfrom
        elif hasattr(obj, "ag_frame"):
            frame, obj = obj.ag_frame, obj.ag_await
        else:
            break  # a future's iterator or an async generator step: see _fut_waiter below
        if frame is not None:
            stack.append(_raw(frame))
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


# -- matching and reporting -------------------------------------------------


def _matcher(ref: FunctionRef) -> Callable[[_RawFrame], bool]:
    if isinstance(ref, str):
        return lambda raw: _name_matches(ref, raw)
    func = inspect.unwrap(getattr(ref, "__func__", ref))
    code = getattr(func, "__code__", None)
    if isinstance(code, CodeType):
        return lambda raw: raw[0] is code
    name = f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', func)}"
    return lambda raw: _name_matches(name, raw)


def _name_matches(pattern: str, raw: _RawFrame) -> bool:
    full = f"{raw[2]}.{raw[0].co_qualname}"
    return full == pattern or full.endswith("." + pattern) or full.startswith(pattern + ".")


def _is_ignored(found: _Found, leak: Leak, options: LeakOptions) -> bool:
    real = [raw for raw in found.stack if raw[0] is not _AWAIT_MARKER]
    if real and any(_matcher(ref)(real[-1]) for ref in options.ignore_top):
        return True
    if any(_matcher(ref)(raw) for ref in options.ignore_any for raw in real):
        return True
    if found.site is not None and any(_matcher(r)(found.site) for r in options.ignore_creators):
        return True
    return any(predicate(leak) for predicate in options.ignore)


def _frame(raw: _RawFrame) -> Frame:
    code, lineno, module = raw
    if code is _AWAIT_MARKER:
        return Frame("", 0, module)
    line = linecache.getline(code.co_filename, lineno).strip()
    return Frame(code.co_filename, lineno, f"{module}.{code.co_qualname}", line)


def _function_name(func: object) -> str:
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None) or repr(func)
    return f"{module}.{qualname}" if module else qualname


class _Reporter:
    """Turns found things into Leak reports, reading the OS only once per report."""

    def __init__(self) -> None:
        self._fds: dict[tuple[str, int, int, int], OpenFd] | None = None
        self._children: dict[tuple[str, int, int], ChildProcess] | None = None
        self._sockets: dict[int, str] | None = None
        self._threads = {t.ident: t for t in threading.enumerate()}

    def leak(self, found: _Found) -> Leak:
        created = _frame(found.site) if found.site is not None else None
        stack = tuple(_frame(raw) for raw in found.stack)
        if found.kind == "task":
            task = cast("asyncio.Task[Any]", found.key)
            coro = task.get_coro()
            target = getattr(coro, "__qualname__", None) or repr(coro)
            waits = _await_chain(task)[1]
            where = self._where(task)
            return Leak("task", task.get_name(), f"{target}()", stack, waits, created, where)
        if found.kind == "thread":
            thread = cast(threading.Thread, found.key)
            run = getattr(thread, "_target", None) or type(thread).run
            flags = "daemon" if thread.daemon else "non-daemon"
            detail = f"{flags}, native id {thread.native_id}"
            return Leak("thread", thread.name, _function_name(run), stack, "", created, detail)
        if found.kind == "process":
            child = self._child(found.key)
            pid = cast("tuple[str, int, int]", found.key)[1]
            site = _site_of_pid(pid)
            state = child.describe_state() if child else ""
            return Leak("process", str(pid), _proc.command_line(pid), (), state, site)
        fd = self._fd(found.key)
        number = cast("tuple[str, int, int, int]", found.key)[1]
        if self._sockets is None:
            self._sockets = _proc.socket_table()
        target = _proc.describe_fd(fd, self._sockets) if fd else "?"
        site = _site_of_fd(number) if fd is not None and fd.kind == "socket" else None
        return Leak("fd", str(number), target, (), "", site, fd.kind if fd else "")

    def _where(self, task: asyncio.Task[Any]) -> str:
        loop = task.get_loop()
        thread = self._threads.get(getattr(loop, "_thread_id", None))
        running = f"running in thread {thread.name!r}" if thread else "not running"
        return f"loop 0x{id(loop):x}, {running}"

    def _child(self, key: object) -> ChildProcess | None:
        if self._children is None:
            self._children = {c.key: c for c in _proc.children()}
        return self._children.get(cast("tuple[str, int, int]", key))

    def _fd(self, key: object) -> OpenFd | None:
        if self._fds is None:
            self._fds = {fd.key: fd for fd in _proc.open_fds()}
        return self._fds.get(cast("tuple[str, int, int, int]", key))


# -- finding, with retries --------------------------------------------------


_Pairs = list[tuple[_Found, Leak]]


def _rounds(baselines: Sequence[Snapshot], options: LeakOptions) -> Generator[float, None, _Pairs]:
    """Scan, and while leaks remain and time is left, yield how long to sleep before rescanning."""
    deadline = time.monotonic() + options.timeout
    delay = 0.001
    while True:
        candidates = [f for f in _scan(options.kinds) if not any(f in b for b in baselines)]
        _add_stacks(candidates)
        reporter = _Reporter()
        leaks = []
        for found in candidates:
            leak = reporter.leak(found)
            if not _is_ignored(found, leak, options):
                leaks.append((found, leak))
        remaining = deadline - time.monotonic()
        if not leaks or remaining <= 0:
            return leaks
        yield min(delay, remaining)
        delay = min(delay * 2, 0.1)


def _options(options: LeakOptions | None, changes: dict[str, Any]) -> LeakOptions:
    return (options or LeakOptions()).replace(**changes) if changes else options or LeakOptions()


def find(since: Snapshot, options: LeakOptions | None = None, **changes: Any) -> list[Leak]:
    """What is alive now and not in ``since``, after retrying up to ``options.timeout``.

    Blocks the calling thread while it retries; in a coroutine use :func:`afind`, so that
    the tasks of the running loop can finish meanwhile. Keyword arguments override fields
    of ``options``.
    """
    opts = _options(options, changes)
    if opts.timeout > 0 and _running_loop() is not None and "task" in opts.kinds:
        msg = (
            "find()/verify_none() would block the running event loop while it waits for its "
            "tasks to finish; use `await afind(...)` or `await averify_none(...)` here"
        )
        raise RuntimeError(msg)
    return [leak for _, leak in _find_pairs([since], opts)]


def _find_pairs(baselines: Sequence[Snapshot], options: LeakOptions) -> _Pairs:
    rounds = _rounds(baselines, options)
    try:
        while True:
            time.sleep(next(rounds))
    except StopIteration as done:
        return cast("_Pairs", done.value)


async def afind(since: Snapshot, options: LeakOptions | None = None, **changes: Any) -> list[Leak]:
    """Like :func:`find`, but waits with ``asyncio.sleep`` so the running loop keeps going."""
    rounds = _rounds([since], _options(options, changes))
    try:
        # Not a flag-polling loop: nothing signals "this task is about to end", so the
        # check itself is a bounded series of looks, each after a longer pause.
        while True:  # noqa: ASYNC110
            await asyncio.sleep(next(rounds))
    except StopIteration as done:
        return [leak for _, leak in cast("_Pairs", done.value)]


def verify_none(
    since: Snapshot,
    options: LeakOptions | None = None,
    subject: str = "the checked code",
    **changes: Any,
) -> None:
    """Raise :class:`LeakError` listing every leak :func:`find` reports; return if none."""
    leaks = find(since, options, **changes)
    if leaks:
        raise LeakError(leaks, subject)


async def averify_none(
    since: Snapshot,
    options: LeakOptions | None = None,
    subject: str = "the checked code",
    **changes: Any,
) -> None:
    """Like :func:`verify_none`, for use inside a coroutine."""
    leaks = await afind(since, options, **changes)
    if leaks:
        raise LeakError(leaks, subject)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class no_leaks:
    """Check that a block or a function leaves nothing running.

    Use it as ``with no_leaks():``, ``async with no_leaks():`` or as a decorator on a
    plain or a coroutine function. The snapshot is taken on entry; on a normal exit
    :func:`verify_none` (or :func:`averify_none` in async code) runs against it. When the
    block raises, the error propagates unchanged and no check is made: a failing block
    leaks for its own reasons.
    """

    def __init__(self, options: LeakOptions | None = None, **changes: Any) -> None:
        self.options = _options(options, changes)
        self._since: list[Snapshot] = []

    def __enter__(self) -> Snapshot:
        self._since.append(snapshot(self.options.kinds))
        return self._since[-1]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        since = self._since.pop()
        if exc_type is None:
            verify_none(since, self.options, subject="the block")

    async def __aenter__(self) -> Snapshot:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        since = self._since.pop()
        if exc_type is None:
            await averify_none(since, self.options, subject="the block")

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        options = self.options
        subject = _function_name(func) + "()"
        if inspect.iscoroutinefunction(func):
            afunc = cast("Callable[P, Awaitable[Any]]", func)

            @functools.wraps(func)
            async def acheck(*args: P.args, **kwargs: P.kwargs) -> Any:
                since = snapshot(options.kinds)
                result = await afunc(*args, **kwargs)
                await averify_none(since, options, subject=subject)
                return result

            return cast("Callable[P, R]", acheck)

        @functools.wraps(func)
        def check(*args: P.args, **kwargs: P.kwargs) -> R:
            since = snapshot(options.kinds)
            result = func(*args, **kwargs)
            verify_none(since, options, subject=subject)
            return result

        return check


# -- creation sites ---------------------------------------------------------

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
            task = _Task(coro, loop=loop, **kwargs)
        if not self.active:
            return task
        # sys._getframe(depth) materialises only the frame asked for (3.11+), and each frame
        # object made costs; so jump straight past the loop's create_task (the depth is 1
        # where create_task is not Python, as in uvloop), then past asyncio's own frames.
        frame: FrameType | None = sys._getframe(self.depth)
        while frame is not None and frame.f_code.co_filename.startswith(_PLUMBING):
            frame = frame.f_back
        if frame is not None:
            _task_sites[task] = (frame.f_code, frame.f_lineno, frame.f_globals.get("__name__", "?"))
        return task


_Task = asyncio.Task


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


def _site_of_pid(pid: int) -> Frame | None:
    for owner, site in _copy(_object_sites.items()):
        if getattr(owner, "pid", None) == pid and hasattr(owner, "poll"):
            return _frame(site)
    return None


def _site_of_fd(fd: int) -> Frame | None:
    for owner, site in _copy(_object_sites.items()):
        fileno = getattr(owner, "fileno", None)
        if callable(fileno) and not hasattr(owner, "poll"):
            try:
                if fileno() == fd:
                    return _frame(site)
            except OSError:
                continue
    return None


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
