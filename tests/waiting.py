"""One way for tests to wait: on observable state, with a deadline, never sleep-and-hope.

``eventually(check, what)`` retries ``check`` (a look at something the
service shows: its answer, a gauge, a file it writes, a log line) until it
returns something truthy, and fails naming ``what`` when the deadline
passes. The short pause between looks is the poll interval of a state this
test does not own, not a guess at how long the service takes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["eventually"]

T = TypeVar("T")

#: Seconds between looks at a state the test cannot be notified of.
POLL = 0.02


def eventually(check: Callable[[], T | None], what: str, within: float = 30.0) -> T:
    """The first truthy result of ``check()``, retried until ``within`` seconds pass."""
    deadline = time.monotonic() + within
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        time.sleep(POLL)
