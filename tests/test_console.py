"""The debug console, rendered by a real browser (headless Chromium) and as plain HTML."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tether.console import render
from waiting import eventually

from proc import tether

BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


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
            slow.sendall(b"GET /slow?seconds=30 HTTP/1.1\r\nHost: test\r\n\r\n")
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
    assert "<script" not in page  # no JavaScript at all


def test_console_auto_refresh_is_a_meta_tag() -> None:
    """?refresh=N asks the browser to reload every N seconds, without JavaScript."""
    assert '<meta http-equiv="refresh" content="5">' in render({}, refresh=5)
    assert "http-equiv" not in render({})


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
