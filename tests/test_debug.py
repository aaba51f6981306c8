"""The debug server's endpoints, called as ASGI without a network."""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from typing import Any

import pytest

from tether.debug import DebugApp, DebugSource, format_task_dump, host_allowed, task_dump


def call(
    app: DebugApp, path: str, query: str = "", headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[int, str]:
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "path": path, "query_string": query.encode(), "headers": headers or []}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], sent[1]["body"].decode()


def test_readyz_follows_the_source() -> None:
    """/readyz is 200 when ready and 503 with the reason otherwise."""
    state = {"ready": False}
    app = DebugApp(DebugSource(is_ready=lambda: state["ready"], status=lambda: "draining"))
    assert call(app, "/readyz") == (503, "not ready: draining\n")
    state["ready"] = True
    assert call(app, "/readyz") == (200, "ready\n")


def test_metrics_are_prometheus_text() -> None:
    """/metrics renders the source's gauges in Prometheus text format."""
    app = DebugApp(DebugSource(metrics=lambda: [("tether_things", "things", 3.0)]))
    status, body = call(app, "/metrics")
    assert status == 200
    assert "# TYPE tether_things gauge\ntether_things 3.0" in body


def test_token_guards_debug_pages_but_not_health() -> None:
    """With a token, /debug/* needs it (header or query) while /healthz stays open."""
    app = DebugApp(DebugSource(), token="s3cret")
    assert call(app, "/healthz")[0] == 200
    assert call(app, "/debug/threads")[0] == 401
    assert call(app, "/debug/threads", "token=wrong")[0] == 401
    assert call(app, "/debug/threads", "token=s3cret")[0] == 200
    assert call(app, "/debug/threads", headers=[(b"authorization", b"Bearer s3cret")])[0] == 200


@pytest.mark.parametrize("scheme", [b"Bearer", b"bearer", b"BEARER", b"bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(scheme: bytes) -> None:
    """RFC 7235: any case of the scheme, and more than one space after it, is accepted."""
    app = DebugApp(DebugSource(), token="s3cret")
    for value in (scheme + b" s3cret", scheme + b"   s3cret "):
        assert call(app, "/debug/threads", headers=[(b"authorization", value)])[0] == 200
    assert call(app, "/debug/threads", headers=[(b"authorization", scheme + b" wrong")])[0] == 401
    assert call(app, "/debug/threads", headers=[(b"authorization", b"Basic s3cret")])[0] == 401


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        (None, True),
        ("127.0.0.1", True),
        ("127.0.0.1:8001", True),
        ("[::1]:8001", True),
        ("[::1]", True),
        ("10.1.2.3:8001", True),  # a pod's IP, as the kubelet and Prometheus send it
        ("localhost", True),
        ("LOCALHOST:8001", True),
        ("localhost.:8001", True),
        ("app.localhost:8001", True),
        ("evil.example", False),
        ("evil.example:8001", False),
        ("localhost.evil.example", False),
        ("127.0.0.1.evil.example", False),
        ("[::1", False),
        ("", False),
        ("debug.internal:8001", True),
        ("a.svc.cluster.local", True),
        ("svc.cluster.local", True),
        ("xsvc.cluster.local", False),
    ],
)
def test_host_allowed(host: str | None, allowed: bool) -> None:
    """Addresses, localhost and the allowed names pass; any other name (DNS rebinding) does not."""
    assert host_allowed(host, ("debug.internal", ".svc.cluster.local")) is allowed


def test_a_foreign_host_gets_403_but_probes_answer() -> None:
    """Host: evil.example gets 403 on /metrics and /debug/*, with or without the token."""
    app = DebugApp(
        DebugSource(is_ready=lambda: True), token="s3cret", allowed_hosts=("ok.example",)
    )
    evil = [(b"host", b"evil.example:8001"), (b"authorization", b"Bearer s3cret")]
    for path in ("/metrics", "/debug/", "/debug/tasks", "/debug/threads", "/debug/nope"):
        status, body = call(app, path, headers=evil)
        assert status == 403, path
        assert "--debug-allowed-hosts" in body
    assert call(app, "/healthz", headers=evil) == (200, "ok\n")
    assert call(app, "/readyz", headers=evil) == (200, "ready\n")
    allowed = [(b"host", b"ok.example:8001"), (b"authorization", b"Bearer s3cret")]
    assert call(app, "/debug/threads", headers=allowed)[0] == 200
    anywhere = DebugApp(DebugSource(), allowed_hosts=None)  # a unix socket
    assert call(anywhere, "/debug/threads", headers=[(b"host", b"worker")])[0] == 200


def test_unknown_path_is_404() -> None:
    """An unknown path says where to look."""
    assert call(DebugApp(DebugSource()), "/nope") == (404, "not found; try /debug/\n")


def test_task_dump_groups_identical_stacks_with_counts() -> None:
    """Tasks blocked at the same place are one group with a count, showing the innermost await."""

    async def blocked(q: asyncio.Queue[int]) -> None:
        await q.get()

    async def main() -> list[dict[str, Any]]:
        q: asyncio.Queue[int] = asyncio.Queue()
        tasks = [asyncio.create_task(blocked(q), name=f"worker-{i}") for i in range(5)]
        await asyncio.sleep(0)
        groups = task_dump()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return groups

    groups = asyncio.run(main())
    top = groups[0]
    assert top["count"] == 5
    assert top["names"] == [f"worker-{i}" for i in range(5)]
    assert "in blocked" in top["stack"]
    assert "in get" in top["stack"]
    text = format_task_dump(groups)
    assert text.startswith("6 task(s) in 2 group(s)")
    json.dumps(groups)


def test_extra_endpoints_are_listed_and_served() -> None:
    """Extra JSON endpoints appear in the index and answer under /debug/."""
    app = DebugApp(DebugSource(extra={"workers": lambda: [{"pid": 1}]}))
    assert "/debug/workers" in call(app, "/debug/")[1]
    assert call(app, "/debug/workers") == (200, '[{"pid": 1}]')


def test_pages_replace_built_ins_behind_the_token() -> None:
    """An async page takes a built-in's place (a master's tasks), only once authorized."""

    async def tasks(query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        return 200, "text/plain", f"every worker's dump {query.get('format')}".encode()

    app = DebugApp(DebugSource(pages={"tasks": tasks}), token="s3cret")
    assert call(app, "/debug/tasks")[0] == 401
    bearer = [(b"authorization", b"Bearer s3cret")]
    assert call(app, "/debug/tasks", "format=json", bearer) == (
        200,
        "every worker's dump ['json']",
    )


def test_collectors_add_to_metrics() -> None:
    """A prometheus collector given to the source is served on /metrics (the master's seam)."""
    from prometheus_client.core import CounterMetricFamily

    class Restarts:
        def collect(self) -> Any:
            yield CounterMetricFamily("tether_master_worker_restarts", "restarts", value=2)

    body = call(DebugApp(DebugSource(collectors=[Restarts()])), "/metrics")[1]
    assert "tether_master_worker_restarts_total 2.0" in body.splitlines()


def test_task_groups_are_named_by_the_apps_coroutine_and_tethers_own_marked() -> None:
    """A group is named by the app's outermost coroutine; a tether-only task is marked own."""
    from tether.group import Group

    async def checkout(gate: asyncio.Event) -> None:
        await gate.wait()

    async def main() -> list[dict[str, Any]]:
        gate = asyncio.Event()
        mine = asyncio.create_task(checkout(gate), name="mine")
        own = asyncio.create_task(Group().wait_stopping(), name="group-wait")
        await asyncio.sleep(0)
        dump = task_dump()
        gate.set()
        own.cancel()
        await asyncio.gather(mine, own, return_exceptions=True)
        return dump

    dump = asyncio.run(main())
    by_name = {name: g for g in dump for name in g["names"]}
    assert by_name["mine"]["runs"].startswith(
        "test_task_groups_are_named_by_the_apps_coroutine_and_tethers_own_marked.<locals>"
        ".checkout (test_debug.py:"
    )
    assert by_name["mine"]["own"] is False
    assert by_name["group-wait"]["runs"] == "Group.wait_stopping"
    assert by_name["group-wait"]["own"] is True
