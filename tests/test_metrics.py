"""/metrics in both modes: exact request counts, histograms, and counters that survive workers."""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from masterproc import MasterProc
from tether._metricdefs import METRICS
from tether.metrics import (
    LATENCY_BUCKETS,
    Aggregator,
    ProcessMetrics,
    WorkerTarget,
    exposition,
    final_path,
    write_final,
)

from proc import tether

#: An app whose status is in its path: GET /status/404 answers 404.
STATUS_APP = """\
import asyncio
import os
import time


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    status = int(path.rsplit("/", 1)[1]) if path.startswith("/status/") else 200
    if path == "/slow":
        await asyncio.sleep(60)
    if path == "/block":
        time.sleep(1.5)  # blocks the event loop, as careless code does
    if path == "/boom":
        raise RuntimeError("boom")
    if path == "/stream":
        pid = [(b"x-pid", str(os.getpid()).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": pid})
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        await send({"type": "http.response.body", "body": b"defg", "more_body": True})
        await send({"type": "http.response.body"})  # the end, without a body key at all
        return
    body = b"x" * 10
    headers = [(b"content-length", b"10"), (b"x-pid", str(os.getpid()).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
"""

#: (path, how many times, the status it answers)
PLAN = [("/", 7, "200"), ("/status/404", 3, "404"), ("/status/503", 2, "503"), ("/boom", 1, "500")]


#: How many requests each worker pid answered (send_plan notes it from the x-pid header).
ANSWERED: collections.Counter[int] = collections.Counter()


def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            ANSWERED[int(response.headers["x-pid"])] += 1
            return int(response.status)
    except urllib.error.HTTPError as exc:
        with exc:
            if exc.headers["x-pid"]:
                ANSWERED[int(exc.headers["x-pid"])] += 1
            return exc.code


def scrape(port: int) -> dict[str, Any]:
    """/metrics parsed with prometheus_client's parser: family name -> family."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def values(family: Any, sample: str) -> dict[tuple[tuple[str, str], ...], float]:
    out: dict[tuple[tuple[str, str], ...], float] = {}
    s: Sample
    for s in family.samples:
        if s.name == sample:
            out[tuple(sorted(s.labels.items()))] = s.value
    return out


def by_status(families: dict[str, Any]) -> dict[str, float]:
    """tether_http_requests_total summed by status."""
    out: dict[str, float] = {}
    for labels, value in values(
        families["tether_http_requests"], "tether_http_requests_total"
    ).items():
        status = dict(labels)["status"]
        out[status] = out.get(status, 0.0) + value
    return out


def histogram_count(families: dict[str, Any]) -> float:
    family = families["tether_http_request_duration_seconds"]
    return sum(values(family, "tether_http_request_duration_seconds_count").values())


def send_plan(port: int, times: int = 1) -> dict[str, float]:
    """Send every request of PLAN ``times`` over; the expected counts by status."""
    expected: dict[str, float] = {}
    for _ in range(times):
        for path, n, status in PLAN:
            for _ in range(n):
                assert http_status(port, path) == int(status)
                expected[status] = expected.get(status, 0.0) + 1
    return expected


DOCS = (Path(__file__).parent.parent / "docs" / "observability.md").read_text()
DASHBOARD = (Path(__file__).parent.parent / "deploy" / "grafana-dashboard.json").read_text()


def check_types(families: dict[str, Any], master: bool) -> None:
    """Every family tether exposes is a defined metric, with its type and labels."""
    for name, family in families.items():
        definition = METRICS[name]
        assert family.type == definition.kind, (name, family.type)
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == set(definition.labels), (name, sample)
    expected = {d.name for d in METRICS.values() if master or d.where == "process"}
    assert set(families) == expected, set(families) ^ expected


def documented() -> dict[str, set[tuple[str, str, tuple[str, ...]]]]:
    """The rows of docs/observability.md's metric tables: (name, type, labels) per table."""
    section = DOCS.split("## The metrics", 1)[1].split("\n## ", 1)[0]
    where = "process"
    out: dict[str, set[tuple[str, str, tuple[str, ...]]]] = {"process": set(), "master": set()}
    for line in section.splitlines():
        if line.startswith("Master mode adds"):
            where = "master"
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| `") or len(cells) != 4:
            continue
        # Label values in parentheses (`outcome` (`ok`, `failed`)) are not labels.
        labels = tuple(re.findall(r"`([a-z_]+)`", re.sub(r"\([^)]*\)", "", cells[2])))
        for name in re.findall(r"`(tether_[a-z_]+)`", cells[0]):
            out[where].add((name, cells[1], labels))
    return out


def test_the_docs_list_exactly_the_defined_metrics() -> None:
    """docs/observability.md's tables list every defined metric once: name, type, labels."""
    rows = documented()
    for where in ("process", "master"):
        defined = {(d.exposed, d.kind, d.labels) for d in METRICS.values() if d.where == where}
        assert rows[where] == defined, (where, rows[where] ^ defined)


def test_the_dashboard_uses_only_documented_metrics() -> None:
    """Every metric the Grafana dashboard queries is one docs/observability.md lists."""
    used = set(re.findall(r"tether_[a-z_]+", DASHBOARD)) - {"tether_service"}
    bare = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert used and all(f"`{n}`" in DOCS for n in bare), sorted(
        n for n in bare if f"`{n}`" not in DOCS
    )


# -- the recording and the sum, in one process ------------------------------------------------


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    """A duration equal to a bucket's bound lands in that bucket, and buckets accumulate."""
    m = ProcessMetrics()
    m.request("GET", 200, LATENCY_BUCKETS[0], 5)
    m.request("GET", 200, 0.3, 5)
    m.request("BREW", 418, 100.0, 0)
    families = {f.name: f for f in text_string_to_metric_families(exposition(m.families).decode())}
    buckets = values(
        families["tether_http_request_duration_seconds"],
        "tether_http_request_duration_seconds_bucket",
    )
    assert buckets[(("le", "0.001"), ("method", "GET"))] == 1.0
    assert buckets[(("le", "0.25"), ("method", "GET"))] == 1.0
    assert buckets[(("le", "0.5"), ("method", "GET"))] == 2.0
    assert buckets[(("le", "+Inf"), ("method", "GET"))] == 2.0
    # Unknown methods share one label value, so a client cannot grow the series.
    assert buckets[(("le", "10.0"), ("method", "OTHER"))] == 0.0
    assert buckets[(("le", "+Inf"), ("method", "OTHER"))] == 1.0
    assert by_status(families) == {"200": 2.0, "418": 1.0}


def worker_text(requests: int, status: int = 200, worker: str = "1") -> bytes:
    m = ProcessMetrics(worker=worker)
    for _ in range(requests):
        m.request("GET", status, 0.01, 3)
    m.loop_lag(0.002)
    return exposition(m.families)


def test_aggregator_sums_workers_and_keeps_the_final_counts_of_those_that_exit(
    tmp_path: Path,
) -> None:
    """Two workers are summed; one exits with a final file: its counts stay, its lag series goes."""
    answers = {
        str(tmp_path / "w1.sock"): worker_text(3),
        str(tmp_path / "w2.sock"): worker_text(4, 404, "2"),
    }

    async def fetch(path: str, target: str, limit: float) -> tuple[int, bytes]:
        return 200, answers[path]

    async def scenario() -> None:
        agg = Aggregator(fetch)
        w1 = WorkerTarget("1", 11, 1, str(tmp_path / "w1.sock"))
        w2 = WorkerTarget("2", 12, 1, str(tmp_path / "w2.sock"))
        await agg.scrape([w1, w2])
        fams = {f.name: f for f in agg.families([], ["1", "2"])}
        text = exposition(lambda: fams.values()).decode()
        parsed = {f.name: f for f in text_string_to_metric_families(text)}
        assert by_status(parsed) == {"200": 3.0, "404": 4.0}
        assert histogram_count(parsed) == 7.0
        lag = values(parsed["tether_event_loop_lag_seconds"], "tether_event_loop_lag_seconds_count")
        assert set(lag) == {(("worker", "1"),), (("worker", "2"),)}
        # Worker 1 answered 2 more requests after the scrape, then exited in order.
        m = ProcessMetrics(worker="1")
        for _ in range(5):
            m.request("GET", 200, 0.01, 3)
        write_final(final_path(w1.debug_path), m.families)
        agg.retire("1", w1.debug_path)
        assert not os.path.exists(final_path(w1.debug_path))  # read once, removed
        await agg.scrape([w2])
        text = exposition(lambda: agg.families([], ["2"])).decode()
        parsed = {f.name: f for f in text_string_to_metric_families(text)}
        assert by_status(parsed) == {"200": 5.0, "404": 4.0}
        lag = values(parsed["tether_event_loop_lag_seconds"], "tether_event_loop_lag_seconds_count")
        assert set(lag) == {(("worker", "2"),)}

    asyncio.run(scenario())


def test_aggregator_marks_a_slow_worker_and_answers_with_its_last_figures(tmp_path: Path) -> None:
    """A worker that does not answer in time is marked 0 and counted with what it last said."""
    slow = asyncio.Event()

    async def fetch(path: str, target: str, limit: float) -> tuple[int, bytes]:
        if slow.is_set():
            async with asyncio.timeout(limit):
                await asyncio.Event().wait()
        return 200, worker_text(6)

    async def scenario() -> None:
        agg = Aggregator(fetch, timeout=0.05)
        w = WorkerTarget("1", 11, 1, str(tmp_path / "w1.sock"))
        await agg.scrape([w])
        slow.set()
        async with asyncio.timeout(5):  # never blocks on the worker beyond the timeout
            await agg.scrape([w])
        text = exposition(lambda: agg.families([], ["1"])).decode()
        parsed = {f.name: f for f in text_string_to_metric_families(text)}
        assert by_status(parsed) == {"200": 6.0}
        ok = values(parsed["tether_worker_scrape_ok"], "tether_worker_scrape_ok")
        assert ok == {(("worker", "1"),): 0.0}
        # A killed worker (no final file) keeps what it last said.
        agg.retire("1", w.debug_path)
        text = exposition(lambda: agg.families([], [])).decode()
        parsed = {f.name: f for f in text_string_to_metric_families(text)}
        assert by_status(parsed) == {"200": 6.0}

    asyncio.run(scenario())


# -- real processes ----------------------------------------------------------------------------


def test_single_process_counts_every_request_exactly(tmp_path: Path) -> None:
    """--workers 0: after known requests, /metrics shows exactly their counts, _count and bytes."""
    (tmp_path / "statusapp.py").write_text(STATUS_APP)
    with tether("statusapp:app", "--app-dir", str(tmp_path)) as t:
        t.ready()
        expected = send_plan(t.port)
        # A streamed (chunked) answer: its body bytes are counted, not the framing.
        assert http_status(t.port, "/stream") == 200
        expected["200"] += 1
        families = scrape(t.debug_port)
        assert by_status(families) == expected
        assert histogram_count(families) == sum(expected.values())
        sent = values(families["tether_http_responses_bytes"], "tether_http_responses_bytes_total")
        assert sent == {(): 10.0 * (7 + 3 + 2) + 7}  # /boom sent no body, /stream 3 + 4
        check_types(families, master=False)
        t.signal(signal.SIGTERM)
        assert t.wait() == 0


def test_a_blocked_event_loop_shows_in_the_lag_histogram(tmp_path: Path) -> None:
    """A handler that blocks the loop for 1.5 s makes the running clock fire late: lag > 0.25 s.

    The clock's next firing is due within a second of its last, which came at the
    connection: a block of 1.5 s makes it at least 0.5 s late (1.2 s, as it was, left
    it only 0.2 s late when the last firing fell just before a second began).
    """
    (tmp_path / "statusapp.py").write_text(STATUS_APP)
    with tether("statusapp:app", "--app-dir", str(tmp_path)) as t:
        t.ready()
        families = scrape(t.debug_port)
        lag = families["tether_event_loop_lag_seconds"]
        assert values(lag, "tether_event_loop_lag_seconds_count") == {(("worker", "0"),): 0.0}
        assert http_status(t.port, "/block") == 200
        families = scrape(t.debug_port)
        buckets = values(
            families["tether_event_loop_lag_seconds"], "tether_event_loop_lag_seconds_bucket"
        )
        late = (
            buckets[(("le", "+Inf"), ("worker", "0"))] - buckets[(("le", "0.25"), ("worker", "0"))]
        )
        assert late >= 1, buckets


def ready_workers(status: dict[str, Any], n: int) -> bool:
    gens = status["generations"]
    return (
        not status["master"]["reloading"]
        and len(gens) == 1
        and [w["state"] for w in gens[0]["workers"]] == ["ready"] * n
    )


async def until_status(master: MasterProc, check: Any, limit: float = 60.0) -> dict[str, Any]:
    """Ask ``tether ctl status`` until ``check(status)`` holds."""
    async with asyncio.timeout(limit):
        while True:
            status: dict[str, Any] = (await master.ctl("status"))["status"]
            if check(status):
                return status
            await asyncio.sleep(0.05)


@pytest.mark.timeout(240)
def test_master_sums_workers_and_counters_survive_reload_and_crash(tmp_path: Path) -> None:
    """Master mode: exact sums; a HUP that replaces every worker and a kill -9 lose no count."""
    (tmp_path / "hello.py").write_text(STATUS_APP)

    async def scenario() -> None:
        async with MasterProc(tmp_path, workers=2, debug=True) as master:
            await master.wait_for("READY")
            first = await master.worker_pids()
            expected = await asyncio.to_thread(send_plan, master.port)
            families = await asyncio.to_thread(scrape, master.debug_port)
            assert by_status(families) == expected
            assert histogram_count(families) == sum(expected.values())
            check_types(families, master=True)
            rss = values(
                families["tether_process_resident_memory_bytes"],
                "tether_process_resident_memory_bytes",
            )
            assert {dict(k)["worker"] for k in rss} == {"master", "1", "2"}

            # More requests that no scrape saw, then a reload replaces every worker:
            # what they counted after the last scrape arrives through their final counts.
            more = await asyncio.to_thread(send_plan, master.port)
            expected = {k: expected[k] + more[k] for k in expected}
            os.kill(master.pid, signal.SIGHUP)
            await until_status(
                master,
                lambda s: (
                    ready_workers(s, 2)
                    and s["master"]["reloads"] == 1
                    and not set(first) & {w["pid"] for w in s["generations"][0]["workers"]}
                ),
            )
            families = await asyncio.to_thread(scrape, master.debug_port)
            assert by_status(families) == expected
            assert histogram_count(families) == sum(expected.values())
            drains = values(families["tether_drains"], "tether_drains_total")
            assert drains == {(): 2.0}  # the old generation's two drains, kept
            reloads = values(families["tether_reloads"], "tether_reloads_total")
            assert reloads[(("outcome", "ok"),)] == 1.0

            # A worker killed with -9 keeps what the master last read from it.
            ANSWERED.clear()
            more = await asyncio.to_thread(send_plan, master.port)
            expected = {k: expected[k] + more[k] for k in expected}
            families = await asyncio.to_thread(scrape, master.debug_port)
            assert by_status(families) == expected
            victim, answered = ANSWERED.most_common(1)[0]
            assert answered > 0 and victim in await master.worker_pids()
            os.kill(victim, signal.SIGKILL)
            await until_status(
                master,
                lambda s: (
                    ready_workers(s, 2)
                    and victim not in {w["pid"] for w in s["generations"][0]["workers"]}
                ),
            )
            master.seen_workers.update(await master.worker_pids())
            families = await asyncio.to_thread(scrape, master.debug_port)
            assert by_status(families) == expected
            assert histogram_count(families) == sum(expected.values())
            restarts = values(families["tether_worker_restarts"], "tether_worker_restarts_total")
            assert restarts[(("cause", "crash"),)] == 1.0

    asyncio.run(scenario())


def in_flight(port: int) -> float:
    return sum(
        values(
            scrape(port)["tether_http_requests_in_flight"], "tether_http_requests_in_flight"
        ).values()
    )


@pytest.mark.timeout(120)
def test_a_drain_that_hits_the_deadline_is_counted(tmp_path: Path) -> None:
    """A reload whose old worker must cut a request at the deadline shows it in /metrics."""
    (tmp_path / "hello.py").write_text(STATUS_APP)

    async def scenario() -> None:
        async with MasterProc(tmp_path, "--graceful-timeout", "1", workers=1, debug=True) as master:
            await master.wait_for("READY")
            old = await master.worker_pids()
            _reader, writer = await asyncio.open_connection("127.0.0.1", master.port)
            try:
                writer.write(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
                await writer.drain()
                async with asyncio.timeout(20):
                    while await asyncio.to_thread(in_flight, master.debug_port) != 1:
                        await asyncio.sleep(0.05)
                os.kill(master.pid, signal.SIGHUP)
                await until_status(
                    master,
                    lambda s: (
                        ready_workers(s, 1)
                        and s["master"]["reloads"] == 1
                        and old[0] not in {w["pid"] for w in s["generations"][0]["workers"]}
                    ),
                )
            finally:
                writer.close()
            master.seen_workers.update(await master.worker_pids())
            families = await asyncio.to_thread(scrape, master.debug_port)
            cut = values(families["tether_drain_requests_cut"], "tether_drain_requests_cut_total")
            assert cut == {(): 1.0}
            assert values(families["tether_drains"], "tether_drains_total") == {(): 1.0}
            assert in_flight(master.debug_port) == 0

    asyncio.run(scenario())
