"""The kernel's OOM killer named as the cause of a worker's SIGKILL, from its cgroup's counter."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tether._oomkill import MemoryCgroup, OomWatch
from waiting import eventually

from proc import Tether


def fake_tree(tmp_path: Path, cgroup_lines: str, files: dict[str, str]) -> tuple[str, str]:
    """A /proc/4242/cgroup and a cgroup mount with ``files`` (paths relative to the mount)."""
    proc = tmp_path / "proc"
    (proc / "4242").mkdir(parents=True)
    (proc / "4242" / "cgroup").write_text(cgroup_lines)
    mount = tmp_path / "cgroup"
    for name, text in files.items():
        (mount / name).parent.mkdir(parents=True, exist_ok=True)
        (mount / name).write_text(text)
    return str(proc), str(mount)


V2_EVENTS = "low 0\nhigh 0\nmax 12\noom 2\noom_kill {}\noom_group_kill 0\n"
V1_CONTROL = "oom_kill_disable 0\nunder_oom 0\noom_kill {}\n"


def test_v2_counter_going_up_names_the_memory_limit(tmp_path: Path) -> None:
    """cgroup v2: oom_kill in memory.events rose, memory.max is named in the cause."""
    proc, mount = fake_tree(
        tmp_path,
        "0::/system.slice/app.service\n",
        {
            "system.slice/app.service/memory.events": V2_EVENTS.format(1),
            "system.slice/app.service/memory.max": f"{256 << 20}\n",
        },
    )
    watch = OomWatch.start(4242, proc=proc, cgroup=mount)
    assert watch is not None and watch.before == 1
    assert watch.cause() is None  # nothing happened yet
    events = Path(mount, "system.slice/app.service/memory.events")
    events.write_text(V2_EVENTS.format(2))
    assert watch.cause() == (
        "the kernel's OOM killer: cgroup /system.slice/app.service reached its memory limit "
        "of 256 MiB, memory.events oom_kill 1 -> 2; raise the limit, or recycle workers "
        "before they grow (--max-requests)"
    )


def test_v1_memory_controller_on_a_hybrid_host(tmp_path: Path) -> None:
    """cgroup v1 (hybrid): the memory controller's oom_control counter, limit_in_bytes."""
    proc, mount = fake_tree(
        tmp_path,
        "12:pids:/x\n4:memory:/x\n0::/x\n",
        {
            "memory/x/memory.oom_control": V1_CONTROL.format(0),
            "memory/x/memory.limit_in_bytes": f"{64 << 20}\n",
            "unified/x/cgroup.procs": "",
        },
    )
    watch = OomWatch.start(4242, proc=proc, cgroup=mount)
    assert watch is not None and watch.cgroup.version == 1
    Path(mount, "memory/x/memory.oom_control").write_text(V1_CONTROL.format(1))
    cause = watch.cause()
    assert cause is not None and "reached its memory limit of 64 MiB," in cause
    assert "memory.oom_control oom_kill 0 -> 1" in cause


def test_a_container_sees_its_own_cgroup_at_the_mount(tmp_path: Path) -> None:
    """Without a cgroup namespace the host's path is absent: the mount itself is the cgroup."""
    proc, mount = fake_tree(
        tmp_path,
        "0::/docker/abc123\n",
        {"memory.events": V2_EVENTS.format(0), "memory.max": "max\n"},
    )
    found = MemoryCgroup.of(4242, proc=proc, cgroup=mount)
    assert found is not None and found.directory == mount and found.limit() is None
    watch = OomWatch.start(4242, proc=proc, cgroup=mount)
    assert watch is not None
    Path(mount, "memory.events").write_text(V2_EVENTS.format(1))
    cause = watch.cause()
    assert cause is not None and "reached its memory limit, memory.events" in cause


@pytest.mark.parametrize(
    ("lines", "files"),
    [
        ("0::/x\n", {"x/cgroup.procs": ""}),  # v2 without the memory controller
        ("4:memory:/x\n", {"memory/x/memory.oom_control": "oom_kill_disable 0\n"}),  # old kernel
        ("", {}),  # no cgroups at all
    ],
)
def test_no_counter_no_claim(tmp_path: Path, lines: str, files: dict[str, str]) -> None:
    """Where the kernel keeps no OOM-kill count we can read, nothing is watched or claimed."""
    proc, mount = fake_tree(tmp_path, lines, files)
    assert OomWatch.start(4242, proc=proc, cgroup=mount) is None


def test_a_gone_process_has_no_cgroup(tmp_path: Path) -> None:
    """A pid without /proc/PID/cgroup (already gone) gives no cgroup, not an error."""
    assert MemoryCgroup.of(99999999, proc=str(tmp_path)) is None


@contextlib.contextmanager
def memory_limited_cgroup(limit: int) -> Iterator[Path]:
    """A child of this process's memory cgroup with ``limit`` bytes; removed at the end."""
    own = MemoryCgroup.of()
    if own is None or os.geteuid() != 0:
        pytest.skip("needs root and a memory cgroup this process can read")
    child = Path(own.directory, f"tether-test-{uuid.uuid4().hex[:8]}")
    try:
        child.mkdir()
        (child / ("memory.max" if own.version == 2 else "memory.limit_in_bytes")).write_text(
            str(limit)
        )
    except OSError as exc:
        with contextlib.suppress(OSError):
            child.rmdir()
        pytest.skip(f"cannot create a memory-limited cgroup here: {exc}")
    try:
        yield child
    finally:
        # Empty once every process in it is reaped (the test's processes are, by now).
        eventually(lambda: not (child / "cgroup.procs").read_text().split(), "an empty cgroup")
        child.rmdir()


def test_a_worker_killed_by_the_oom_killer_is_logged_with_the_memory_limit() -> None:
    """A real OOM kill in a 300 MiB cgroup: the master's line names the memory limit."""
    with memory_limited_cgroup(300 << 20) as cgroup:
        enter = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cgroup)]
        t = Tether([], prefix=enter)
        t.args = ["diag:hog", "--bind", f"127.0.0.1:{t.port}", "--no-debug", "--workers", "1"]
        try:
            t.start().ready()
            conn = http.client.HTTPConnection("127.0.0.1", t.port, timeout=30)
            with contextlib.suppress(http.client.HTTPException, OSError):
                conn.request("GET", "/hog?mib=600")
                conn.getresponse()
            conn.close()
            line = eventually(
                lambda: next((x for x in t.output().splitlines() if "SIGKILL" in x), None),
                "the worker's death in the master's log",
            )
            t.signal(signal.SIGTERM)
            t.wait()
        finally:
            t.close()
    assert "the kernel's OOM killer: cgroup " in line, line
    assert f"/{cgroup.name} reached its memory limit of 300 MiB" in line, line
    assert "replacing it" in line
