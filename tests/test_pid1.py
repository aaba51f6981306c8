"""`tether run` as PID 1 of a PID namespace, as `docker run` and Kubernetes start it.

Each test starts `unshare --pid --fork --mount-proc tether run ...`: tether is
PID 1 there, its own /proc shows only the namespace, and when PID 1 exits the
kernel kills everything left in it. The app (tests/apps/family.py) leaves
orphans, reports process states from inside the namespace, and waits for a
child of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from waiting import eventually

from proc import Tether, free_port, get, on_a_terminal

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="a PID namespace needs root and unshare(1)",
)

#: Orphans must be reaped within this long of exiting.
REAP_WITHIN = 1.0
ORPHAN_LIFE = 0.3  # tests/apps/family.py


class Pid1(Tether):
    """`tether run` as PID 1 of a fresh PID namespace."""

    #: The main process's pid in the namespace, from its first READY=1.
    mainpid = 0

    #: What runs `tether run` inside the namespace, if anything (it then becomes PID 1).
    within: tuple[str, ...] = ()

    def start(self) -> Pid1:
        self.prefix = ["unshare", "--pid", "--fork", "--mount-proc", *self.within]
        super().start()
        assert self.proc is not None
        self.unshare = self.proc.pid
        return self

    @property
    def init(self) -> int:
        """The host's pid of the namespace's PID 1 (unshare's only child)."""
        return child_of(self.unshare)

    def kill_init(self, sig: int) -> None:
        os.kill(self.init, sig)

    def json(self, path: str) -> Any:
        status, body, _ = get(self.port, path)
        assert status == 200, body
        return json.loads(body)


def child_of(parent: int) -> int:
    """The host's pid of ``parent``'s first child."""
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{name}/stat").read_bytes()
                if int(stat[stat.rfind(b")") + 2 :].split()[1]) == parent:
                    return int(name)
    raise AssertionError(f"{parent} has no child")


@contextlib.contextmanager
def pid1(*extra: str) -> Iterator[Pid1]:
    """A ready `tether run family:app` as PID 1 of its own PID namespace."""
    t = Pid1([])
    t.args = [
        "family:app",
        "--bind",
        f"127.0.0.1:{t.port}",
        "--debug-bind",
        f"127.0.0.1:{t.debug_port}",
        *extra,
    ]
    t.start()
    try:
        t.mainpid = int(t.wait_for("READY")["MAINPID"])
        yield t
    finally:
        t.close()


MODES = [
    pytest.param(("--workers", "0"), id="one-process"),
    pytest.param(("--workers", "2"), id="master"),
]


def wait_gone(t: Pid1, pids: list[int], within: float) -> dict[str, str]:
    """Wait until every pid has left the namespace's /proc; the last states seen."""
    query = ",".join(map(str, pids))
    states: dict[str, str] = {}

    def all_gone() -> bool:
        states.update(t.json(f"/state?pids={query}"))
        return all(s == "gone" for s in states.values())

    with contextlib.suppress(AssertionError):  # the caller asserts on the states it gets
        eventually(all_gone, "every pid gone", within)
    return states


@pytest.mark.parametrize("mode", MODES)
def test_ten_orphans_are_reaped_within_a_second(mode: tuple[str, ...]) -> None:
    """Ten orphaned grandchildren of the app are reaped within a second of exiting."""
    with pid1(*mode) as t:
        orphans: list[int] = t.json("/orphans?n=10")
        assert len(orphans) == 10
        states = wait_gone(t, orphans, ORPHAN_LIFE + REAP_WITHIN)
        assert set(states.values()) == {"gone"}, f"not reaped: {states}"
        t.kill_init(signal.SIGTERM)
        assert t.wait() == 0


@pytest.mark.parametrize("mode", MODES)
def test_a_child_the_app_waits_for_keeps_its_exit_status(mode: tuple[str, ...]) -> None:
    """The app's own child, a zombie while orphans are reaped around it, still reports 7."""
    with pid1(*mode) as t:
        result = t.json("/waited")
        assert result == {"zombie": True, "orphans_reaped": True, "status": 7}
        t.kill_init(signal.SIGTERM)
        assert t.wait() == 0


@pytest.mark.parametrize("signame", ["SIGHUP", "SIGUSR2"])
def test_reload_as_pid1_with_one_process_keeps_serving(signame: str) -> None:
    """HUP or USR2 to PID 1 with --workers 0 reloads: a new process serves, PID 1 stays."""
    with pid1("--workers", "0") as t:
        init = t.init
        first = t.json("/pid")
        t.kill_init(getattr(signal, signame))
        fields = t.wait_for("READY")
        assert int(fields["MAINPID"]) != first
        assert wait_gone(t, [first], 10) == {str(first): "gone"}  # the old one drained, exited
        assert t.json("/pid") == int(fields["MAINPID"])
        assert t.init == init and t.proc is not None and t.proc.poll() is None
        assert get(t.debug_port, "/readyz")[0] == 200
        t.kill_init(signal.SIGTERM)  # reaches the new main process
        assert t.wait() == 0


def test_upgrade_as_pid1_with_a_master_keeps_serving() -> None:
    """USR2 to PID 1 with a master: the new master takes over and PID 1 stays."""
    with pid1("--workers", "1") as t:
        init, old_master = t.init, t.mainpid
        t.kill_init(signal.SIGUSR2)
        while int(t.wait_for("MAINPID")["MAINPID"]) == old_master:
            pass  # the old master's status lines until it names its successor
        assert wait_gone(t, [old_master], 10) == {str(old_master): "gone"}
        assert get(t.port, "/")[0] == 200
        assert get(t.debug_port, "/readyz")[0] == 200
        assert t.init == init and t.proc is not None and t.proc.poll() is None
        t.kill_init(signal.SIGTERM)
        assert t.wait() == 0


def test_a_worker_keeps_its_exit_status_under_the_subreaper_master() -> None:
    """A worker that exits with 7 among reaped orphans is reported as such by its master."""
    with pid1("--workers", "1") as t:
        first = t.json("/pid")
        t.json("/orphans?n=10")
        with contextlib.suppress(OSError):
            get(t.port, "/exit?code=7", timeout=5)

        def replaced() -> bool:
            with contextlib.suppress(OSError):
                return bool(t.json("/pid") != first)
            return False

        eventually(replaced, "the replacement worker answers", 30)
        t.kill_init(signal.SIGTERM)
        assert t.wait() == 0
        assert "exited with code 7" in t.stderr()


def test_pid1_exits_with_the_service_exit_code() -> None:
    """An app that cannot be imported: PID 1 exits 3, as `tether run` would outside a container."""
    t = Pid1(["broken_import:app", "--workers", "0", "--bind", "127.0.0.1:0", "--no-debug"])
    t.start()
    try:
        assert t.wait() == 3
    finally:
        t.close()


def test_ctrl_c_in_a_terminal_reaches_the_service_once() -> None:
    """`docker run -it`, then Ctrl-C: one SIGINT reaches the service (a graceful stop), not two."""
    port = free_port()
    argv = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "tether", "run"]
    argv += ["family:app", "--workers", "0", "--bind", f"127.0.0.1:{port}", "--no-debug"]
    with on_a_terminal(argv) as (proc, controller):
        assert proc.stderr is not None
        for line in proc.stderr:  # until it serves
            if "serving family:app" in line:
                break
        os.write(controller, b"\x03")  # what the terminal sends on Ctrl-C
        rest = proc.stderr.read()
        assert proc.wait(30) == 0, rest
        assert rest.count("SIGINT received") == 1, rest
        assert "second SIGINT" not in rest


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None,
    reason="systemd-socket-activate is not installed (Debian package systemd)",
)
def test_sockets_passed_to_pid1_reach_the_service() -> None:
    """Socket activation into a container (LISTEN_PID=1): the service serves on that socket."""
    t = Pid1([])
    unused = free_port()  # --bind names a port tether must not touch: the socket is inherited
    t.args = ["family:app", "--workers", "0", "--bind", f"127.0.0.1:{unused}", "--no-debug"]
    t.within = (
        "systemd-socket-activate",
        "-l",
        f"127.0.0.1:{t.port}",
        "--fdname=app",
        "-E",
        "PATH",
        "-E",
        "NOTIFY_SOCKET",
    )
    t.start()
    try:
        # systemd-socket-activate listens, then starts the command on the first connection.
        def answered() -> bool:
            try:
                return bool(t.json("/pid") == 2)
            except ConnectionRefusedError:
                return False  # not listening yet

        eventually(answered, "the service answers as pid 2", 20)
        assert t.wait_for("READY")["MAINPID"] == "2"
        with socket.socket() as s:
            s.bind(("127.0.0.1", unused))
        t.kill_init(signal.SIGTERM)
        assert t.wait() == 0
        assert "inherited socket" in t.stderr()
    finally:
        t.close()


def test_pid1_exits_128_plus_the_signal_that_killed_the_service() -> None:
    """The service killed by SIGKILL (an OOM kill): PID 1 exits 137, as a shell would say."""
    with pid1("--workers", "0") as t:
        os.kill(child_of(t.init), signal.SIGKILL)
        assert t.wait() == 128 + signal.SIGKILL
