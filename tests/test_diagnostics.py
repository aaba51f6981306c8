"""What the log tells an operator: abandoned members' stacks, blocked loops, OOM kills, and
client bytes that never reach a log line raw."""

from __future__ import annotations

import signal

import pytest

from proc import tether


@pytest.mark.parametrize("workers", ["0", "1"])
def test_member_cancelled_at_the_deadline_is_reported_with_its_stack(workers: str) -> None:
    """A member still running at the deadline is logged with the function it was blocked in."""
    with tether("diag:stuck", "--workers", workers, "--graceful-timeout", "0.3") as t:
        t.ready()
        t.signal(signal.SIGTERM)
        assert t.wait() == 4
        err = t.stderr()
    report = err[err.index("abandoned at the deadline: member 'deaf_consumer'") :]
    assert "in deaf_consumer" in report, err
    assert "in wait_for_the_queue" in report, err
