"""The asynchronous walk: a reader thread a bounded batch ahead of an ``async for``.

``awalk`` yields the same entries, in the same order, with the same ``depth``,
``skip()`` and error rules as ``walk`` (see :mod:`tether._walk`, which
re-exports everything public here). A :class:`_Reader` advances the walk in a
worker thread, at most ``batch_size`` entries per call, and hands over *runs*:
consecutive entries of one directory, or one error. The consumer yields
entries from memory and asks for the next batch as it takes the current one.

Invariants: the reader runs at most one batch ahead of the consumer and starts
no task; only one thread touches its open directories at a time; when the
consumer stops (``break``, an exception, cancellation, ``aclose``) the reader
stops within one chunk of reads and closes its directories, and after
``aclose()`` returns nothing of the walk is running.

Why this module is long: the reader thread and the async iterator are the two halves of
one hand-off (batches, runs, a stop within one chunk of reads); each half is unreadable
without the other, and together they are a few lines over the mark.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor
from itertools import islice
from operator import length_hint
from types import TracebackType
from typing import AnyStr, Generic, Protocol

from tether import _walkos
from tether._walkos import (
    OnError,
    WalkError,
    _by_name,
    _check_on_error,
    _error,
    _link_failure,
    _loop_error,
    _report,
)
from tether.errors import ConfigError

__all__ = ["AsyncWalk", "awalk"]

_is_dir = os.DirEntry.is_dir
_NO_ERRORS: dict[int, OSError] = {}  # shared, never written: only popped when a key is in it


class _Scan(Iterator[os.DirEntry[AnyStr]], Protocol):
    """What ``os.scandir`` returns: an iterator that can be closed early."""

    def close(self) -> None: ...


class _Frame(Generic[AnyStr]):
    """One open directory of an async walk's reader."""

    __slots__ = (
        "chunk",
        "collected",
        "depth",
        "errors",
        "flags",
        "ident",
        "more",
        "path",
        "pos",
        "scan",
        "source",
    )

    def __init__(
        self,
        path: AnyStr,
        depth: int,
        scan: _Scan[AnyStr],
        source: os.DirEntry[AnyStr] | None,
        ident: tuple[int, int] | None,
    ) -> None:
        self.path: AnyStr = path
        self.depth = depth  #: depth of the directory; its entries are one deeper
        self.scan: _Scan[AnyStr] | None = scan  # open until fully read
        self.more: Iterator[os.DirEntry[AnyStr]] | None = scan  # next chunks; None: no more
        self.collected: list[os.DirEntry[AnyStr]] = []  # sort=True reads all before yielding
        self.chunk: list[os.DirEntry[AnyStr]] = []  # entries read, not all handed over yet
        self.flags: list[bool] = []  # flags[i]: enter chunk[i]
        self.errors: dict[int, OSError] = _NO_ERRORS  # is_dir() failures in chunk, by index
        self.pos = 0  # chunk[:pos] has been handed over
        self.source: os.DirEntry[AnyStr] | None = source  # None for the root
        self.ident = ident

    def close(self) -> None:
        if self.scan is not None:
            self.scan.close()
            self.scan = None


class _Run(Generic[AnyStr]):
    """Consecutive entries of one directory, or one error, as the reader found them."""

    __slots__ = ("depth", "entered", "entries", "error")

    def __init__(
        self,
        depth: int,
        entries: list[os.DirEntry[AnyStr]],
        entered: bool = False,
        error: tuple[WalkError, OSError | None] | None = None,
    ) -> None:
        self.depth = depth
        self.entries: list[os.DirEntry[AnyStr]] = entries
        self.entered = entered  # the last entry is a directory the reader went into
        self.error = error


class _Reader(Generic[AnyStr]):
    """The thread side of an async walk: advances the walk one bounded batch at a time.

    Only one thread touches the frames at a time: the executor thread during
    ``read``, the event loop between batches. ``close`` may come from either
    side at any moment; whoever sees the frames last closes them.
    """

    def __init__(self, root: AnyStr, sort: bool, follow: bool, raising: bool) -> None:
        self.root: AnyStr = root
        self._sort = sort
        self._follow = follow
        self._raising = raising
        self._stack: list[_Frame[AnyStr]] = []
        self._ancestors: dict[tuple[int, int], AnyStr] = {}
        self._lock = threading.Lock()
        self._busy = False
        self._closed = False
        self._started = False

    @property
    def finished(self) -> bool:
        return self._closed or (self._started and not self._stack)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if not self._busy:
                self._close_frames()

    def _close_frames(self) -> None:
        while self._stack:
            self._stack.pop().close()
        self._ancestors.clear()

    def prune(self, entry: os.DirEntry[AnyStr], depth: int) -> None:
        """Close the directory ``entry`` (at ``depth``) and its subdirectories if still open."""
        stack = self._stack
        if len(stack) > depth and stack[depth].source is entry:
            while len(stack) > depth:
                self._pop()

    def _pop(self) -> None:
        frame = self._stack.pop()
        frame.close()
        if frame.ident is not None:
            del self._ancestors[frame.ident]

    def _open(
        self, path: AnyStr, depth: int, source: os.DirEntry[AnyStr] | None
    ) -> _Run[AnyStr] | None:
        """Open a directory as a new frame, or return the error run saying why not."""
        ident = None
        try:
            if self._follow:
                st = source.stat() if source is not None else _walkos._stat(path)
                ident = (st.st_dev, st.st_ino)
                if ident in self._ancestors:
                    loop = _loop_error(path, depth, self._ancestors[ident], self._raising)
                    return _Run(depth + 1, [], error=(loop, None))
            scan = _walkos._scandir(path)
        except OSError as exc:
            return _Run(depth + 1, [], error=(_error(path, depth, exc, self._raising), exc))
        self._stack.append(_Frame(path, depth, scan, source, ident))
        if ident is not None:
            self._ancestors[ident] = path
        return None

    def read(self, budget: int) -> list[_Run[AnyStr]]:
        """Advance the walk by about ``budget`` entries; runs in a worker thread."""
        with self._lock:
            if self._closed:
                return []
            self._busy = True
        runs: list[_Run[AnyStr]] = []
        try:
            if not self._started:
                self._started = True
                failed = self._open(self.root, 0, None)
                if failed is not None:
                    runs.append(failed)
            self._advance(runs, budget)
        finally:
            with self._lock:
                self._busy = False
                if self._closed:
                    self._close_frames()
        return runs

    def _advance(self, runs: list[_Run[AnyStr]], budget: int) -> None:
        # ``budget`` counts entries handed over (and entries read, when
        # sorting), so one call does a bounded amount of work however wide
        # the directory is.
        stack = self._stack
        while stack and budget > 0 and not self._closed:
            frame = stack[-1]
            depth = frame.depth + 1
            chunk, pos = frame.chunk, frame.pos
            if pos == len(chunk):
                if frame.more is None:
                    self._pop()
                    continue
                if not self._refill(frame, frame.more, runs, budget):
                    return  # sort=True: the budget went on reading a long directory
                chunk, pos = frame.chunk, 0
            # Hand over entries up to and including the next directory to enter.
            end = min(len(chunk), pos + budget)
            found = frame.flags.index(True, pos)  # flags end with a True past the chunk
            if found >= end:
                if end > pos:  # often the whole chunk, which then needs no copy
                    runs.append(_Run(depth, chunk if end - pos == len(chunk) else chunk[pos:end]))
                budget -= end - pos
                frame.pos = end
                if end == len(chunk) and frame.more is None:
                    self._pop()
                continue
            budget -= found + 1 - pos
            frame.pos = found + 1
            entry = chunk[found]
            failed: _Run[AnyStr] | None
            if frame.errors and found in frame.errors:
                exc = frame.errors.pop(found)
                error = _error(entry.path, depth, exc, self._raising)
                failed = _Run(depth + 1, [], error=(error, exc))
            else:
                failed = self._open(entry.path, depth, entry)
            runs.append(_Run(depth, chunk[pos : found + 1], entered=failed is None))
            if failed is not None:
                runs.append(failed)

    def _refill(
        self,
        frame: _Frame[AnyStr],
        more: Iterator[os.DirEntry[AnyStr]],
        runs: list[_Run[AnyStr]],
        budget: int,
    ) -> bool:
        """Read the frame's next chunk from ``more``; False when that used up the budget."""
        try:
            chunk = list(islice(more, budget))
        except OSError as exc:
            error = _error(frame.path, frame.depth, exc, self._raising)
            runs.append(_Run(frame.depth + 1, [], error=(error, exc)))
            chunk = []
        if len(chunk) < budget:
            frame.more = None
            if frame.scan is not None:
                frame.close()
                if self._sort:  # the directory is read through: sort, start handing over
                    chunk, frame.collected = frame.collected + chunk, []
                    chunk.sort(key=_by_name)
                    frame.more = iter(chunk)
                    chunk = list(islice(frame.more, budget))
                    if len(chunk) < budget:
                        frame.more = None
        elif self._sort and frame.scan is not None:
            frame.collected += chunk
            return False
        frame.chunk, frame.pos = chunk, 0
        try:
            # One pass in C (is_dir() with no arguments is the fast call; it
            # only fails when it has to stat), then symlinks it followed are
            # passed over when the walk does not follow them.
            flags = list(map(_is_dir, chunk))
            errors = _NO_ERRORS
        except OSError:
            flags, errors = self._flags_one_by_one(chunk)
        # A True past the end lets flags.index() find "no directory" without
        # raising ValueError, which would cost more than the search.
        flags.append(True)
        if not self._follow:
            found = flags.index(True)
            while found < len(chunk):
                if found not in errors and chunk[found].is_symlink():
                    flags[found] = False
                found = flags.index(True, found + 1)
        frame.flags, frame.errors = flags, errors
        return True

    def _flags_one_by_one(
        self, chunk: list[os.DirEntry[AnyStr]]
    ) -> tuple[list[bool], dict[int, OSError]]:
        flags: list[bool] = []
        errors: dict[int, OSError] = {}
        for i, entry in enumerate(chunk):
            try:
                flags.append(entry.is_dir(follow_symlinks=self._follow))
            except OSError as exc:
                if _link_failure(entry, exc, self._follow):
                    flags.append(False)
                    continue
                errors[i] = exc
                flags.append(True)  # stop there to report it in order
        return flags, errors


class AsyncWalk(Generic[AnyStr]):
    """An asynchronous walk of a directory tree; see :func:`awalk`."""

    # Slots make the per-entry fast path in __anext__ measurably cheaper.
    __slots__ = (
        "__weakref__",
        "_batch_size",
        "_closed",
        "_entries",
        "_executor",
        "_inflight",
        "_on_error",
        "_prunes",
        "_reader",
        "_release",
        "_run",
        "_runs",
        "_skip_depth",
        "depth",
        "root",
    )

    def __init__(
        self,
        root: AnyStr | os.PathLike[AnyStr],
        on_error: OnError | None,
        sort: bool,
        follow_symlinks: bool,
        batch_size: int,
        executor: Executor | None,
    ) -> None:
        _check_on_error(on_error)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            msg = f"batch_size must be a whole number >= 1, got {batch_size!r}"
            raise ConfigError(msg)
        self.root: AnyStr = os.fspath(root)
        #: Depth of the entry last yielded: 1 for the root's children.
        self.depth = 0
        self._on_error = on_error
        self._batch_size = batch_size
        self._executor = executor
        self._reader: _Reader[AnyStr] = _Reader(self.root, sort, follow_symlinks, on_error is None)
        self._runs: deque[_Run[AnyStr]] = deque()
        self._run: _Run[AnyStr] | None = None
        self._entries: Iterator[os.DirEntry[AnyStr]] = iter(())
        self._inflight: asyncio.Future[list[_Run[AnyStr]]] | None = None
        self._skip_depth: int | None = None
        self._prunes: list[tuple[os.DirEntry[AnyStr], int]] = []
        self._closed = False
        # A consumer that breaks out of `async for` never calls aclose(); when
        # it drops the walk, this tells the reader to stop and close its files.
        self._release: weakref.finalize[[], AsyncWalk[AnyStr]] = weakref.finalize(
            self, self._reader.close
        )

    def __aiter__(self) -> AsyncWalk[AnyStr]:
        return self

    async def __anext__(self) -> os.DirEntry[AnyStr]:
        for entry in self._entries:  # the fast path: the rest of the current run
            return entry
        try:
            while not self._closed:
                runs = self._runs
                while runs:
                    run = runs.popleft()
                    if self._skip_depth is not None:
                        if run.depth > self._skip_depth:
                            continue
                        self._skip_depth = None
                    if run.error is not None:
                        _report(self._on_error, *run.error)
                        continue
                    self._run = run
                    self.depth = run.depth
                    self._entries = entries = iter(run.entries)
                    for entry in entries:
                        return entry
                if not await self._fetch():
                    break
        except BaseException:
            self._shut()
            raise
        self._shut()
        raise StopAsyncIteration

    def skip(self) -> None:
        """Do not enter the entry last yielded; does nothing if it is not a directory."""
        run = self._run
        if run is None or not run.entries or length_hint(self._entries) != 0:
            return
        if not run.entered:
            # The reader may have failed to enter it: that report goes too,
            # as walk() would not have tried.
            runs = self._runs
            if runs and runs[0].error is not None and runs[0].error[0].path == run.entries[-1].path:
                runs.popleft()
            return
        run.entered = False
        # The reader may already be inside that directory: drop what it read
        # (it all comes before the next entry at this depth or above) and
        # close what it still has open there.
        self._skip_depth = run.depth
        self._prunes.append((run.entries[-1], run.depth))
        if self._inflight is None:
            self._apply_prunes()

    async def aclose(self) -> None:
        """Stop the walk, and wait until the reader thread has let go of the tree.

        The wait is for the reader to finish the chunk of reads it is in, at
        most ``batch_size`` entries; only a file system that hangs a single
        read can make it long.
        """
        inflight = self._inflight
        self._shut()
        if inflight is not None and not inflight.done():
            await asyncio.wait([inflight])

    async def __aenter__(self) -> AsyncWalk[AnyStr]:
        return self

    async def __aexit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _shut(self) -> None:
        self._closed = True
        self._entries = iter(())
        self._runs.clear()
        self._release()  # closes the reader now, or at the end of its current chunk

    def _apply_prunes(self) -> None:
        for entry, depth in self._prunes:
            self._reader.prune(entry, depth)
        self._prunes.clear()

    async def _fetch(self) -> bool:
        """Take the batch being read (starting one if none is) and start the next."""
        inflight = self._inflight
        if inflight is None:
            if self._reader.finished:
                return False
            inflight = self._start()
        elif inflight.done():
            # Entries come from memory until a batch runs out; give the loop
            # its turn at least once per batch.
            await asyncio.sleep(0)
        # Shielded: a cancelled consumer must not orphan the reader's call, so
        # that aclose() can still wait for the reader to let go.
        runs = await asyncio.shield(inflight)
        self._inflight = None
        self._apply_prunes()
        self._runs.extend(runs)
        if not self._reader.finished:
            self._inflight = self._start()
        return True

    def _start(self) -> asyncio.Future[list[_Run[AnyStr]]]:
        loop = asyncio.get_running_loop()
        self._inflight = loop.run_in_executor(self._executor, self._reader.read, self._batch_size)
        return self._inflight


def awalk(
    root: AnyStr | os.PathLike[AnyStr],
    *,
    on_error: OnError | None = None,
    sort: bool = False,
    follow_symlinks: bool = False,
    batch_size: int = 4096,
    executor: Executor | None = None,
) -> AsyncWalk[AnyStr]:
    """Walk the tree under ``root`` from async code, without blocking the event loop.

    The same walk as :func:`walk` (same entries, order, ``depth``, ``skip()``,
    ``sort``, ``follow_symlinks`` and ``on_error`` rules), iterated with
    ``async for``. ``on_error`` is called on the event loop, in walk order.

    ``batch_size``: the most entries the reader thread reads, and the most it
    hands over, per call; the event loop gets a turn at least once per batch.

    ``executor``: where the reader runs (a ``concurrent.futures.Executor``);
    ``None`` uses the event loop's default executor.

    Resource handling:
        The reader runs at most one batch ahead of the consumer (backpressure)
        and holds one open directory per level of the current path. No task is
        created. ``break`` (the walk is dropped), cancellation, an exception
        from ``on_error`` or ``aclose()`` stop the reader at its next chunk and
        close its directories; ``aclose()`` (or ``async with``) also waits for
        that, so nothing of the walk runs after it returns.

    Error handling:
        As in :func:`walk`. A consumer cancelled while waiting for a batch
        ends the walk: the batch being read is dropped.
    """
    return AsyncWalk(root, on_error, sort, follow_symlinks, batch_size, executor)
