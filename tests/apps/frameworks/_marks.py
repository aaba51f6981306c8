"""What every framework app under test shares: its version, and a file of what it saw.

The test copies an app into a temporary directory, reads ``$FW_MARKS`` to see
its lifespan and requests happen (one line per event, ``EVENT PID``), and
rewrites ``VERSION`` in the app's source to deploy new code.
"""

from __future__ import annotations

import os


def mark(event: str) -> None:
    """Append ``event pid`` to the marks file (a no-op without $FW_MARKS)."""
    path = os.environ.get("FW_MARKS")
    if path:
        with open(path, "a") as f:
            f.write(f"{event} {os.getpid()}\n")
