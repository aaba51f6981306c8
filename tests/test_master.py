"""The master with real workers (``tether run --workers 0``), real signals, loopback only."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from loadclient import Load
from masterproc import APP, MasterProc, free_port, pids_gone, write_app
from tether._control import bind_control
from tether.config import RunConfig
from tether.errors import ConfigError
from tether.worker import worker_argv, worker_base_env


def get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        return str(response.read().decode())


def test_reloads_under_load_lose_no_request(tmp_path: Path) -> None:
    """Ten reloads under keep-alive load: zero failed requests, new code after each."""
    write_app(tmp_path, "v0")

    async def scenario() -> None:
        async with MasterProc(tmp_path) as master:
            await master.wait_for("READY")
            async with Load(master.port, connections=16) as load:
                for n in range(1, 11):
                    (tmp_path / "version.txt").write_text(f"v{n}\n")
                    reply = await master.ctl("reload")
                    assert reply["ok"], reply
                    body = await asyncio.to_thread(get, master.port)
                    assert body.startswith(f"v{n} "), body
                    await master.worker_pids()
                    before = load.stats.ok
                    while load.stats.ok < before + 50:
                        await asyncio.sleep(0.01)
            stats = load.stats
            assert stats.failed == 0, stats.errors
            assert all(stats.versions[f"v{n}"] > 0 for n in range(11)), stats.versions
            assert await master.stop() == 0

    asyncio.run(scenario())


def test_broken_deploy_keeps_the_old_generation_serving(tmp_path: Path) -> None:
    """A deploy that fails at import (SIGHUP): every request succeeds on the old code."""
    write_app(tmp_path, "v1")

    async def scenario() -> None:
        async with MasterProc(tmp_path, "--reload-timeout", "20") as master:
            await master.wait_for("READY")
            async with Load(master.port, connections=16) as load:
                (tmp_path / "hello.py").write_text("def broken(:\n")
                master.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
                await master.wait_for("RELOADING")
                await master.wait_for("READY")
                status = (await master.ctl("status"))["status"]
            assert status["last_reload"]["ok"] is False
            assert "SyntaxError" in status["last_reload"]["error"]
            assert load.stats.failed == 0, load.stats.errors
            assert set(load.stats.versions) == {"v1"}
            assert "reload failed" in master.log()
            write_app(tmp_path, "v2")
            assert (await master.ctl("reload"))["ok"]
            assert (await asyncio.to_thread(get, master.port)).startswith("v2 ")

    asyncio.run(scenario())


def test_kill_9_of_the_master_leaves_no_worker(tmp_path: Path) -> None:
    """After kill -9 of the master, every worker is gone within 2 s."""
    write_app(tmp_path, "v1")

    async def scenario() -> None:
        async with MasterProc(tmp_path) as master:
            await master.wait_for("READY")
            pids = await master.worker_pids()
            assert len(pids) == 2
            os.kill(master.pid, signal.SIGKILL)
            assert pids_gone(pids, 2.0) == []

    asyncio.run(scenario())


def test_a_killed_worker_is_replaced(tmp_path: Path) -> None:
    """kill -9 of a worker: the master starts another in its slot, and keeps serving."""
    write_app(tmp_path, "v1")

    async def scenario() -> None:
        async with MasterProc(tmp_path) as master:
            await master.wait_for("READY")
            victim, survivor = await master.worker_pids()
            os.kill(victim, signal.SIGKILL)
            while "2 worker" not in (await master.wait_for("STATUS"))["STATUS"]:
                pass
            pids = await master.worker_pids()
            assert survivor in pids and victim not in pids and len(pids) == 2
            status = (await master.ctl("status"))["status"]
            restarts = sorted(w["restarts"] for w in status["generations"][0]["workers"])
            assert restarts == [0, 1]
            assert "exited" not in master.log() or "was killed by SIGKILL" in master.log()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("module", "flags", "expected"),
    [
        ("raise RuntimeError('no database')\n", [], "RuntimeError: no database"),
        ("import time\ntime.sleep(60)\n", ["--reload-timeout", "2"], "was not READY within"),
    ],
    ids=["import-error", "hangs"],
)
def test_first_generation_never_ready_exits_3(
    tmp_path: Path, module: str, flags: list[str], expected: str
) -> None:
    """A first generation that fails or hangs ends the master with code 3 and the reason."""
    (tmp_path / "hello.py").write_text(module)
    bind = f"127.0.0.1:{free_port()}"
    run = [sys.executable, "-m", "tether", "run", "hello:app", "--workers", "2"]
    proc = subprocess.run(
        [*run, "--bind", bind, "--no-debug", *flags],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 3, proc.stderr
    assert expected in proc.stderr
    last = proc.stderr.strip().splitlines()
    assert any(line.startswith("tether: error: the app failed to start:") for line in last)


def test_ttin_and_ttou_scale_the_generation(tmp_path: Path) -> None:
    """TTIN adds a worker, TTOU removes one."""
    write_app(tmp_path, "v1")

    async def scenario() -> None:
        async with MasterProc(tmp_path, workers=1) as master:
            await master.wait_for("READY")
            master.proc.send_signal(signal.SIGTTIN)  # type: ignore[union-attr]
            while "2 worker" not in (await master.wait_for("STATUS"))["STATUS"]:
                pass
            assert len(await master.worker_pids()) == 2
            assert (await master.ctl("scale", n=1))["ok"]
            for _ in range(100):
                if len(await master.worker_pids()) == 1:
                    break
                await asyncio.sleep(0.05)
            assert len(await master.worker_pids()) == 1

    asyncio.run(scenario())


def test_control_socket_is_private_and_refuses_files(tmp_path: Path) -> None:
    """--control makes a 0600 socket, and refuses a regular file or an unwritable directory."""
    sock = bind_control(str(tmp_path / "ctl.sock"))
    try:
        assert os.stat(tmp_path / "ctl.sock").st_mode & 0o777 == 0o600
    finally:
        sock.close()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError) as info:
        bind_control(str(tmp_path / "file"))
    assert str(info.value) == (
        f"cannot create --control {tmp_path / 'file'}: the path exists and is not a socket; "
        "remove it or choose another path with --control"
    )
    with pytest.raises(ConfigError, match="does not exist"):
        bind_control(str(tmp_path / "missing" / "ctl.sock"))
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ConfigError, match="is not writable"):
            bind_control(str(locked / "ctl.sock"))


def test_control_path_that_is_a_file_is_exit_2(tmp_path: Path) -> None:
    """tether run --workers 2 --control FILE fails before starting anything, with code 2."""
    (tmp_path / "file").write_text("x")
    run = [sys.executable, "-m", "tether", "run", "hello:app", "--workers", "2", "--no-debug"]
    proc = subprocess.run(
        [*run, "--bind", f"127.0.0.1:{free_port()}", "--control", str(tmp_path / "file")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "is not a socket" in proc.stderr


def test_worker_command_line_and_environment() -> None:
    """Workers run the single-process runtime on inherited sockets, with a watchdog."""
    config = RunConfig(app="m:app", workers=2, watchdog_timeout=7, graceful_timeout=3)
    argv = worker_argv(config, "/run/w1.sock", ("py", "-m", "tether"))
    assert argv[:7] == ["py", "-m", "tether", "run", "m:app", "--workers", "0"]
    assert argv[7:9] == ["--debug-bind", "unix:/run/w1.sock"]
    assert "--bind" not in argv and argv[argv.index("--drain-delay") + 1] == "0"
    env = worker_base_env({"NOTIFY_SOCKET": "/x", "LISTEN_FDS": "1", "HOME": "/h"}, config)
    assert env == {"HOME": "/h", "WATCHDOG_USEC": "7000000"}


def test_usr2_upgrade_hands_over_without_failures(tmp_path: Path) -> None:
    """USR2: a new master takes the sockets, rewrites the pidfile; the old one exits 0."""
    write_app(tmp_path, "v1")
    pidfile = tmp_path / "master.pid"

    async def scenario() -> None:
        async with MasterProc(tmp_path, "--pidfile", str(pidfile)) as master:
            await master.wait_for("READY")
            assert pidfile.read_text().strip() == str(master.pid)
            old_workers = await master.worker_pids()
            async with Load(master.port, connections=8) as load:
                master.proc.send_signal(signal.SIGUSR2)  # type: ignore[union-attr]
                fields = await master.wait_for("MAINPID", 60)
                new_pid = int(fields["MAINPID"])
                assert new_pid != master.pid
                assert await master.stop(60) == 0  # it was already leaving: exits 0
                before = load.stats.ok
                while load.stats.ok < before + 100:
                    await asyncio.sleep(0.01)
            try:
                assert load.stats.failed == 0, load.stats.errors
                assert pidfile.read_text().strip() == str(new_pid)
                assert pids_gone(old_workers, 30) == []
                status = (await master.ctl("status"))["status"]
                assert status["master"]["pid"] == new_pid
            finally:
                os.kill(new_pid, signal.SIGTERM)
                assert pids_gone([new_pid], 30) == []
            assert not pidfile.exists()

    asyncio.run(scenario())


def test_stale_listen_env_is_ignored(tmp_path: Path) -> None:
    """LISTEN_FDS meant for another pid does not confuse the master: it binds its own."""
    write_app(tmp_path, "v1")

    async def scenario() -> None:
        os.environ.update(LISTEN_FDS="1", LISTEN_PID="1", LISTEN_FDNAMES="app")
        try:
            async with MasterProc(tmp_path, workers=1) as master:
                await master.wait_for("READY")
        finally:
            for key in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
                os.environ.pop(key, None)
        assert await asyncio.to_thread(lambda: True)

    asyncio.run(scenario())
    with socket.socket() as s:  # the port was released
        s.bind(("127.0.0.1", 0))


def test_ctl_status_line_shows_reload_state_and_restarts() -> None:
    """`tether ctl status` says when a reload runs or is queued, failed reloads and restarts."""
    from tether.ctl import format_status

    master = {"pid": 7, "state": "generation 3 serving with 2 worker(s)", "workers": 2}
    master |= {"uptime": 5.0, "reloads": 4, "reloads_failed": 1, "reloading": True}
    master |= {"reload_queued": True, "restarts": 2}
    assert format_status({"master": master, "generations": []}) == (
        "master 7: generation 3 serving with 2 worker(s); 2 worker(s) wanted; up 5.0s; "
        "4 reload(s) (1 failed); reloading now, one more queued; 2 worker restart(s)"
    )


def _priority(pid: int, tid: int | None = None) -> tuple[int, int]:
    """(scheduling policy, niceness) of a process, or of one of its threads."""
    where = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    fields = Path(where).read_text().rsplit(")", 1)[1].split()
    return int(fields[38]), int(fields[16])


def _threads_priorities(pid: int) -> set[tuple[int, int]]:
    """Every live thread's (policy, niceness); a thread that ends while listed is skipped."""
    found = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            found.add(_priority(pid, int(tid)))
    return found


NORMAL = (os.SCHED_OTHER, 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may give a worker its priority back")
def test_new_generation_starts_at_idle_priority_until_ready(tmp_path: Path) -> None:
    """During a reload the new worker runs under SCHED_IDLE until READY, then like the old."""
    write_app(tmp_path, "v1")

    async def scenario() -> None:
        async with MasterProc(tmp_path, workers=1) as master:
            await master.wait_for("READY")
            (old,) = await master.worker_pids()
            assert _threads_priorities(old) == {NORMAL}
            # The next deploy takes a second to import: long enough to look at it.
            (tmp_path / "hello.py").write_text("import time\ntime.sleep(1.5)\n" + APP)
            os.kill(master.pid, signal.SIGHUP)
            starting: list[int] = []
            while not starting:
                status = (await master.ctl("status"))["status"]
                starting = [
                    w["pid"]
                    for g in status["generations"]
                    for w in g["workers"]
                    if w["state"] == "starting" and w["exit"] is None
                ]
            master.seen_workers.update(starting)
            assert _priority(starting[0]) == (os.SCHED_IDLE, 0)
            while "generation 2 serving" not in (await master.wait_for("STATUS"))["STATUS"]:
                pass
            assert starting[0] in await master.worker_pids()
            assert _threads_priorities(starting[0]) == {NORMAL}  # every thread it started too

    asyncio.run(scenario())
