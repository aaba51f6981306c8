"""Starting generations under faults: a sibling that fails while one serves, READY at import,
the OS refusing to start a worker. Real masters and workers, loopback only."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
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
