"""A serving process's own limits (tether._recycler), with a recording engine.

The end-to-end recycling under load, with real workers and ``wrk``, is
``test_recycling.py``; here the decisions: which limit leads where, once.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

from tether._recycler import Recycler
from tether.config import RunConfig
from tether.engine import DrainHooks, Engine


class RecordingEngine:
    """What the recycler asks of the HTTP engine."""

    def __init__(self) -> None:
        self.accepting = True
        self.resumed = 0

    def stop_accepting(self) -> None:
        self.accepting = False

    async def resume_accepting(self) -> None:
        self.resumed += 1
        self.accepting = True


def recycler(
    config: RunConfig, *, is_worker: bool, stopping: bool = False
) -> tuple[Recycler, dict[str, list[Any]], RecordingEngine]:
    seen: dict[str, list[Any]] = {"stop": [], "reload": [], "notify": []}
    engine = RecordingEngine()
    r = Recycler(
        config,
        is_worker=is_worker,
        http=lambda: cast(Engine, engine),
        notify=lambda *fields: seen["notify"].append(fields),
        stop=seen["stop"].append,
        reload=seen["reload"].append,
        stopping=lambda: stopping,
    )
    return r, seen, engine


def test_limit_max_requests_stops_the_process() -> None:
    """--limit-max-requests 10 (+0..5): the limit is drawn once, and reaching it is a stop."""
    config = RunConfig(app="x:app", limit_max_requests=10, limit_max_requests_jitter=5)
    r, seen, _ = recycler(config, is_worker=True)
    hooks = DrainHooks()
    limit = r.wire(hooks)
    assert limit is not None and 10 <= limit <= 15 and hooks.tick is None
    assert hooks.request_limit is not None
    hooks.request_limit()
    assert seen["stop"] == [f"served {limit} requests (--limit-max-requests)"]


def test_a_worker_at_max_requests_stops_accepting_and_asks_once() -> None:
    """A master's worker stops taking requests and asks its master for a successor, once."""
    config = RunConfig(app="x:app", max_requests=100)
    r, seen, engine = recycler(config, is_worker=True)
    hooks = DrainHooks()
    assert r.wire(hooks) == 100
    assert hooks.request_limit is not None
    hooks.request_limit()
    hooks.request_limit()
    assert not engine.accepting and r.asked
    assert len(seen["notify"]) == 1 and seen["reload"] == []


def test_one_process_at_max_requests_reloads_itself() -> None:
    """--workers 0: recycling is a reload by handoff, as HUP does."""
    r, seen, engine = recycler(RunConfig(app="x:app", max_requests=5), is_worker=False)
    r.recycle("served 5 requests (--max-requests)")
    assert seen["reload"] == ["served 5 requests (--max-requests)"] and engine.accepting


def test_memory_past_the_limit_recycles_and_below_it_does_not() -> None:
    """--max-worker-memory 1 MiB is passed by any Python process; 1 TiB by none."""
    r, seen, _ = recycler(RunConfig(app="x:app", max_worker_memory=1024 * 1024), is_worker=False)
    hooks = DrainHooks()
    r.wire(hooks)
    assert hooks.tick is not None
    hooks.tick()
    assert seen["reload"] == []
    small, seen, _ = recycler(RunConfig(app="x:app", max_worker_memory=1), is_worker=False)
    small.check_memory()
    (why,) = seen["reload"]
    assert why.startswith("resident memory ") and why.endswith("passed --max-worker-memory 1 MiB")


def test_resume_takes_requests_again_unless_stopping() -> None:
    """RESUME_SIGNAL: a worker that stopped accepting serves on; a stopping one does not."""

    async def main() -> None:
        r, _, engine = recycler(RunConfig(app="x:app", max_requests=1), is_worker=True)
        r.recycle("served 1 requests (--max-requests)")
        r.resume()
        r.resume()  # one resume at a time
        await asyncio.sleep(0)
        assert engine.accepting and engine.resumed == 1
        late, _, stopped = recycler(RunConfig(app="x:app"), is_worker=True, stopping=True)
        stopped.accepting = False
        late.resume()
        await asyncio.sleep(0)
        assert stopped.resumed == 0

    asyncio.run(main())


def test_the_request_limit_counts_http_responses_and_asks_once() -> None:
    """Only HTTP requests count, failed ones too; at the limit `reached` is called once."""
    from tether._recycler import RequestLimit

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope.get("path") == "/fail":
            raise RuntimeError("boom")

    async def nothing() -> dict[str, Any]:
        return {}

    async def ignore(message: Any) -> None:
        pass

    async def main() -> list[str]:
        reached: list[str] = []
        limited = RequestLimit(app, 3, lambda: reached.append("limit"))

        async def call(kind: str, path: str = "/") -> None:
            await limited({"type": kind, "path": path}, nothing, ignore)

        await call("lifespan")
        await call("websocket")
        await call("http")
        with contextlib.suppress(RuntimeError):
            await call("http", "/fail")
        assert reached == []
        for _ in range(3):
            await call("http")
        return reached

    assert asyncio.run(main()) == ["limit"]
