"""The app's own prometheus_client metrics on tether's /metrics: real processes, the real
library in multiprocess mode, and its own text parser on every answer."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from masterproc import MasterProc, free_port, pids_gone

from proc import get, tether

#: Counts every request three ways: a counter, a histogram, and a gauge whose value only
#: counts while its worker lives (livesum). ``app_workers_up`` is 1 per live worker.
APP = """\
import os

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("app_requests", "requests the app answered")
LATENCY = Histogram("app_latency_seconds", "time the app took")
UP = Gauge("app_workers_up", "live workers", multiprocess_mode="livesum")
HANDLED = Gauge("app_handled_live", "answered by live workers", multiprocess_mode="livesum")
UP.set(1)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    with LATENCY.time():
        REQUESTS.inc()
        HANDLED.inc()
    body = f"{os.getpid()} {os.environ.get('PROMETHEUS_MULTIPROC_DIR')}".encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
"""

#: The same, plus a metric that takes one of tether's names (it must be left out).
CLASHING_APP = APP.replace(
    "UP.set(1)\n", 'UP.set(1)\nGauge("tether_ready", "the app should not name this").set(7)\n'
)


#: Where prometheus_client's multiprocess mode keeps its files (the library's own name).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def scrape(port: int) -> dict[str, Any]:
    """/metrics parsed by prometheus_client's parser; every family name appears once."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    families = list(text_string_to_metric_families(text))
    names = [f.name for f in families]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    return {f.name: f for f in families}


def value(families: dict[str, Any], sample: str) -> float:
    """The one unlabelled sample called ``sample``."""
    family = families[sample.removesuffix("_total").removesuffix("_count")]
    found = [s.value for s in family.samples if s.name == sample and not s.labels]
    assert len(found) == 1, family.samples
    return float(found[0])


def send(port: int, n: int, answered: collections.Counter[int]) -> str:
    """``n`` requests; counts which pid answered each; the directory the app was given."""
    where = ""
    for _ in range(n):
        status, body, _ = get(port)
        assert status == 200, body
        pid, where = body.split(" ", 1)
        answered[int(pid)] += 1
    return where


def kept_files(directory: str) -> set[str]:
    """The counter and histogram files in ``directory`` not written by a live worker."""
    live = {int(p.name.split("_")[-1][:-3]) for p in Path(directory).glob("gauge_live*.db")}
    return {
        p.name
        for p in Path(directory).glob("*.db")
        if not p.name.startswith("gauge_") and p.name.split("_")[-1][:-3] not in map(str, live)
    }


async def until_status(master: MasterProc, check: Any, limit: float = 60.0) -> dict[str, Any]:
    """Ask ``tether ctl status`` until ``check(status)`` holds."""
    async with asyncio.timeout(limit):
        while True:
            status: dict[str, Any] = (await master.ctl("status"))["status"]
            if check(status):
                return status
            await asyncio.sleep(0.05)


def serving(status: dict[str, Any], n: int, without: set[int]) -> bool:
    """One generation of ``n`` ready workers, none of them in ``without``, and no reload."""
    gens = status["generations"]
    return (
        not status["master"]["reloading"]
        and len(gens) == 1
        and [w["state"] for w in gens[0]["workers"]] == ["ready"] * n
        and not without & {w["pid"] for w in gens[0]["workers"]}
    )


@pytest.mark.timeout(180)
def test_master_sums_the_apps_metrics_across_a_reload_and_a_kill(tmp_path: Path) -> None:
    """2 workers: counter and histogram = every request; livesum = live workers only, after
    a HUP and a kill -9; the directory is the master's and goes with it."""
    (tmp_path / "hello.py").write_text(APP)

    async def scenario() -> None:
        answered: collections.Counter[int] = collections.Counter()
        async with MasterProc(tmp_path, workers=2, debug=True) as master:
            await master.wait_for("READY")
            first = set(await master.worker_pids())
            where = await asyncio.to_thread(send, master.port, 20, answered)
            assert Path(where).name == "prometheus"
            assert Path(where).parent.name.startswith(f"tether-master-{master.pid}-")
            families = await asyncio.to_thread(scrape, master.debug_port)
            assert value(families, "app_requests_total") == 20
            assert value(families, "app_latency_seconds_count") == 20
            assert value(families, "app_workers_up") == 2
            assert value(families, "app_handled_live") == 20
            assert value(families, "tether_ready") == 1  # tether's own beside the app's
            # Each worker's private /metrics shows none of the app's: nothing counted twice.
            tether_total = families["tether_http_requests"].samples
            assert sum(s.value for s in tether_total if s.name.endswith("_total")) == 20

            # A reload: the old generation exits; its live gauges go, its counts stay.
            os.kill(master.pid, signal.SIGHUP)
            await until_status(master, lambda s: serving(s, 2, first))
            families = await asyncio.to_thread(scrape, master.debug_port)
            assert value(families, "app_requests_total") == 20
            assert value(families, "app_latency_seconds_count") == 20
            assert value(families, "app_workers_up") == 2
            assert value(families, "app_handled_live") == 0
            # What the exited workers kept is merged into one file per kind, read since.
            assert kept_files(where) == {"counter_exited.db", "histogram_exited.db"}

            # kill -9: the replaced worker's counts stay, its live gauges go.
            answered.clear()
            await asyncio.to_thread(send, master.port, 30, answered)
            second = set(await master.worker_pids())
            victim, by_victim = answered.most_common(1)[0]
            assert victim in second and by_victim > 0
            os.kill(victim, signal.SIGKILL)
            await until_status(master, lambda s: serving(s, 2, {victim}))
            master.seen_workers.update(await master.worker_pids())
            families = await asyncio.to_thread(scrape, master.debug_port)
            assert value(families, "app_requests_total") == 50
            assert value(families, "app_latency_seconds_count") == 50
            assert value(families, "app_workers_up") == 2
            assert value(families, "app_handled_live") == 30 - by_victim
            assert kept_files(where) == {"counter_exited.db", "histogram_exited.db"}
            assert await master.stop() == 0
        assert not Path(where).parent.exists(), "the master's directory outlived it"

    asyncio.run(scenario())


def test_single_process_serves_the_default_registry_without_tethers_names(
    tmp_path: Path,
) -> None:
    """--workers 0: the app's default registry on /metrics; an app metric named tether_* is
    left out (tether's own stays), and the log says so."""
    (tmp_path / "clash.py").write_text(CLASHING_APP)
    answered: collections.Counter[int] = collections.Counter()
    with tether("clash:app", "--app-dir", str(tmp_path)) as t:
        t.ready()
        where = send(t.port, 5, answered)
        assert where == "None"  # no multiprocess mode for one process
        families = scrape(t.debug_port)
        assert value(families, "app_requests_total") == 5
        assert value(families, "app_latency_seconds_count") == 5
        assert value(families, "app_handled_live") == 5
        assert value(families, "tether_ready") == 1
        t.signal(signal.SIGTERM)
        assert t.wait() == 0
    assert "the app's metric 'tether_ready' is left out of /metrics" in t.stderr()


def write_counts(directory: Path, n: int) -> None:
    """What an earlier process left in ``directory``: ``n`` requests counted, then it exited."""
    code = (
        "from prometheus_client import Counter\n"
        f"Counter('app_requests', 'requests the app answered').inc({n})\n"
    )
    subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, MULTIPROC_ENV: str(directory)},
        check=True,
        timeout=60,
    )


@pytest.mark.timeout(120)
def test_a_directory_the_user_names_is_used_as_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PROMETHEUS_MULTIPROC_DIR set: the workers write there, what was in it still counts,
    a worker's live gauges end with it, and the directory outlives the master."""
    (tmp_path / "hello.py").write_text(APP)
    mine = tmp_path / "prom"
    mine.mkdir()
    write_counts(mine, 5)

    async def scenario() -> None:
        answered: collections.Counter[int] = collections.Counter()
        monkeypatch.setenv(MULTIPROC_ENV, str(mine))  # the master's environment
        async with MasterProc(tmp_path, workers=1, debug=True) as master:
            await master.wait_for("READY")
            first = set(await master.worker_pids())
            where = await asyncio.to_thread(send, master.port, 3, answered)
            assert where == str(mine)
            families = await asyncio.to_thread(scrape, master.debug_port)
            assert value(families, "app_requests_total") == 8
            assert value(families, "app_workers_up") == 1
            os.kill(master.pid, signal.SIGHUP)
            await until_status(master, lambda s: serving(s, 1, first))
            families = await asyncio.to_thread(scrape, master.debug_port)
            assert value(families, "app_requests_total") == 8
            assert value(families, "app_workers_up") == 1
            assert await master.stop() == 0
        assert not pids_gone(sorted(master.seen_workers), 30)
        left = sorted(p.name for p in mine.iterdir())
        assert left and not [name for name in left if name.startswith("gauge_live")], left

    asyncio.run(scenario())


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_missing_user_directory_is_one_line_and_exit_2(tmp_path: Path, workers: str) -> None:
    """PROMETHEUS_MULTIPROC_DIR naming no directory: one line with the fix, exit 2."""
    (tmp_path / "hello.py").write_text(APP)
    missing = tmp_path / "missing"
    argv = [sys.executable, "-m", "tether", "run", "hello:app", "--workers", workers]
    argv += ["--bind", f"127.0.0.1:{free_port()}", "--no-debug"]
    # Its own TMPDIR (short: unix sockets go there): a master's start sweeps what dead
    # masters left there and says so (seen: the parallel suite's killed masters added that
    # line to the one expected).
    with tempfile.TemporaryDirectory(prefix="tether-", dir="/tmp") as own:
        proc = subprocess.run(
            argv,
            cwd=tmp_path,
            env={**os.environ, MULTIPROC_ENV: str(missing), "TMPDIR": own},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"tether: error: {MULTIPROC_ENV}={missing} does not exist; create it (empty) before "
        f"starting, or unset {MULTIPROC_ENV} and tether gives the workers a directory of its own"
    ]


def test_no_app_metrics_leaves_the_app_alone(tmp_path: Path) -> None:
    """--no-app-metrics: workers get no multiprocess directory; /metrics is tether's alone."""
    (tmp_path / "hello.py").write_text(APP)
    answered: collections.Counter[int] = collections.Counter()
    with tether("hello:app", "--app-dir", str(tmp_path), "--workers", "1", "--no-app-metrics") as t:
        t.ready()
        assert send(t.port, 2, answered) == "None"
        families = scrape(t.debug_port)
        assert "app_requests" not in families
        assert all(name.startswith("tether_") for name in families), sorted(families)
