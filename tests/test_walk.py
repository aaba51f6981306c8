"""tether.walk and tether.awalk: order, depth, skip, errors, symlinks, odd names, early exit."""

from __future__ import annotations

import asyncio
import errno
import importlib
import os
import random
import shutil
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tether import WalkError, awalk, walk
from tether.errors import ConfigError, TetherError

walk_os = importlib.import_module("tether._walkos")  # the OS seam of both walks

# -- helpers ------------------------------------------------------------------


def make(root: Path, spec: dict[str, Any]) -> Path:
    """Create files (str contents) and directories (dicts) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for name, value in spec.items():
        if isinstance(value, dict):
            make(root / name, value)
        else:
            (root / name).write_text(value)
    return root


SMALL = {
    "a": {"a1": "", "a2": {"deep": ""}},
    "b": {"b1": "", "b2": ""},
    "c": "",
    "d": {},
}


def rel(root: Path | str, path: str) -> str:
    return os.path.relpath(path, root)


def sync_walk(root: Path | str, **kwargs: Any) -> list[tuple[str, int]]:
    """(relative path, depth) of every entry of a sync walk."""
    w = walk(str(root), **kwargs)
    return [(rel(root, entry.path), w.depth) for entry in w]


def async_walk(root: Path | str, **kwargs: Any) -> list[tuple[str, int]]:
    """(relative path, depth) of every entry of an async walk."""

    async def run() -> list[tuple[str, int]]:
        w = awalk(str(root), **kwargs)
        return [(rel(root, entry.path), w.depth) async for entry in w]

    return asyncio.run(run())


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def fail_listing(
    monkeypatch: pytest.MonkeyPatch, path: Path, exc: Callable[[str], OSError]
) -> None:
    """Make listing the directory ``path`` fail with ``exc(path)``."""
    real = os.scandir

    def scandir(target: Any) -> Any:
        if os.fsdecode(target) == str(path):
            raise exc(os.fsdecode(target))
        return real(target)

    monkeypatch.setattr(walk_os, "_scandir", scandir)


def denied(path: str) -> OSError:
    return PermissionError(errno.EACCES, "Permission denied", path)


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20,000 files, 100 per directory, two levels deep (hard links to one file: quick to make)."""
    root = tmp_path_factory.mktemp("big")
    source = tmp_path_factory.mktemp("source") / "file"
    source.touch()
    for a in range(20):
        for b in range(10):
            leaf = root / f"d{a:02d}" / f"e{b}"
            leaf.mkdir(parents=True)
            for i in range(100):
                os.link(source, leaf / f"f{i:03d}")
    return root


BIG_ENTRIES = 20 + 200 + 20_000

# -- order, depth, sort --------------------------------------------------------


def test_walk_yields_every_entry_once_each_directory_before_its_contents(tmp_path: Path) -> None:
    """Every file and directory under the root appears once, after its parent, never the root."""
    make(tmp_path, SMALL)
    seen = sync_walk(tmp_path)
    paths = [path for path, _ in seen]
    expected = {
        rel(tmp_path, os.path.join(top, name))
        for top, dirs, files in os.walk(tmp_path)
        for name in dirs + files
    }
    assert sorted(paths) == sorted(expected)
    for path in paths:
        parent = os.path.dirname(path)
        if parent:
            assert paths.index(parent) < paths.index(path)


def test_depth_counts_levels_below_the_root(tmp_path: Path) -> None:
    """The cursor's depth is 1 for the root's children and grows by one per level."""
    make(tmp_path, SMALL)
    for path, depth in sync_walk(tmp_path):
        assert depth == path.count(os.sep) + 1


def test_sort_gives_a_deterministic_preorder(tmp_path: Path) -> None:
    """sort=True yields each directory's entries by name, each followed by its contents."""
    make(tmp_path, SMALL)
    assert [path for path, _ in sync_walk(tmp_path, sort=True)] == [
        "a",
        "a/a1",
        "a/a2",
        "a/a2/deep",
        "b",
        "b/b1",
        "b/b2",
        "c",
        "d",
    ]


def test_skip_keeps_the_walk_out_of_the_directory_just_yielded(tmp_path: Path) -> None:
    """skip() after a directory prunes its contents; skip() after a file changes nothing."""
    make(tmp_path, SMALL)
    w = walk(str(tmp_path), sort=True)
    seen = []
    for entry in w:
        seen.append(rel(tmp_path, entry.path))
        if entry.name in ("a", "b1"):
            w.skip()
    assert seen == ["a", "b", "b/b1", "b/b2", "c", "d"]


def test_walk_is_streaming_with_memory_bounded_by_depth_and_width(big_tree: Path) -> None:
    """A streaming walk's peak memory is a small fraction of listing the whole tree."""

    def count() -> int:
        return sum(1 for _ in walk(str(big_tree)))

    def peak(fn: Callable[[], object]) -> int:
        tracemalloc.start()
        try:
            fn()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    streaming = peak(count)
    listed = peak(lambda: list(walk(str(big_tree))))
    assert streaming * 10 < listed


def test_break_stops_the_walk_and_keeps_nothing_open(big_tree: Path) -> None:
    """Leaving a walk early leaves no file descriptor open and no thread behind."""
    threads, fds = set(threading.enumerate()), open_fds()
    for count, _ in enumerate(walk(str(big_tree)), 1):
        if count == 500:
            break
    assert open_fds() == fds
    assert set(threading.enumerate()) == threads


def test_close_and_with_end_the_walk(tmp_path: Path) -> None:
    """After close(), or leaving its with block, a walk yields nothing more."""
    make(tmp_path, SMALL)
    w = walk(str(tmp_path))
    next(iter(w))
    w.close()
    assert list(w) == []
    with walk(str(tmp_path)) as w2:
        next(iter(w2))
    assert list(w2) == []


# -- errors ---------------------------------------------------------------------


def test_missing_root_raises_walk_error_naming_the_fix(tmp_path: Path) -> None:
    """A root that does not exist raises a WalkError that is an OSError with ENOENT."""
    missing = tmp_path / "nope"
    with pytest.raises(WalkError) as caught:
        list(walk(str(missing)))
    error = caught.value
    assert str(error) == (
        f"cannot walk {str(missing)!r}: no such directory; pass the path of an existing directory"
    )
    assert isinstance(error, OSError)
    assert isinstance(error, TetherError)
    assert (error.errno, error.filename, error.path, error.depth) == (
        errno.ENOENT,
        str(missing),
        str(missing),
        0,
    )
    assert isinstance(error.__cause__, FileNotFoundError)


def test_missing_root_with_on_error_reports_and_yields_nothing(tmp_path: Path) -> None:
    """With on_error, a missing root is reported once and the walk is empty."""
    errors: list[WalkError] = []
    assert list(walk(str(tmp_path / "nope"), on_error=errors.append)) == []
    assert [e.errno for e in errors] == [errno.ENOENT]


def test_root_that_is_a_file_is_not_a_directory(tmp_path: Path) -> None:
    """A file as the root is a WalkError with ENOTDIR, in walk and in awalk."""
    file = tmp_path / "f"
    file.write_text("x")
    message = f"cannot walk {str(file)!r}: not a directory; walk the directory that holds it"
    with pytest.raises(WalkError, match="not a directory") as caught:
        list(walk(str(file)))
    assert str(caught.value) == message
    assert caught.value.errno == errno.ENOTDIR
    with pytest.raises(WalkError) as caught_async:
        async_walk(file)
    assert str(caught_async.value) == message


def test_unreadable_root_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A root that cannot be listed is reported with EACCES and the permission fix."""
    fail_listing(monkeypatch, tmp_path, denied)
    with pytest.raises(WalkError) as caught:
        list(walk(str(tmp_path)))
    assert str(caught.value) == (
        f"cannot walk {str(tmp_path)!r}: Permission denied; grant read and search permission,"
        " or pass on_error= to report it and walk on"
    )


def test_unreadable_subdirectory_is_reported_in_order_and_the_walk_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """on_error sees the unreadable directory right after its entry; its siblings are walked."""
    make(tmp_path, SMALL)
    fail_listing(monkeypatch, tmp_path / "a", denied)
    for run in (sync_walk, async_walk):
        errors: list[WalkError] = []
        seen = run(tmp_path, sort=True, on_error=errors.append)
        assert [path for path, _ in seen] == ["a", "b", "b/b1", "b/b2", "c", "d"]
        assert [(e.path, e.depth, e.errno) for e in errors] == [
            (str(tmp_path / "a"), 1, errno.EACCES)
        ]
        assert str(errors[0]) == f"cannot list {str(tmp_path / 'a')!r}: Permission denied; skipped"


def test_unreadable_subdirectory_raises_without_on_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without on_error the first unreadable directory stops the walk with a WalkError."""
    make(tmp_path, SMALL)
    fail_listing(monkeypatch, tmp_path / "b", denied)
    message = (
        f"cannot list {str(tmp_path / 'b')!r}: Permission denied; grant read and search"
        " permission, or pass on_error= to report it and walk on"
    )
    seen = []
    with pytest.raises(WalkError) as caught:
        for entry in walk(str(tmp_path), sort=True):
            seen.append(entry.name)
    assert str(caught.value) == message
    assert (caught.value.errno, caught.value.depth) == (errno.EACCES, 1)
    assert seen == ["a", "a1", "a2", "deep", "b"]
    with pytest.raises(WalkError) as caught_async:
        async_walk(tmp_path, sort=True, batch_size=2)
    assert str(caught_async.value) == message


def test_skipping_an_unreadable_directory_reports_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory skipped as soon as it is yielded is never read: its failure is not reported."""
    make(tmp_path, SMALL)
    fail_listing(monkeypatch, tmp_path / "a", denied)

    def skip_a(w: Any, entry: os.DirEntry[str]) -> None:
        if entry.name == "a":
            w.skip()

    expected = ["a", "b", "b1", "b2", "c", "d"]
    w = walk(str(tmp_path), sort=True)
    seen = []
    for entry in w:
        seen.append(entry.name)
        skip_a(w, entry)
    assert seen == expected

    async def run() -> list[str]:
        aw = awalk(str(tmp_path), sort=True)
        names = []
        async for entry in aw:
            names.append(entry.name)
            skip_a(aw, entry)
        return names

    assert asyncio.run(run()) == expected


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every directory")
def test_really_unreadable_subdirectory_is_reported(tmp_path: Path) -> None:
    """A directory with mode 000 is reported through on_error (non-root runs only)."""
    make(tmp_path, SMALL)
    (tmp_path / "a").chmod(0)
    try:
        errors: list[WalkError] = []
        list(walk(str(tmp_path), on_error=errors.append))
        assert [(e.errno, e.path) for e in errors] == [(errno.EACCES, str(tmp_path / "a"))]
    finally:
        (tmp_path / "a").chmod(0o755)


def test_on_error_raising_stops_the_walk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception from on_error ends the walk and reaches the caller unchanged."""
    make(tmp_path, SMALL)
    fail_listing(monkeypatch, tmp_path / "a", denied)

    class Stop(Exception):
        pass

    def on_error(error: WalkError) -> None:
        raise Stop(error.path)

    for run in (sync_walk, async_walk):
        with pytest.raises(Stop):
            run(tmp_path, sort=True, on_error=on_error)


def test_bad_arguments_are_refused_up_front(tmp_path: Path) -> None:
    """A non-callable on_error or a batch_size below 1 is a ConfigError before any read."""
    with pytest.raises(ConfigError, match="on_error must be a callable taking a WalkError"):
        walk(str(tmp_path), on_error=[])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"batch_size must be a whole number >= 1, got 0"):
        awalk(str(tmp_path), batch_size=0)
    with pytest.raises(TypeError):
        walk(42)  # type: ignore[type-var]


# -- symlinks -------------------------------------------------------------------


def test_symlinks_are_yielded_but_not_entered_by_default(tmp_path: Path) -> None:
    """A symlink to a directory is an entry of its own; the walk does not go through it."""
    make(tmp_path, {"real": {"inside": ""}})
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for run in (sync_walk, async_walk):
        assert [p for p, _ in run(tmp_path, sort=True)] == ["link", "real", "real/inside"]


def test_follow_symlinks_enters_linked_directories(tmp_path: Path) -> None:
    """follow_symlinks=True walks through a symlink to a directory."""
    make(tmp_path, {"real": {"inside": ""}})
    (tmp_path / "link").symlink_to(tmp_path / "real")
    expected = ["link", "link/inside", "real", "real/inside"]
    for run in (sync_walk, async_walk):
        assert [p for p, _ in run(tmp_path, sort=True, follow_symlinks=True)] == expected


def test_broken_symlinks_are_entries_not_errors(tmp_path: Path) -> None:
    """A dangling symlink is yielded as a symlink, with or without following, and raises nothing."""
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    (tmp_path / "self").symlink_to(tmp_path / "self")
    for follow in (False, True):
        for run in (sync_walk, async_walk):
            assert [p for p, _ in run(tmp_path, sort=True, follow_symlinks=follow)] == [
                "dangling",
                "self",
            ]


def test_symlink_loop_is_reported_and_not_entered(tmp_path: Path) -> None:
    """Following symlinks, a link back to an ancestor is reported with ELOOP, once per visit."""
    make(tmp_path, {"a": {"file": ""}})
    (tmp_path / "a" / "up").symlink_to(tmp_path)
    for run in (sync_walk, async_walk):
        errors: list[WalkError] = []
        paths = [
            p for p, _ in run(tmp_path, sort=True, follow_symlinks=True, on_error=errors.append)
        ]
        assert paths == ["a", "a/file", "a/up"]
        assert [(e.errno, e.path, e.depth) for e in errors] == [
            (errno.ELOOP, str(tmp_path / "a" / "up"), 2)
        ]
        assert str(errors[0]) == (
            f"cannot list {str(tmp_path / 'a' / 'up')!r}: symlink loop back to"
            f" {str(tmp_path)!r}; not entered; skipped"
        )


def test_symlink_loop_raises_without_on_error(tmp_path: Path) -> None:
    """Without on_error, following symlinks into a loop raises the ELOOP WalkError."""
    (tmp_path / "loop").symlink_to(tmp_path)
    with pytest.raises(WalkError, match="symlink loop back to") as caught:
        list(walk(str(tmp_path), follow_symlinks=True))
    assert caught.value.errno == errno.ELOOP


# -- names and changing trees -----------------------------------------------------


def test_names_that_are_not_utf8_round_trip(tmp_path: Path) -> None:
    """A non-UTF-8 name comes back surrogate-escaped for a str root, as raw bytes for bytes."""
    raw = b"caf\xe9"
    root = os.fsencode(tmp_path)
    os.mkdir(os.path.join(root, raw))
    open(os.path.join(root, raw, b"inner"), "wb").close()
    names = [entry.name for entry in walk(str(tmp_path))]
    assert [os.fsencode(name) for name in names] == [raw, b"inner"]
    bytes_names = [entry.name for entry in walk(root)]
    assert bytes_names == [raw, b"inner"]

    async def collect() -> list[bytes]:
        return [entry.path async for entry in awalk(root)]

    assert asyncio.run(collect()) == [os.path.join(root, raw), os.path.join(root, raw, b"inner")]


def test_directory_removed_during_the_walk_is_reported_and_the_walk_goes_on(
    tmp_path: Path,
) -> None:
    """A directory deleted after it was listed is reported as gone; later entries still come."""
    make(tmp_path, SMALL)
    errors: list[WalkError] = []
    seen = []
    for entry in walk(str(tmp_path), sort=True, on_error=errors.append):
        seen.append(entry.name)
        if entry.name == "b":
            shutil.rmtree(entry.path)
        if entry.name == "c":
            (tmp_path / "late").write_text("")
    assert seen == ["a", "a1", "a2", "deep", "b", "c", "d"]
    assert [(e.errno, e.path) for e in errors] == [(errno.ENOENT, str(tmp_path / "b"))]
    assert (
        str(errors[0])
        == f"cannot list {str(tmp_path / 'b')!r}: it disappeared during the walk; skipped"
    )


def test_awalk_survives_a_tree_changing_under_it(big_tree: Path, tmp_path: Path) -> None:
    """Deleting and adding directories during an awalk only ever yields ENOENT reports."""
    tree = tmp_path / "tree"
    shutil.copytree(big_tree / "d00", tree)

    async def run() -> list[WalkError]:
        errors: list[WalkError] = []
        async for entry in awalk(str(tree), sort=True, batch_size=16, on_error=errors.append):
            if entry.name == "e0":
                for victim in ("e5", "e6", "e7"):
                    shutil.rmtree(tree / victim)
                (tree / "e9" / "new").mkdir()
        return errors

    assert {e.errno for e in asyncio.run(run())} <= {errno.ENOENT}


# -- awalk ----------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 3, 1024])
@pytest.mark.parametrize("sort", [False, True])
def test_awalk_yields_what_walk_yields(big_tree: Path, batch_size: int, sort: bool) -> None:
    """awalk gives the same entries, order and depths as walk, whatever the batch size."""
    tree = big_tree / "d01"
    assert async_walk(tree, sort=sort, batch_size=batch_size) == sync_walk(tree, sort=sort)


@pytest.mark.parametrize(("under", "batch_size"), [("d02", 1), ("d02", 7), ("", 64), ("", 4096)])
def test_awalk_skip_prunes_even_what_was_read_ahead(
    big_tree: Path, under: str, batch_size: int
) -> None:
    """skip() in awalk prunes exactly what it prunes in walk, though the reader runs ahead."""
    root = big_tree / under

    def wanted(name: str) -> bool:
        return name in ("d01", "e3", "e4", "f050")

    w = walk(str(root), sort=True)
    expected = []
    for entry in w:
        expected.append(entry.path)
        if wanted(entry.name):
            w.skip()

    async def run() -> list[str]:
        aw = awalk(str(root), sort=True, batch_size=batch_size)
        seen = []
        async for entry in aw:
            seen.append(entry.path)
            if wanted(entry.name):
                aw.skip()
        return seen

    assert asyncio.run(run()) == expected
    assert str(root / "e3" / "f000") not in expected


@pytest.mark.parametrize("seed", range(6))
def test_awalk_matches_walk_on_random_trees_with_random_skips(tmp_path: Path, seed: int) -> None:
    """On random trees (empty directories included), awalk and walk agree entry by entry."""
    rng = random.Random(seed)

    def grow(level: int) -> dict[str, Any]:
        spec: dict[str, Any] = {}
        for i in range(rng.randrange(0, 6)):
            if level < 3 and rng.random() < 0.4:
                spec[f"d{i}"] = grow(level + 1)
            else:
                spec[f"f{i}"] = ""
        return spec

    make(tmp_path, grow(0))
    skipped = {name for name in (f"d{i}" for i in range(6)) if rng.random() < 0.3}

    w = walk(str(tmp_path), sort=True)
    expected = []
    for entry in w:
        expected.append((entry.path, w.depth))
        if entry.name in skipped:
            w.skip()

    async def run(batch_size: int) -> list[tuple[str, int]]:
        aw = awalk(str(tmp_path), sort=True, batch_size=batch_size)
        seen = []
        async for entry in aw:
            seen.append((entry.path, aw.depth))
            if entry.name in skipped:
                aw.skip()
        return seen

    for batch_size in (1, 2, 5, 64):
        assert asyncio.run(run(batch_size)) == expected


def test_awalk_reads_at_most_one_batch_ahead(
    big_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However slow the consumer, the reader never gets more than about two batches ahead of it."""
    real = os.scandir
    read = [0]

    def counting_scandir(path: Any) -> Iterator[Any]:
        with real(path) as it:
            for entry in it:
                read[0] += 1
                yield entry

    monkeypatch.setattr(walk_os, "_scandir", counting_scandir)

    async def run() -> int:
        worst = 0
        consumed = 0
        async for _ in awalk(str(big_tree), batch_size=50):
            consumed += 1
            worst = max(worst, read[0] - consumed)
            await asyncio.sleep(0)
        return worst

    assert asyncio.run(run()) <= 2 * 50 + 100  # two batches plus one directory's first chunk


def test_awalk_break_leaves_no_task_thread_or_fd(
    big_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Breaking out of awalk starts no task; the reader stops within a batch and closes its dirs."""
    real = os.scandir
    opened = [0]

    def scandir(path: Any) -> Any:
        opened[0] += 1
        return real(path)

    monkeypatch.setattr(walk_os, "_scandir", scandir)
    threads, fds = set(threading.enumerate()), open_fds()

    async def run() -> None:
        with ThreadPoolExecutor(max_workers=1) as executor:
            count = 0
            async for _ in awalk(str(big_tree), batch_size=64, executor=executor):
                count += 1
                if count == 10:
                    break
            assert asyncio.all_tasks() == {asyncio.current_task()}
        # The executor is shut down: whatever the reader was doing has ended.
        assert opened[0] <= 4  # the root, a branch, a leaf or two: not the 221 directories

    asyncio.run(run())
    assert open_fds() == fds
    assert set(threading.enumerate()) == threads


def test_awalk_cancelled_consumer_leaves_nothing_running(big_tree: Path) -> None:
    """Cancelling a task in the middle of an awalk ends the walk: no task, thread or fd remains."""
    threads, fds = set(threading.enumerate()), open_fds()

    async def run() -> None:
        started = asyncio.Event()

        async def consume() -> None:
            async for _ in awalk(str(big_tree), batch_size=64):
                started.set()
                await asyncio.sleep(0)

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(run())
    assert open_fds() == fds
    assert set(threading.enumerate()) == threads


def test_aclose_after_cancellation_waits_for_the_reader(
    big_tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer cancelled while the reader is mid-read: aclose() returns only once it is done."""
    real = os.scandir
    reading, release = threading.Event(), threading.Event()
    open_scans = [0]

    def slow_scandir(path: Any) -> Iterator[Any]:
        open_scans[0] += 1
        try:
            with real(path) as it:
                if os.fsdecode(path).endswith("e5"):
                    reading.set()
                    release.wait(10)
                yield from it
        finally:
            open_scans[0] -= 1

    monkeypatch.setattr(walk_os, "_scandir", slow_scandir)

    async def run() -> None:
        with ThreadPoolExecutor(max_workers=1) as executor:
            w = awalk(str(big_tree), sort=True, batch_size=64, executor=executor)

            async def consume() -> None:
                async for _ in w:
                    pass

            task = asyncio.create_task(consume())
            await asyncio.get_running_loop().run_in_executor(None, reading.wait, 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            closing = asyncio.create_task(w.aclose())
            for _ in range(10):
                await asyncio.sleep(0)
            assert not closing.done()  # the reader is still inside a read
            release.set()
            await asyncio.wait_for(closing, 10)
            assert open_scans == [0]  # the reader finished its read and closed every directory

    asyncio.run(run())


def test_aclose_returns_after_the_reader_let_go(big_tree: Path) -> None:
    """aclose(), or leaving async with, returns once the reader holds no directory open."""

    async def run() -> None:
        fds = open_fds()  # the event loop's own are open from here on
        async with awalk(str(big_tree), batch_size=64) as w:
            async for _ in w:
                break
        assert open_fds() == fds
        assert [entry async for entry in w] == []

    asyncio.run(run())


def test_event_loop_stays_responsive_during_an_awalk_of_a_large_tree(big_tree: Path) -> None:
    """During a 20,000-file awalk the loop gets a turn every batch; a 1 ms timer stays on time."""

    async def run() -> tuple[int, int, float]:
        lags: list[float] = []
        turns = 0
        done = asyncio.Event()

        async def timer() -> None:
            while not done.is_set():
                before = time.perf_counter()
                await asyncio.sleep(0.001)
                lags.append(time.perf_counter() - before - 0.001)

        async def spinner() -> None:
            nonlocal turns
            while not done.is_set():
                turns += 1
                await asyncio.sleep(0)

        others = [asyncio.create_task(timer()), asyncio.create_task(spinner())]
        await asyncio.sleep(0)
        count = 0
        async for _ in awalk(str(big_tree), batch_size=256):
            count += 1
        done.set()
        await asyncio.gather(*others)
        return count, turns, max(lags)

    count, turns, worst_lag = asyncio.run(run())
    assert count == BIG_ENTRIES
    assert turns >= BIG_ENTRIES // 256 // 2  # a blocked loop would give the spinner no turn
    assert worst_lag < 0.25  # generous: shared machines stall; the bound catches a blocked loop
