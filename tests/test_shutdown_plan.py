"""One stop, both process modes, checked phase by phase against the plan.

``--graceful-timeout 6 --drain-delay 2`` with a request in flight that would
take longer than the budget. The plan (:class:`tether.config.ShutdownPlan`)
says, counted from the TERM: ``/readyz`` answers 503 at once while the
listeners still accept, the listeners close at 2 s, and the whole stop,
drain delay included, is over by 6 s with exit code 4 for the abandoned
request. ``--workers 0`` and ``--workers 1`` must keep the same plan: the
drain delay is counted inside ``--graceful-timeout`` in both.

Real processes, real signals, real sockets; the phases are seen from outside,
as a load balancer sees them (readiness, a refused connect, the exit).
"""

from __future__ import annotations

import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from tether.config import RunConfig, ShutdownPlan
from tether.errors import ConfigError
from waiting import eventually

from proc import get, tether, until_in_flight

GRACEFUL = 6.0
DRAIN_DELAY = 2.0
#: How late a phase may be seen: process start-up of a signal, the probe's poll, a loaded box.
SLACK = 1.0


@dataclass
class Seen:
    """When each phase was seen, in seconds after the TERM."""

    not_ready: float
    refused: float
    exited: float
    code: int


def accepts(port: int) -> bool:
    """Whether a connection to ``port`` is accepted now (refused once the listeners close)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def stop_once(workers: str) -> Seen:
    """TERM with a 30 s request in flight; when readiness, the listeners and the exit changed."""
    flags = ("--graceful-timeout", str(GRACEFUL), "--drain-delay", str(DRAIN_DELAY))
    with tether("plain:app", "--workers", workers, *flags) as t, ThreadPoolExecutor(1) as pool:
        t.ready()
        slow = pool.submit(get, t.port, "/slow?seconds=30", 30.0)
        until_in_flight(t, 1)
        t.signal(signal.SIGTERM)
        term = time.monotonic()
        t.wait_for("STOPPING", timeout=5)
        assert get(t.debug_port, "/readyz")[0] == 503
        not_ready = time.monotonic() - term
        assert get(t.port, "/")[0] == 200, "the listeners close only when the drain delay ends"
        eventually(lambda: not accepts(t.port), "the listeners closed", within=GRACEFUL + 5)
        refused = time.monotonic() - term
        code = t.wait(GRACEFUL + 15)
        exited = time.monotonic() - term
        with pytest.raises(OSError):
            slow.result()  # cut at the deadline: the connection ends without an answer
        assert "abandoned" in t.stderr()
        return Seen(not_ready, refused, exited, code)


@pytest.mark.parametrize("workers", ["0", "1"])
def test_the_same_stop_keeps_the_same_plan_in_both_modes(workers: str) -> None:
    """503 at once, listeners closed at the drain delay, all done within the budget, exit 4."""
    seen = stop_once(workers)
    assert seen.not_ready < 0.5, seen
    assert DRAIN_DELAY - 0.2 <= seen.refused <= DRAIN_DELAY + SLACK, seen
    assert seen.code == 4, seen
    assert seen.exited <= GRACEFUL + SLACK, seen


def test_the_plan_counts_the_drain_delay_inside_the_budget() -> None:
    """Every deadline of a plan is absolute, in order, and the drain delay is inside the budget."""
    config = RunConfig(app="x:app", graceful_timeout=6.0, drain_delay=2.0)
    plan = ShutdownPlan.begin(config, now=100.0)
    assert (plan.drain_delay_end, plan.deadline) == (102.0, 106.0)
    assert plan.deadline < plan.cancel_end < plan.hard_stop < plan.master_kill
    assert plan.left(plan.drain_delay_end, now=101.5) == 0.5
    assert plan.left(plan.deadline, now=200.0) == 0.0
    reload = ShutdownPlan.begin(config, now=100.0, drain_delay=False)
    assert (reload.drain_delay_end, reload.deadline) == (100.0, 106.0)


def test_a_drain_delay_as_long_as_the_budget_is_a_configuration_error() -> None:
    """--drain-delay >= --graceful-timeout leaves no time to drain: one line that names the fix."""
    with pytest.raises(ConfigError, match="--drain-delay 6 leaves no time to drain"):
        RunConfig(app="x:app", graceful_timeout=6.0, drain_delay=6.0)


def test_a_service_without_http_drains_its_background_work_by_the_plans_deadline() -> None:
    """No HTTP server runs phase 5: the runtime drains background work itself, within the budget."""
    flags = ("--graceful-timeout", str(GRACEFUL), "--drain-delay", str(DRAIN_DELAY))
    with tether("members_only:app", "--workers", "0", *flags) as t:
        t.ready()
        t.signal(signal.SIGTERM)
        term = time.monotonic()
        code = t.wait(GRACEFUL + 15)
        exited = time.monotonic() - term
        assert code == 4, t.stderr()
        assert "abandoned at the deadline: task 'forever' (cancelled)" in t.stderr()
    assert GRACEFUL - 0.5 <= exited <= GRACEFUL + SLACK, exited
