"""tether's cost per request over uvicorn's, in one process, without the network.

CPU time per request measured through sockets on a shared 2-core machine
drifts by tens of percent between rounds, which hides a difference of a few
microseconds. This benchmark takes the kernel and the load generator out: it
drives uvicorn's HTTP protocol (httptools, on uvloop) with in-memory
transports, 64 connections each with one request in flight at a time (what
``wrk -c64`` does), and measures CPU per request and garbage collections of
the serving code alone:

- ``uvicorn``: the app as uvicorn serves it (its ``Config``, its server state);
- ``tether``: the app as a tether worker serves it: ``HttpServer``'s protocol
  factory (what each accepted connection gets: its one-write transport), front
  and state, the adoption factory with a ``Tracker``, per-request metrics, and
  ``gc.freeze()`` once started (all tether's defaults). The in-memory transport
  makes no system calls, so the one write per response saves nothing here
  and only its cost shows;
- ``tether --no-gc-freeze``: the same without the freeze;
- ``tether --blocked-loop-threshold 0``: the same without the blocked-loop
  watch (its timer every 75 ms and its thread), to show what the watch costs.

Each variant runs in its own process (``gc.freeze`` is process-wide), rounds
alternate, and each round reports the best of its repeats (the least
disturbed). Workloads: the hello app on keep-alive connections and with a new
connection per request (``Connection: close``), a FastAPI GET returning a
20-field pydantic model, and a Django view (Django's ASGI handler).

    python benchmarks/bench_overhead.py [--rounds 3] [--requests 20000] [--repeat 5] [--workload W]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
CONNECTIONS = 64
#: name: (app module, path, a new connection per request)
WORKLOADS = {
    "hello": ("hello", "/", False),
    "hello connection-close": ("hello", "/", True),
    "FastAPI GET": ("fastapi_model", "/item", False),
    "Django view": ("django_view", "/", False),
}
VARIANTS = ("tether", "tether --no-gc-freeze", "tether --blocked-loop-threshold 0", "uvicorn")


class Transport(asyncio.Transport):
    """An open connection that keeps what is written and never blocks.

    Closing it reports the connection lost on the next loop step, as a
    socket's transport does.
    """

    def __init__(self, protocol: Any) -> None:
        super().__init__()
        self.protocol = protocol
        self.written = 0
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def write(self, data: Any) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def protocols(variant: str, app: Any) -> tuple[Any, Any]:
    """(protocol factory, what must stay referenced) for one variant."""
    from uvicorn.config import Config

    loop = asyncio.get_running_loop()
    if variant == "uvicorn":
        from uvicorn.server import ServerState

        config = Config(app, lifespan="off", log_config=None, access_log=False)
        config.load()
        state = ServerState()
        # What uvicorn's server tick sets every 100 ms: the date and server headers.
        date = formatdate(time.time(), usegmt=True).encode()
        state.default_headers = [(b"date", date), *config.encoded_headers]
        protocol: Any = config.http_protocol_class

        def make() -> Any:
            return protocol(config=config, server_state=state, app_state={}, _loop=loop)

        return make, None
    from tether._loopwatch import LoopWatch
    from tether.metrics import ProcessMetrics
    from tether.serving import DrainHooks, HttpServer, ServeOptions
    from tether.tracker import REQUESTS, Tracker, install_adoption

    # The blocked-loop watch as a serving process runs it (default threshold, 0.3 s).
    watch = None if variant.endswith("--blocked-loop-threshold 0") else LoopWatch(0.3)
    hooks = DrainHooks(
        requests=REQUESTS,
        metrics=ProcessMetrics(),
        traffic=watch.traffic if watch is not None else None,
    )
    server = HttpServer(app, [], ServeOptions(lifespan="off"), hooks)
    keep = (server, install_adoption(Tracker()), watch)
    if watch is not None:
        watch.enable()
    if variant != "tether --no-gc-freeze":
        gc.collect()
        gc.freeze()
    return server.protocol_factory({}, loop), keep  # what each accepted connection gets


Protocols = Callable[[str, Any], tuple[Any, Any]]


async def measure(
    variant: str, workload: str, n: int, repeat: int, make_protocols: Protocols | None = None
) -> dict[str, Any]:
    """CPU µs per request of one variant (``make_protocols`` builds it; default: ours above)."""
    module, path, close = WORKLOADS[workload]
    sys.path.insert(0, str(HERE / "apps"))
    app = __import__(module).app
    make, _keep = (make_protocols or protocols)(variant, app)
    loop = asyncio.get_running_loop()
    connection = b"Connection: close\r\n" if close else b""
    request = b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: bench\r\n%s\r\n" % (
        path.encode(),
        connection,
    )
    answered = 0
    all_answered = asyncio.Event()
    target = 0

    def connect() -> Any:
        proto = make()
        proto.connection_made(Transport(proto))
        original = proto.on_response_complete

        def on_response() -> None:
            nonlocal answered
            original()
            answered += 1
            if answered < target:
                # The client's next request: on this connection, or on a new one.
                loop.call_soon((connect() if close else proto).data_received, request)
            elif answered == target + CONNECTIONS - 1:
                all_answered.set()

        proto.on_response_complete = on_response
        return proto

    conns = [] if close else [connect() for _ in range(CONNECTIONS)]

    async def run(count: int) -> float:
        nonlocal answered, target
        answered, target = 0, count
        all_answered.clear()
        start = time.process_time()
        for i in range(CONNECTIONS):  # from the loop, as a socket's data
            loop.call_soon((connect() if close else conns[i]).data_received, request)
        await all_answered.wait()
        await asyncio.sleep(0)  # the last connections' close
        return time.process_time() - start

    collections = [0]

    def count_collections(phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and info["generation"] == 0:
            collections[0] += 1

    await run(2000)  # warm up
    gc.callbacks.append(count_collections)
    seconds = [await run(n) for _ in range(repeat)]
    gc.callbacks.remove(count_collections)
    total = n + CONNECTIONS - 1
    return {
        "us": min(seconds) / total * 1e6,
        "young_gc_per_1k": collections[0] / (repeat * total) * 1000,
    }


def one(variant: str, workload: str, n: int, repeat: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--one", variant, workload, str(n), str(repeat)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workload", action="append", choices=WORKLOADS, help="default: all")
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        import uvloop

        variant, workload, n, repeat = args.one
        print(json.dumps(uvloop.run(measure(variant, workload, int(n), int(repeat)))))
        return
    lines = [
        "| workload | server | CPU µs per request, median (min-max) | vs uvicorn "
        "| young GCs per 1k requests |",
        "|---|---|---|---|---|",
    ]
    for workload in args.workload or WORKLOADS:
        results: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        for i in range(args.rounds):
            for variant in VARIANTS if i % 2 == 0 else reversed(VARIANTS):
                r = one(variant, workload, args.requests, args.repeat)
                results[variant].append(r)
                print(f"{workload:22s} {variant:22s} {r['us']:6.2f} µs/request "
                      f"{r['young_gc_per_1k']:6.2f} young GCs/1k", flush=True)  # fmt: skip
        base = statistics.median(r["us"] for r in results["uvicorn"])
        for variant, rounds in results.items():
            us = [r["us"] for r in rounds]
            gcs = statistics.median(r["young_gc_per_1k"] for r in rounds)
            lines.append(
                f"| {workload} | {variant} | {statistics.median(us):.2f} ({min(us):.2f}-"
                f"{max(us):.2f}) | {statistics.median(us) / base:.3f}x | {gcs:.2f} |"
            )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
