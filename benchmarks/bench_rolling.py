"""A rolling update through HAProxy under wrk load: tether and uvicorn side by side.

The harness is the suite's (tests/rolling.py): two instances behind HAProxy,
which checks each one's /readyz every 200 ms and takes an instance out after
two failed checks, and does not retry a failed request elsewhere (as
kube-proxy does not); under ``wrk -c32`` keep-alive load a third instance is
started and the first gets SIGTERM, then a fourth and the second gets SIGTERM.

Servers, each with the same hello app (benchmarks/apps/hello.py):

- tether with ``--drain-delay 1`` (above HAProxy's 0.4 s detection time), one
  process and a master with 2 workers;
- tether with ``--drain-delay 0``, to show what the delay buys;
- uvicorn, which has no readiness of its own: the app answers /readyz with 200
  until uvicorn stops accepting.

    python benchmarks/bench_rolling.py [--runs 3] [--settle 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

from rolling import (
    Outcome,
    ensure_tools,
    rolling_update,
    tether_server,
    uvicorn_server,
)


def row(name: str, outcomes: list[Outcome]) -> str:
    requests = sum(o.requests for o in outcomes)
    failed = sum(o.failed for o in outcomes)
    rate = sum(o.rate for o in outcomes) / len(outcomes)
    codes = sorted({c for o in outcomes for k, c in o.exit_codes.items() if k in "AB"}, key=str)
    stops = [s for o in outcomes for s in o.stop_seconds.values()]
    return (
        f"| {name} | {requests} | {failed} | {rate:.0f} | {', '.join(map(str, codes))} "
        f"| {min(stops):.2f}s / {max(stops):.2f}s |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="rolling updates per server")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of load between steps")
    args = parser.parse_args()
    ensure_tools()
    servers = [
        ("tether --workers 0 --drain-delay 1", tether_server("--workers", "0")),
        ("tether --workers 2 --drain-delay 1", tether_server("--workers", "2")),
        ("tether --workers 0 --drain-delay 0", tether_server("--workers", "0", drain_delay=0)),
        ("uvicorn", uvicorn_server()),
    ]
    print(
        f"{args.runs} rolling update(s) per server, 2 → 2 instances, wrk -t1 -c32 through "
        f"HAProxy, {args.settle:.1f}s of load between steps\n"
    )
    print(
        "| server | requests | failed | requests/s | exit codes after SIGTERM "
        "| SIGTERM → exit (min / max) |"
    )
    print("|---|---|---|---|---|---|")
    for name, server in servers:
        outcomes = [rolling_update(server, settle=args.settle) for _ in range(args.runs)]
        print(row(name, outcomes), flush=True)


if __name__ == "__main__":
    main()
