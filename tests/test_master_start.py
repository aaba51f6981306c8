"""Starting generations under faults: a sibling that fails while one serves, READY at import,
the OS refusing to start a worker. Real masters and workers, loopback only."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import time
from pathlib import Path

from loadclient import Load
from masterproc import MasterProc
from test_master_faults import http_get, pids_of, settled, started_workers, until

#: hello.py: worker 2 waits for the test (a FIFO) before it imports the code, so that a
#: deploy can land between worker 1's READY and worker 2's import.
DELAYED = """\
import os

if os.environ.get("TETHER_WORKER_ID") == "2":
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "go")) as fifo:
        fifo.read()
from impl import app
"""

IMPL = """\
import os

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = f"VERSION {os.getpid()}\\n".encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
"""


async def first_worker_ready(master: MasterProc) -> None:
    """Wait (on the control socket, once it exists) until one worker of generation 1 is READY."""
    async with asyncio.timeout(30):
        while not os.path.exists(master.control):
            await asyncio.sleep(0.05)
    await until(master, lambda s: "ready" in [w["state"] for w in s["generations"][0]["workers"]])


def deploy(directory: Path, version: str) -> None:
    (directory / "impl.py").write_text(IMPL.replace("VERSION", version))


def test_a_sibling_failing_while_one_serves_never_takes_the_service_down(tmp_path: Path) -> None:
    """A broken deploy lands between worker 1's READY and worker 2's import: worker 1 serves on."""
    (tmp_path / "hello.py").write_text(DELAYED)
    os.mkfifo(tmp_path / "go")
    deploy(tmp_path, "v1")

    async def scenario() -> None:
        async with MasterProc(tmp_path, "--reload-timeout", "30") as master:
            await first_worker_ready(master)
            (tmp_path / "impl.py").write_text("raise RuntimeError('broken deploy')\n")
            await asyncio.to_thread((tmp_path / "go").write_text, "go")
            async with Load(master.port, connections=4) as load:
                await asyncio.sleep(10)  # the observation window the operator cares about
            status = (await master.ctl("status"))["status"]
            assert master.proc is not None and master.proc.poll() is None
            assert load.stats.failed == 0, load.stats.errors
            assert load.stats.ok > 50 and set(load.stats.versions) == {"v1"}
            log = master.log()
            attempts = len(
                re.findall(r"started worker \d+ \(pid \d+, generation 1\) in slot 1", log)
            )
            assert attempts >= 3, log  # retried, with backoff: not a few dozen
            assert attempts <= 8, log
            assert log.count("RuntimeError: broken deploy") == attempts, log
            assert "failure 2 in a row" in log, log
            assert status["generations"][0]["state"] == "serving"
            deploy(tmp_path, "v2")
            master.proc.send_signal(signal.SIGHUP)
            status = await until(
                master, lambda s: settled(s, 2) and s["generations"][0]["number"] == 2
            )
            assert {
                (await asyncio.to_thread(http_get, master.port))[1].split()[0] for _ in range(4)
            } == {"v2"}
            master.seen_workers.update(started_workers(master.log()))

    asyncio.run(scenario())


#: A deploy written for systemd Type=notify: it says READY=1 at import, then its startup fails.
EAGER_READY = """\
import os
import socket

address = os.environ.get("NOTIFY_SOCKET")
if address:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"READY=1", address)

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "migrations pending"})
"""


def test_ready_at_import_cannot_promote_a_generation_that_fails_startup(tmp_path: Path) -> None:
    """An app that says READY=1 at import and then fails startup: the reload fails, v1 serves."""
    (tmp_path / "hello.py").write_text("from impl import app\n")
    deploy(tmp_path, "v1")

    async def scenario() -> None:
        async with MasterProc(tmp_path, "--reload-timeout", "30") as master:
            await master.wait_for("READY")
            async with Load(master.port, connections=8) as load:
                (tmp_path / "impl.py").write_text(EAGER_READY)
                outcome = await master.ctl("reload")
                status = await until(master, lambda s: settled(s, 2))
            assert outcome["ok"] is False, outcome
            assert "before READY" in outcome["error"], outcome
            assert status["generations"][0]["number"] == 1
            assert load.stats.failed == 0, load.stats.errors
            assert set(load.stats.versions) == {"v1"}
            master.seen_workers.update(started_workers(master.log()))

    asyncio.run(scenario())


def no_fd_left(pid: int) -> int:
    """An fd limit below what ``pid`` has open: any new fd it asks for is refused (EMFILE).

    A few below, not at: a connection it is closing right now must not make room.
    """
    return len(os.listdir(f"/proc/{pid}/fd")) - 3


def test_a_spawn_refused_by_the_os_fails_the_reload_and_the_master_serves_on(
    tmp_path: Path,
) -> None:
    """With no fd left (RLIMIT_NOFILE lowered under it), a reload fails; raised again, it works."""
    (tmp_path / "hello.py").write_text("from impl import app\n")
    deploy(tmp_path, "v1")

    async def scenario() -> None:
        async with MasterProc(tmp_path, "--reload-timeout", "30") as master:
            await master.wait_for("READY")
            master.seen_workers.update(await master.worker_pids())
            deploy(tmp_path, "v2")
            soft, hard = resource.prlimit(master.pid, resource.RLIMIT_NOFILE)
            async with Load(master.port, connections=4) as load:
                resource.prlimit(master.pid, resource.RLIMIT_NOFILE, (no_fd_left(master.pid), hard))
                try:
                    master.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
                    await master.wait_for("RELOADING")
                    await master.wait_for("READY")  # the reload is over: failed
                finally:
                    resource.prlimit(master.pid, resource.RLIMIT_NOFILE, (soft, hard))
                status = await until(master, lambda s: settled(s, 2))
                assert status["last_reload"]["ok"] is False, status
                assert "Too many open files" in status["last_reload"]["error"], status
                assert (await master.ctl("reload"))["ok"]
            assert load.stats.failed == 0, load.stats.errors
            assert (await asyncio.to_thread(http_get, master.port))[1].startswith("v2 ")
            assert "reload failed: a new worker could not be started" in master.log()
            master.seen_workers.update(started_workers(master.log()))

    asyncio.run(scenario())


def test_a_replacement_refused_by_the_os_is_retried(tmp_path: Path) -> None:
    """A worker killed while no fd is left is replaced once fds are available again."""
    (tmp_path / "hello.py").write_text("from impl import app\n")
    deploy(tmp_path, "v1")

    async def scenario() -> None:
        async with MasterProc(tmp_path, workers=2) as master:
            await master.wait_for("READY")
            victim, survivor = await master.worker_pids()
            soft, hard = resource.prlimit(master.pid, resource.RLIMIT_NOFILE)
            resource.prlimit(master.pid, resource.RLIMIT_NOFILE, (no_fd_left(master.pid), hard))
            try:
                os.kill(victim, signal.SIGKILL)
                async with asyncio.timeout(30):
                    while "cannot start a worker in slot" not in master.log():
                        await asyncio.sleep(0.05)
            finally:
                resource.prlimit(master.pid, resource.RLIMIT_NOFILE, (soft, hard))
            status = await until(master, lambda s: settled(s, 2))
            assert survivor in pids_of(status) and victim not in pids_of(status)
            master.seen_workers.update(started_workers(master.log()))

    asyncio.run(scenario())


#: hello.py for a stop during a partly-up start: worker 2's import blocks on a FIFO nobody
#: writes, while worker 1 serves a slow request and accepts tracked background jobs.
PARTLY_UP = """\
import asyncio
import os

HERE = os.path.dirname(os.path.abspath(__file__))
if os.environ.get("TETHER_WORKER_ID") == "2":
    with open(os.path.join(HERE, "never")) as fifo:
        fifo.read()

import tether

JOB_SECONDS = float(open(os.path.join(HERE, "job_seconds.txt")).read())


async def job(n):
    await asyncio.sleep(JOB_SECONDS)
    with open(os.path.join(HERE, "jobs.txt"), "a") as f:
        f.write(n + "\\n")


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/slow":
        open(os.path.join(HERE, "slow.began"), "w").close()
        await asyncio.sleep(2)
    elif scope["path"] == "/spawn":
        n = scope["query_string"].decode()
        tether.spawn(job(n), name=f"job {n}")
    body = f"done {os.getpid()}\\n".encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
"""


def answer_or_cut(port: int, path: str) -> tuple[int, str]:
    """``http_get``, with a connection cut before the answer as status 0."""
    try:
        return http_get(port, path)
    except OSError as exc:
        return 0, f"cut: {exc!r}"


async def term_while_partly_up(
    tmp_path: Path, job_seconds: float, *args: str
) -> tuple[int, tuple[int, str], list[str], str]:
    """TERM the master while worker 1 serves a slow request and 20 jobs, worker 2 starting.

    Returns the master's exit code, the slow request's answer, the jobs that
    finished, and the master's log.
    """
    (tmp_path / "hello.py").write_text(PARTLY_UP)
    (tmp_path / "job_seconds.txt").write_text(str(job_seconds))
    os.mkfifo(tmp_path / "never")
    async with MasterProc(tmp_path, "--reload-timeout", "60", *args) as master:
        await first_worker_ready(master)
        status = (await master.ctl("status"))["status"]
        states = [w["state"] for w in status["generations"][0]["workers"]]
        assert sorted(states) == ["ready", "starting"], status
        master.seen_workers.update(await master.worker_pids())
        for n in range(20):
            assert (await asyncio.to_thread(http_get, master.port, f"/spawn?{n}"))[0] == 200
        slow = asyncio.ensure_future(asyncio.to_thread(answer_or_cut, master.port, "/slow"))
        async with asyncio.timeout(10):
            while not (tmp_path / "slow.began").exists():
                await asyncio.sleep(0.02)
        assert master.proc is not None
        master.proc.send_signal(signal.SIGTERM)
        began = time.monotonic()
        code = await asyncio.wait_for(asyncio.to_thread(master.proc.wait), 30)
        took = time.monotonic() - began
        answer = await slow
        master.seen_workers.update(started_workers(master.log()))
    jobs_file = tmp_path / "jobs.txt"
    jobs = jobs_file.read_text().split() if jobs_file.exists() else []
    return code, answer, jobs, f"exit {code} after {took:.2f}s\n{master.log()}"


def test_a_stop_while_the_first_generation_is_partly_up_drains_the_ready_worker(
    tmp_path: Path,
) -> None:
    """TERM with worker 1 serving and worker 2 starting: the request and 20 jobs finish, exit 0."""
    code, answer, jobs, log = asyncio.run(term_while_partly_up(tmp_path, 1.0))
    assert answer[0] == 200 and answer[1].startswith("done "), (answer, log)
    assert sorted(jobs, key=int) == [str(n) for n in range(20)], log
    assert code == 0, log


def test_work_abandoned_in_a_stop_while_partly_up_is_named_with_exit_4(tmp_path: Path) -> None:
    """Jobs longer than the budget, in a stop during a partly-up start: named, and exit 4."""
    code, answer, jobs, log = asyncio.run(
        term_while_partly_up(tmp_path, 60.0, "--graceful-timeout", "3")
    )
    assert answer[0] == 200, (answer, log)
    assert jobs == []
    assert code == 4, log
    assert all(f"job {n}" in log for n in range(20)), log
