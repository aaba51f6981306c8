"""ShutdownBudget: every bound of a shutdown from one place, in one order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tether.config import RunConfig, ShutdownBudget

seconds = st.floats(min_value=0, max_value=3600, allow_nan=False)


@given(graceful=seconds, cancel=seconds)
def test_the_bounds_keep_their_order(graceful: float, cancel: float) -> None:
    """tracker report <= http report grace <= group abandon < hard stop < master kill."""
    b = ShutdownBudget(graceful, cancel)
    assert b.tracker_report <= b.http_report_grace <= b.group_abandon < b.hard_stop
    assert b.hard_stop < b.master_kill
    assert b.deadline(100.0) == 100.0 + graceful


def test_the_budget_comes_from_the_run_config() -> None:
    """--graceful-timeout and the cancel timeout are the only inputs."""
    b = ShutdownBudget.of(RunConfig(app="x:app", graceful_timeout=10, cancel_timeout=2))
    assert (b.graceful, b.cancel, b.hard_stop, b.master_kill) == (10, 2, 5.0, 7.0)
