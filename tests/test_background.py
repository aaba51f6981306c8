"""Background work started by requests survives shutdown (the note's Tracker lesson)."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from proc import get, tether


def fire(port: int, path: str, n: int) -> list[int]:
    with ThreadPoolExecutor(20) as pool:
        return [r[0] for r in pool.map(lambda i: get(port, f"{path}?{i}"), range(n))]


@pytest.mark.parametrize("path", ["/plain", "/spawn"])
def test_hundred_events_survive_sigterm(tmp_path: Path, path: str) -> None:
    """100 requests each start 0.5 s of background work; SIGTERM right after: 100/100 recorded."""
    events = tmp_path / "events.txt"
    with tether("events:app", EVENTS_FILE=str(events)) as t:
        t.ready()
        assert fire(t.port, path, 100) == [202] * 100
        t.signal(signal.SIGTERM)
        assert t.wait() == 0, t.stderr()
    recorded = events.read_text().split()
    assert sorted(recorded, key=int) == [str(i) for i in range(100)]


def test_work_past_the_deadline_is_named_and_exit_code_is_4(tmp_path: Path) -> None:
    """With a budget shorter than the work, the abandoned events are named in the log; exit 4."""
    events = tmp_path / "events.txt"
    with tether(
        "events:app", "--graceful-timeout", "0.3", EVENTS_FILE=str(events), EVENT_DELAY="30"
    ) as t:
        t.ready()
        assert fire(t.port, "/spawn", 3) == [202] * 3
        assert fire(t.port, "/plain", 2) == [202] * 2
        t.signal(signal.SIGTERM)
        assert t.wait() == 4
        err = t.stderr()
    for i in range(3):
        assert f"task 'event {i}'" in err
    assert err.count("adopted from GET /plain") >= 2 or err.count("GET /plain") >= 2, err
    abandoned = [line for line in err.splitlines() if "abandoned at the deadline" in line]
    assert abandoned
    assert not any("heartbeat" in line for line in abandoned)  # lifespan's loop is not adopted
    assert not events.exists()
