"""--max-requests: processes are recycled under wrk load, each successor READY first; none fails.

gunicorn's option, done as a reload of one worker: the master starts the
successor in the slot, and only when it is READY does the old worker drain.
With ``--workers 0`` the process hands its sockets to a fresh copy, as HUP does.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal

import pytest

from masterproc import pids_gone
from rolling import Outcome, load, parse_wrk
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
