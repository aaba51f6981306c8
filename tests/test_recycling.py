"""--max-requests: processes are recycled under wrk load, each successor READY first; none fails.

gunicorn's option, done as a reload of one worker: the master starts the
successor in the slot, and only when it is READY does the old worker drain.
With ``--workers 0`` the process hands its sockets to a fresh copy, as HUP does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from loadclient import Load, LoadStats
from masterproc import MasterProc, pids_gone
from rolling import Outcome, load, parse_wrk
from test_master_faults import started_workers
from waiting import eventually

from proc import Tether, get, tether

pytestmark = pytest.mark.skipif(
    shutil.which("wrk") is None, reason="needs Debian's wrk (`make system-packages` installs it)"
)

RECYCLES = 3
LIMIT = ("--max-requests", "400", "--max-requests-jitter", "200", "--no-access-log")


def recycles(t: Tether) -> int:
    """The master's own count of workers replaced after their --max-requests."""
    return int(json.loads(get(t.debug_port, "/debug/workers")[1])["master"]["recycles"])


def next_mainpid(t: Tether, within: float) -> int:
    """The next MAINPID= a process of this service reports (the first one may have left)."""
    assert t.notify is not None
    t.notify.settimeout(within)
    while True:
        data = t.notify.recv(4096).decode()
        for line in data.splitlines():
            if line.startswith("MAINPID="):
                return int(line.removeprefix("MAINPID="))


def test_workers_are_recycled_under_load_with_no_failed_request() -> None:
    """Master mode, 2 workers: at least 3 recycles under load, 0 failed requests, exit 0."""
    with tether("plain:app", "--workers", "2", *LIMIT) as t:
        t.ready()
        with load(t.port, connections=16) as report:
            eventually(lambda: recycles(t) >= RECYCLES, f"{RECYCLES} recycles", 60)
        outcome = Outcome("tether")
        parse_wrk(report[0], outcome)
        assert outcome.requests > RECYCLES * 400, report[0]
        assert outcome.failed == 0, report[0]
        metrics = get(t.debug_port, "/metrics")[1]
        counted = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith('tether_worker_restarts_total{cause="recycling"}')
        )
        assert counted >= RECYCLES
        t.signal(signal.SIGTERM)
        assert t.wait() == 0
        err = t.stderr()
    assert err.count("served") >= RECYCLES and "took over from" in err, err


def test_one_process_hands_over_to_a_fresh_copy_with_no_failed_request() -> None:
    """--workers 0: past its count the process hands its sockets over; 0 failed requests."""
    successors: list[int] = []
    with tether("plain:app", *LIMIT) as t:
        first = int(t.wait_for("READY")["MAINPID"])
        try:
            with load(t.port, connections=16) as report:
                while len(successors) < RECYCLES:
                    successors.append(next_mainpid(t, within=60))
            outcome = Outcome("tether")
            parse_wrk(report[0], outcome)
            assert outcome.requests > RECYCLES * 400, report[0]
            assert outcome.failed == 0, report[0]
            assert first not in successors and len(set(successors)) == RECYCLES
            assert t.wait() == 0  # the first process drained and left
        finally:
            # Every process since the first is in its process group: stop them as one.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(first, signal.SIGTERM)
            assert pids_gone(successors, 30) == []


#: hello.py: each response starts with the pid that served it; with grow_kib.txt next to it,
#: each request also keeps that many KiB (written, so resident): a leak to recycle away.
PID_APP = """\
import os

HERE = os.path.dirname(os.path.abspath(__file__))
GROW = 0
if os.path.exists(os.path.join(HERE, "grow_kib.txt")):
    GROW = int(open(os.path.join(HERE, "grow_kib.txt")).read()) * 1024
kept = []


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if GROW:
        kept.append(b"\\x01" * GROW)
    body = f"{os.getpid()} ok\\n".encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
"""

CONNECTIONS = 8


async def recycle_under_load(
    directory: Path, workers: int, *args: str, recycled: int = 4
) -> tuple[LoadStats, str]:
    """Serve bounded keep-alive load until ``recycled`` workers were replaced; what it saw."""
    (directory / "hello.py").write_text(PID_APP)
    async with MasterProc(directory, "--no-access-log", *args, workers=workers) as master:
        await master.wait_for("READY")
        async with Load(master.port, connections=CONNECTIONS) as load:
            async with asyncio.timeout(90):
                while (await master.ctl("status"))["status"]["master"]["recycles"] < recycled:
                    await asyncio.sleep(0.05)
        master.seen_workers.update(started_workers(master.log()))
        assert await master.stop() == 0, master.log()
    return load.stats, master.log()


@pytest.mark.parametrize(("workers", "jitter"), [(1, 0), (2, 20)])
def test_a_worker_past_max_requests_stops_taking_requests_at_once(
    tmp_path: Path, workers: int, jitter: int
) -> None:
    """--max-requests 100 under load: no pid serves past 100 + jitter + one per connection."""
    stats, log = asyncio.run(
        recycle_under_load(
            tmp_path, workers, "--max-requests", "100", "--max-requests-jitter", str(jitter)
        )
    )
    assert stats.failed == 0, stats.errors
    served = dict(stats.versions)
    assert len(served) >= 4, served  # the last successor may not have served yet
    assert max(served.values()) <= 100 + jitter + CONNECTIONS, (served, log)


def test_a_worker_past_max_worker_memory_is_replaced_with_no_failed_request(
    tmp_path: Path,
) -> None:
    """A request handler that leaks 4 KiB a call: workers recycle past 64 MiB RSS; 0 fail."""
    (tmp_path / "grow_kib.txt").write_text("4")
    stats, log = asyncio.run(
        recycle_under_load(tmp_path, 2, "--max-worker-memory", "64", recycled=3)
    )
    assert stats.failed == 0, stats.errors
    assert log.count("passed --max-worker-memory 64 MiB") >= 3, log
    assert len(stats.versions) > 3, stats.versions


def test_a_due_worker_whose_successor_fails_takes_requests_again(tmp_path: Path) -> None:
    """One worker due while the code on disk is broken: it serves on, 0 fail; fixed, it recycles."""
    (tmp_path / "hello.py").write_text("from impl import app\n")
    (tmp_path / "impl.py").write_text(PID_APP)

    async def scenario() -> None:
        async with MasterProc(
            tmp_path, "--no-access-log", "--max-requests", "200", workers=1
        ) as master:
            await master.wait_for("READY")
            (first,) = await master.worker_pids()
            (tmp_path / "impl.py").write_text("raise RuntimeError('broken deploy')\n")
            async with Load(master.port, connections=CONNECTIONS) as load:
                async with asyncio.timeout(60):
                    while "takes requests again" not in master.log():
                        await asyncio.sleep(0.05)
                    served = load.stats.versions[str(first)]
                    while load.stats.versions[str(first)] < served + 200:
                        await asyncio.sleep(0.05)  # it serves on, past its limit
                    (tmp_path / "impl.py").write_text(PID_APP)
                    while (await master.ctl("status"))["status"]["master"]["recycles"] < 1:
                        await asyncio.sleep(0.05)
            master.seen_workers.update(started_workers(master.log()))
            assert load.stats.failed == 0, load.stats.errors
            assert (await master.worker_pids()) != [first]
            assert "RuntimeError: broken deploy" in master.log()

    asyncio.run(scenario())
