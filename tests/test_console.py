"""The debug console, rendered by a real browser (headless Chromium) and as plain HTML."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from browser import BROWSER_FLAGS, Browser
from tether.console import render
from waiting import eventually

from proc import tether


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run headless Chromium with a fresh profile; fail clearly if it is not installed."""
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not installed: run make system-packages (make test does)")
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    return subprocess.run(
        [exe, *BROWSER_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        timeout=60,
        check=True,
    )


def get_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return json.loads(response.read())


def until_in_flight(port: int, path: str, limit: float = 20.0) -> dict[str, Any]:
    """The console's JSON once some worker reports a request for ``path`` in flight."""

    def showing() -> dict[str, Any] | None:
        data = get_json(port, "/debug/?format=json")
        paths = [r["path"] for p in data["processes"] for r in p.get("requests", [])]
        return dict(data) if path in paths else None

    return eventually(showing, f"{path} shown as in flight", limit)


def test_console_in_a_browser_shows_workers_members_and_requests(tmp_path: Path) -> None:
    """Chromium loads /debug/ of the demo in master mode: every worker pid, the consumer, /slow."""
    with tether("tether.demo:app", "--workers", "2") as t:
        t.ready()
        with socket.create_connection(("127.0.0.1", t.port), timeout=10) as slow:
            # In flight for as long as two chromium runs take on a loaded machine: killed after.
            slow.sendall(b"GET /slow?seconds=120 HTTP/1.1\r\nHost: test\r\n\r\n")
            until_in_flight(t.debug_port, "/slow")
            status = get_json(t.debug_port, "/debug/workers")
            pids = [w["pid"] for g in status["generations"] for w in g["workers"]]
            assert len(pids) == 2
            url = f"http://127.0.0.1:{t.debug_port}/debug/"
            dom = chromium(tmp_path, "--dump-dom", url).stdout.decode()
            shot = tmp_path / "console.png"
            chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1000", url)
        assert "<h2>Processes</h2>" in dom
        for pid in [*pids, t.proc.pid if t.proc else 0]:
            assert f'<td class="n">{pid}</td>' in dom, pid
        assert "consumer" in dom  # the demo's queue consumer member, by name
        assert "<td>/slow</td>" in dom
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        t.close()


def test_console_escapes_what_the_app_named() -> None:
    """Paths and task names from the app are escaped, never markup."""
    page = render(
        {
            "processes": [
                {
                    "role": "process",
                    "id": "0",
                    "pid": 1,
                    "requests": [{"method": "GET", "path": "/<script>x</script>", "age": 1.0}],
                    "background": [
                        {"name": "<b>", "started_by": "GET /e", "adopted": True, "age": 2.0}
                    ],
                }
            ]
        },
        token="a&b",
    )
    assert "<script>x" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert "<td>&lt;b&gt;</td>" in page and "adopted from GET /e" in page
    assert "/debug/tasks?token=a%26b" in page
    # The one script is the charts' own: what the app named never becomes one.
    assert page.count("<script") == 1 == render({}).count("<script")


def test_console_auto_refresh_swaps_the_tables_in_place() -> None:
    """?refresh=N refreshes the tables by script (the charts keep their history), meta without."""
    page = render({}, refresh=5)
    assert "const every = 5 * 1000;" in page
    assert '<noscript><meta http-equiv="refresh" content="5"></noscript>' in page
    assert "http-equiv" not in render({}) and "const every" not in render({})


def test_console_of_one_process_names_who_started_background_work(tmp_path: Path) -> None:
    """--workers 0: adopted and spawned tasks both name the request that started them."""
    events = tmp_path / "events.txt"
    with tether("events:app", EVENTS_FILE=str(events), EVENT_DELAY="60") as t:
        t.ready()
        assert get_status(t.port, "/plain?r1") == 202
        assert get_status(t.port, "/spawn?r2") == 202

        def both_shown() -> dict[str, Any] | None:
            data = get_json(t.debug_port, "/debug/?format=json")
            return dict(data) if len(data["processes"][0]["background"]) == 2 else None

        data = eventually(both_shown, "two background tasks shown", 20)
        background = data["processes"][0]["background"]
        by_name = {b["name"]: b for b in background}
        spawned = by_name.pop("event r2")
        assert spawned["started_by"] == "GET /spawn" and not spawned["adopted"]
        [adopted] = by_name.values()
        assert adopted["adopted"] and adopted["started_by"] == "GET /plain"
        with urllib.request.urlopen(f"http://127.0.0.1:{t.debug_port}/debug/") as response:
            page = response.read().decode()
        assert "adopted from GET /plain" in page and "<td>event r2</td>" in page
        assert data["processes"][0]["pid"] == (t.proc.pid if t.proc else 0)
        # The text and JSON task dumps are still there.
        assert isinstance(get_json(t.debug_port, "/debug/tasks?format=json"), list)


def get_status(port: int, path: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return int(response.status)


def test_debug_app_serves_the_console_with_the_token_rules() -> None:
    """DebugApp: /debug/ renders the console, ?format=json gives its data; both need the token."""
    from test_debug import call
    from tether.console import console_page
    from tether.debug import DebugApp, DebugSource

    async def console() -> dict[str, Any]:
        return {"title": "svc", "processes": [{"role": "process", "id": "0", "pid": 42}]}

    app = DebugApp(DebugSource(pages={"": console_page(console)}), token="s3cret")
    assert call(app, "/debug/")[0] == 401
    status, body = call(app, "/debug/", "token=s3cret")
    assert status == 200 and "<h1>svc</h1>" in body and '<td class="n">42</td>' in body
    assert "/debug/tasks?token=s3cret" in body  # links carry the token
    status, body = call(app, "/debug/", "token=s3cret&format=json")
    assert status == 200 and json.loads(body)["processes"][0]["pid"] == 42


def test_debug_app_scrapes_before_rendering_metrics() -> None:
    """DebugApp awaits the source's scrape before /metrics, then renders its families."""
    from prometheus_client.core import CounterMetricFamily

    from test_debug import call
    from tether.debug import DebugApp, DebugSource
    from tether.metrics import Families

    scraped: list[int] = []

    async def scrape() -> None:
        scraped.append(1)

    def families() -> Any:
        yield CounterMetricFamily("things", "things done", value=len(scraped))

    source = DebugSource(collectors=[Families(families)], scrape=scrape)
    status, body = call(DebugApp(source), "/metrics")
    assert status == 200 and "# TYPE things_total counter\nthings_total 1.0" in body


def test_master_console_needs_the_token(tmp_path: Path) -> None:
    """Master mode with --debug-token: /debug/ needs it, / shows no data, links carry it."""
    import asyncio

    from masterproc import MasterProc, write_app

    write_app(tmp_path, "v1")

    def fetch(port: int, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read().decode()

    async def scenario() -> None:
        async with MasterProc(tmp_path, "--debug-token", "tok", workers=1, debug=True) as master:
            await master.wait_for("READY")
            master.seen_workers.update(await master.worker_pids())
            port = master.debug_port
            assert (await asyncio.to_thread(fetch, port, "/debug/"))[0] == 401
            status, body = await asyncio.to_thread(fetch, port, "/")
            assert status == 404 and "pid" not in body and "/debug/" in body  # points there
            status, body = await asyncio.to_thread(fetch, port, "/debug/?token=tok")
            assert status == 200 and "/debug/tasks?token=tok" in body
            pid = (await master.worker_pids())[0]
            assert f'<td class="n">{pid}</td>' in body

    asyncio.run(scenario())


class Traffic:
    """``clients`` threads asking ``path`` back to back until stopped (at most ``limit`` each)."""

    def __init__(self, port: int, path: str, clients: int = 4, limit: int = 3000) -> None:
        self.port, self.path, self.limit = port, path, limit
        self.stop = threading.Event()
        self.ok = 0
        self.failed = 0
        self._threads = [threading.Thread(target=self._client) for _ in range(clients)]

    def _client(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            for _ in range(self.limit):
                if self.stop.is_set():
                    return
                try:
                    conn.request("GET", self.path)
                    response = conn.getresponse()
                    response.read()
                    if response.status == 200:
                        self.ok += 1
                    else:
                        self.failed += 1
                    if response.getheader("connection", "").lower() == "close":
                        conn.close()
                except OSError:
                    self.failed += 1
                    conn.close()
        finally:
            conn.close()

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def chart(browser: Browser, name: str) -> dict[str, Any]:
    """What the console's chart ``name`` shows: points, series, last values, max, reload marks."""
    got = browser.evaluate(
        f"(() => {{ const svg = document.querySelector('svg[data-chart=\"{name}\"]');"
        " const d = svg ? svg.dataset : {};"  # null until the page has loaded
        " return {points: +(d.points || 0), series: +(d.series || 0), max: +(d.max || 0),"
        " marks: +(d.marks || 0), last: JSON.parse(d.last || '[]')}; })()"
    )
    return dict(got)


def test_console_charts_draw_traffic_latency_and_reloads_in_a_browser(tmp_path: Path) -> None:
    """Under load through a HUP, Chromium's /debug/ charts the rate, a 40 ms p50, lag per worker."""
    with tether("charts:app", "--workers", "2") as t:
        t.ready()
        with Traffic(t.port, "/work?ms=40") as traffic:
            eventually(lambda: traffic.ok > 20, "traffic answered", 20)
            t.signal(signal.SIGHUP)
            eventually(
                lambda: (
                    get_json(t.debug_port, "/debug/workers")["master"]["reloads"] == 1
                    and len(get_json(t.debug_port, "/debug/stats")["reloads"]) == 1
                ),
                "the reload finished",
                60,
            )
            with Browser(f"http://127.0.0.1:{t.debug_port}/debug/") as browser:
                rps = eventually(
                    lambda: (c := chart(browser, "rps"))["points"] >= 4 and c, "rps charted", 30
                )
                latency = chart(browser, "latency")
                lag = chart(browser, "lag")
                inflight = chart(browser, "inflight")
                browser.screenshot(tmp_path / "console.png")
        assert traffic.failed == 0
        # 4 clients, 40 ms each, 2 workers: about 100 requests/s on an idle host.
        assert 5 < rps["max"] < 400, rps
        p50, p99 = latency["last"]
        assert 25 <= p50 <= 100 and p50 <= p99, latency  # a 40 ms sleep, read from buckets
        assert rps["marks"] == latency["marks"] == 1  # the HUP, on every chart's time axis
        assert lag["series"] == 2, lag  # one line per worker of the new generation
        assert inflight["max"] >= 1, inflight
        assert (tmp_path / "console.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_console_shows_background_tasks_as_background_and_folds_its_own(tmp_path: Path) -> None:
    """A BackgroundTasks job after its response is background work named by its function."""
    with tether("charts:app") as t:
        t.ready()
        assert get_status(t.port, "/checkout?seconds=60") == 200

        def shown() -> dict[str, Any] | None:
            data = get_json(t.debug_port, "/debug/?format=json")
            return dict(data) if data["processes"][0]["background"] else None

        process = eventually(shown, "the receipt shown as background work", 20)["processes"][0]
        assert process["requests"] == []  # its response is sent: not a request in flight
        [job] = process["background"]
        assert job["name"].startswith("send_receipt (charts.py:")
        assert job["started_by"] == "GET /checkout (after its response)"
        groups = {g["runs"]: g for g in process["tasks"]}
        assert groups[job["name"]]["own"] is False
        assert any(g["own"] for g in process["tasks"])  # the debug server's, the engine's
        url = f"http://127.0.0.1:{t.debug_port}/debug/"
        with urllib.request.urlopen(url, timeout=10) as page:
            html_page = page.read().decode()
        own_at = html_page.index('<details class="own">')
        assert html_page.index("send_receipt (charts.py:") < own_at  # the app's, then tether's
        assert "tether's own tasks:" in html_page
        t.close()
