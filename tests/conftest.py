"""tether's own suite runs under tether's leak check (see docs/leaks.md).

Every test fails if it leaves a task, thread, child process or fd running after
its teardown, exactly as ``pytest --tether-leaks`` would do. A test that cannot
clean up says why with ``@pytest.mark.tether_allow_leaks(reason="...")``;
``pytest --no-tether-leaks`` turns the check off for one run.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Act as if --tether-leaks were given, unless the command line chose a mode."""
    # The option is missing when the plugin is disabled (-p no:tether).
    if getattr(config.option, "tether_leaks", "off") is None:
        config.option.tether_leaks = "test"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Create the process-wide things that live as long as the process, before any snapshot."""
    try:
        import uvloop
    except ImportError:
        return
    # libuv opens a pipe the first time a uvloop loop is made and keeps it until the process
    # exits; without this, the first test to use uvloop would be blamed for it.
    uvloop.new_event_loop().close()
