"""A Deployment's rolling update through a real HAProxy under wrk load loses no request.

The harness (tests/rolling.py) starts two tether instances behind HAProxy,
which health-checks each one's /readyz; under wrk load, a third instance is
started and the first gets SIGTERM, then a fourth and the second gets SIGTERM.
HAProxy learns that an instance is stopping only from its /readyz: tether's
drain delay keeps the instance serving until HAProxy has taken it out.
"""

from __future__ import annotations

import shutil

import pytest

from rolling import rolling_update, tether_server

pytestmark = pytest.mark.skipif(
    shutil.which("haproxy") is None or shutil.which("wrk") is None,
    reason="needs Debian's haproxy and wrk (`make system-packages` installs them)",
)


@pytest.mark.parametrize("workers", ["0", "1"], ids=["one-process", "master"])
def test_rolling_update_through_haproxy_fails_no_request(workers: str) -> None:
    """0 failed requests under load, and every instance stopped by SIGTERM exits 0."""
    outcome = rolling_update(tether_server("--workers", workers, drain_delay=1.0))
    assert outcome.requests > 1000, outcome.wrk_output  # the load did run throughout
    assert outcome.failed == 0, outcome.wrk_output
    assert outcome.exit_codes == {"A": 0, "B": 0, "C": 0, "D": 0}
    # The drain delay was served before stopping: the instance stayed up at least that long.
    assert min(outcome.stop_seconds.values()) >= 1.0
