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

This module is the API, the report types and the retrying check. The scan
of what is alive lives in :mod:`tether._leakscan`; recording where things
were created (:func:`install_creation_tracking`, re-exported here) in
:mod:`tether._creation`.

Why this module is long: it is the whole public leak API users read in one place
(snapshot, find, verify_none, their async twins, no_leaks, the options and report
types); the scan of what is alive and the recording of creation sites are already
elsewhere (tether._leakscan, tether._creation).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import linecache
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, replace
from types import CodeType, TracebackType
from typing import Any, ParamSpec, TypeVar, cast

from tether._creation import (
    _RawFrame,
    creation_tracking,
    install_creation_tracking,
    uninstall_creation_tracking,
)
from tether._leakscan import (
    _AWAIT_MARKER,
    _add_stacks,
    _await_chain,
    _Found,
    _proc,
    _scan,
    _site_of_fd,
    _site_of_pid,
)
from tether._procfs import ChildProcess, OpenFd
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
            created = _frame(site) if site is not None else None
            return Leak("process", str(pid), _proc.command_line(pid), (), state, created)
        fd = self._fd(found.key)
        number = cast("tuple[str, int, int, int]", found.key)[1]
        if fd is not None and fd.kind == "socket" and self._sockets is None:
            # Only a socket needs the system's socket tables, which grow with the host.
            self._sockets = _proc.socket_table()
        target = _proc.describe_fd(fd, self._sockets or {}) if fd else "?"
        site = _site_of_fd(number) if fd is not None and fd.kind == "socket" else None
        created = _frame(site) if site is not None else None
        return Leak("fd", str(number), target, (), "", created, fd.kind if fd else "")

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
