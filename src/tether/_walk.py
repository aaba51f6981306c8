"""Streaming directory walks, sync and async, with WalkDir's error and skip rules.

Listing a tree has three shapes. Returning the whole list must finish before
the caller sees anything and holds every name at once. Filling a queue from a
background thread cannot report errors in order, cannot be stopped, and leaves
the thread running when the caller stops reading. Go's ``filepath.WalkDir``
streams: the caller sees every error and decides whether to skip a directory,
stop, or go on, and the caller decides where the work runs. ``walk`` and
``awalk`` are that third shape.

Both return a cursor over the tree, iterated once::

    w = walk(root)
    for entry in w:                 # an os.DirEntry; w.depth is its depth
        if entry.name == ".git":
            w.skip()                # do not enter the directory just yielded
            continue
        ...                         # `break` stops the walk

Entries are the ``os.DirEntry`` objects ``os.scandir`` made, in pre-order: a
directory comes just before its contents, so ``skip()`` can prune it before it
is read. The root itself is not yielded; its children have depth 1. Skip and
depth live on the cursor, not on each entry, because wrapping every entry in
an object of our own costs a third of the walk's speed.

Invariants:

- Memory is proportional to the tree's depth times the width of the
  directories on the current path, never to the size of the tree.
- Every error reaches the caller, in walk order: ``on_error(error)`` is called
  with a :class:`WalkError` and the walk goes on without that directory; with
  no ``on_error`` the error is raised and the walk is over.
- ``awalk`` reads directories in a worker thread, at most one batch ahead of
  the consumer, and yields to the event loop once per batch. It starts no task.
  When the consumer stops (``break``, an exception, cancellation, ``aclose``)
  the reader stops within one chunk of reads and closes its directories; after
  ``aclose()`` returns nothing of the walk is running.

Not hardened against a tree changed on purpose while it is walked (a directory
swapped for a symlink between listing and entering it); ``os.fwalk`` is.

This module is the synchronous walk and the public face of both; the async
reader lives in :mod:`tether._awalk`, the OS seam and :class:`WalkError` in
:mod:`tether._walkos`. Every name is importable from here.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from types import TracebackType
from typing import AnyStr, Generic

from tether import _walkos
from tether._awalk import AsyncWalk, awalk
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

__all__ = ["AsyncWalk", "Walk", "WalkError", "awalk", "walk"]


class _Cursor:
    """What a sync walk shares with its generator: kept apart so they form no cycle."""

    __slots__ = ("depth", "skip")

    def __init__(self) -> None:
        self.depth = 0
        self.skip = False


class Walk(Generic[AnyStr]):
    """A synchronous walk of a directory tree; see :func:`walk`."""

    __slots__ = ("_cursor", "_entries", "root")

    def __init__(
        self,
        root: AnyStr | os.PathLike[AnyStr],
        on_error: OnError | None,
        sort: bool,
        follow_symlinks: bool,
    ) -> None:
        _check_on_error(on_error)
        self.root: AnyStr = os.fspath(root)
        self._cursor = _Cursor()
        # The generator does not refer back to this object, so dropping the
        # walk (a `break` out of the loop) closes the generator at once.
        self._entries: Generator[os.DirEntry[AnyStr], None, None] = _generate(
            self.root, on_error, sort, follow_symlinks, self._cursor
        )

    @property
    def depth(self) -> int:
        """Depth of the entry last yielded: 1 for the root's children."""
        return self._cursor.depth

    def __iter__(self) -> Iterator[os.DirEntry[AnyStr]]:
        return self._entries

    def skip(self) -> None:
        """Do not enter the entry last yielded; does nothing if it is not a directory."""
        self._cursor.skip = True

    def close(self) -> None:
        """Stop the walk; iterating it again yields nothing."""
        self._entries.close()

    def __enter__(self) -> Walk[AnyStr]:
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _listing(
    path: AnyStr, depth: int, on_error: OnError | None, sort: bool
) -> list[os.DirEntry[AnyStr]] | None:
    """Read one whole directory, or report why not."""
    try:
        with _walkos._scandir(path) as it:
            entries = list(it)
    except OSError as exc:
        _report(on_error, _error(path, depth, exc, on_error is None), exc)
        return None
    if sort:
        entries.sort(key=_by_name)
    return entries


def _generate(
    root: AnyStr, on_error: OnError | None, sort: bool, follow: bool, cursor: _Cursor
) -> Generator[os.DirEntry[AnyStr], None, None]:
    raising = on_error is None
    # With symlinks followed, the (device, inode) of each directory on the
    # current path, to refuse entering one of its own ancestors.
    ancestors: dict[tuple[int, int], AnyStr] = {}
    idents: list[tuple[int, int]] = []
    if follow:
        try:
            st = _walkos._stat(root)
        except OSError as exc:
            _report(on_error, _error(root, 0, exc, raising), exc)
            return
        idents.append((st.st_dev, st.st_ino))
        ancestors[idents[-1]] = root
    top = _listing(root, 0, on_error, sort)
    if not top:
        return
    stack = [iter(top)]
    while stack:
        depth = cursor.depth = len(stack)
        for entry in stack[-1]:
            yield entry
            if cursor.skip:
                cursor.skip = False
                continue
            try:
                # Plain is_dir() is the fast call; it follows symlinks, so when
                # the walk does not, a symlink it calls a directory is passed
                # over here.
                if not entry.is_dir() or (not follow and entry.is_symlink()):
                    continue
                if follow:
                    st = entry.stat()
                    ident = (st.st_dev, st.st_ino)
            except OSError as exc:
                if not _link_failure(entry, exc, follow):
                    _report(on_error, _error(entry.path, depth, exc, raising), exc)
                continue
            if follow and ident in ancestors:
                _report(on_error, _loop_error(entry.path, depth, ancestors[ident], raising), None)
                continue
            children = _listing(entry.path, depth, on_error, sort)
            if children:
                stack.append(iter(children))
                if follow:
                    idents.append(ident)
                    ancestors[ident] = entry.path
                break
        else:
            stack.pop()
            if follow:
                del ancestors[idents.pop()]


def walk(
    root: AnyStr | os.PathLike[AnyStr],
    *,
    on_error: OnError | None = None,
    sort: bool = False,
    follow_symlinks: bool = False,
) -> Walk[AnyStr]:
    """Walk the tree under ``root``, yielding an ``os.DirEntry`` per file and directory.

    Iterate the result once. Entries come in pre-order (a directory just before
    its contents); ``.depth`` on the cursor is the depth of the entry last
    yielded (1 for the root's children) and ``.skip()`` keeps the walk out of
    the directory last yielded. ``break`` or ``close()`` stops the walk.

    ``sort``: yield each directory's entries sorted by name (by code point, or
    by byte for a ``bytes`` root) instead of in the order the OS lists them.

    ``follow_symlinks``: enter symlinks to directories. A symlink leading back
    to a directory on the current path is reported as a :class:`WalkError`
    with ``errno.ELOOP`` and not entered. The root is always followed.

    Error handling:
        Every failure to list or enter a directory (the root included: missing,
        not a directory, unreadable) becomes a :class:`WalkError`. With
        ``on_error`` it is passed to ``on_error`` and the walk goes on without
        that directory; ``on_error`` may raise to stop the walk. Without
        ``on_error`` it is raised and the walk is over. ``on_error=list.append``
        of a list collects them.

    Resource handling:
        A directory is read whole, then closed, before any of its entries is
        yielded: the walk holds no file descriptor between entries and memory
        proportional to depth times width. Names that are not valid UTF-8 come
        back with surrogate escapes (``os.fsencode`` restores the bytes), or as
        ``bytes`` when ``root`` is ``bytes``.
    """
    return Walk(root, on_error, sort, follow_symlinks)
